//! TLS modes beyond the walkthrough: a SIMPLE server behind a PASSTHROUGH gateway (the bytes
//! pass through one gateway untouched and are terminated by the next), and a clear 503 when
//! the upstream is down.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use e2e::process::{run, Daemon};
use e2e::{free_port, portcullis_bin, wait_for_port};

fn gateway_yaml(name: &str, port: u16, host: &str, tls: &str, upstream_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - hosts: [{host}]
    port: {{number: {port}, name: tls, protocol: HTTPS}}
    tls: {tls}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  gateways: [{name}]
  http:
  - route: [{{destination: {{host: upstream.local}}}}]
  tls:
  - match: [{{sniHosts: [{host}]}}]
    route: [{{destination: {{host: upstream.local}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: upstream, namespace: default}}
spec:
  hosts: [upstream.local]
  ports: [{{number: {upstream_port}, name: p, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#
    )
}

fn start_gateway(name: &str, dir: &Path, yaml: &str, creds: &Path, port: u16) -> Result<Daemon> {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml)?;
    let mut cmd = Command::new(portcullis_bin()?);
    cmd.arg("run")
        .arg("-c")
        .arg(&file)
        .arg("--credentials")
        .arg(creds)
        .args(["--bind", "127.0.0.1"])
        // Two gateways run at once: neither needs the admin listener's fixed default port.
        .args(["--admin", "off"]);
    let d = Daemon::spawn(name, cmd, dir)?;
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    )
    .with_context(|| format!("{name} did not start:\n{}", d.log()))?;
    Ok(d)
}

#[test]
fn simple_behind_passthrough_and_503_when_upstream_is_down() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let certs = dir.join("certs");
    let out = run(Command::new(portcullis_bin()?)
        .arg("certs")
        .arg("--out")
        .arg(&certs)
        .args(["--host", "pass.test"]))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let backend_port = free_port()?;
    let mut backend = Command::new(portcullis_bin()?);
    backend.args(["httpbin", "--listen", &format!("127.0.0.1:{backend_port}")]);
    let _backend = Daemon::spawn("httpbin", backend, dir)?;
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], backend_port)),
        Duration::from_secs(20),
    )?;

    // Inner: SIMPLE TLS for pass.test, to httpbin.
    let inner_port = free_port()?;
    let inner = gateway_yaml(
        "inner",
        inner_port,
        "pass.test",
        "{mode: SIMPLE, credentialName: pass.test}",
        backend_port,
    );
    let _inner = start_gateway("inner", dir, &inner, &certs, inner_port)?;
    // Outer: PASSTHROUGH by SNI to the inner gateway.
    let outer_port = free_port()?;
    let outer = gateway_yaml(
        "outer",
        outer_port,
        "pass.test",
        "{mode: PASSTHROUGH}",
        inner_port,
    );
    let outer_gw = start_gateway("outer", dir, &outer, &certs, outer_port)?;

    let curl = |port: u16, path: &str| -> Result<(i32, String)> {
        let out = run(Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "--resolve",
                &format!("pass.test:{port}:127.0.0.1"),
                "--cacert",
            ])
            .arg(certs.join("cacert.pem"))
            .arg(format!("https://pass.test:{port}{path}")))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ))
    };

    // Through the passthrough: the certificate curl verifies is the inner gateway's.
    let (code, out) = curl(outer_port, "/get")?;
    assert_eq!(code, 0, "{out}\nouter log:\n{}", outer_gw.log());
    assert!(out.ends_with("\n200") && out.contains("\"url\""), "{out}");
    // The passthrough line is written when the connection closes, just after curl exits.
    let logged = (0..50).any(|_| {
        let found = outer_gw.log().contains("access passthrough");
        if !found {
            std::thread::sleep(Duration::from_millis(100));
        }
        found
    });
    assert!(
        logged,
        "the outer gateway logs the passthrough connection:\n{}",
        outer_gw.log()
    );

    // An unknown SNI on the passthrough port gets no TLS at all.
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &format!("other.test:{outer_port}:127.0.0.1"),
            "-k",
        ])
        .arg(format!("https://other.test:{outer_port}/get")))?;
    assert!(
        !out.status.success(),
        "an SNI no server claims must be refused"
    );

    // Upstream down: a clear 503.
    let dead_port = free_port()?;
    let broken_port = free_port()?;
    let broken = gateway_yaml(
        "broken",
        broken_port,
        "pass.test",
        "{mode: SIMPLE, credentialName: pass.test}",
        dead_port,
    );
    let broken_gw = start_gateway("broken", dir, &broken, &certs, broken_port)?;
    let (code, out) = curl(broken_port, "/get")?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("\n503") && out.contains("upstream connect error"),
        "{out}\n{}",
        broken_gw.log()
    );
    Ok(())
}
