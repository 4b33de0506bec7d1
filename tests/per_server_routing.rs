//! Each HTTPS server routes only its own hosts. A SIMPLE server (`simple.test`) and a MUTUAL
//! server (`mutual.test`) share one port; a client that completes the SIMPLE handshake and
//! then asks for the MUTUAL host — by `Host`, by `:authority`, by HTTP/1.1 absolute-form, or
//! on an HTTP/2 connection it reuses as a browser coalescing connections would — must not
//! reach the MUTUAL backend without a client certificate. It gets `421 Misdirected Request`,
//! which tells an HTTP/2 client to retry on a new connection (with the right SNI).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use e2e::process::{run, Daemon};
use e2e::rawhttp::{require_h2, Proto, RawClient, RawRequest};
use e2e::walkthrough::curl;
use e2e::{free_port, portcullis_bin, wait_for_port};

fn config(port: u16, simple_backend: u16, mutual_backend: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - hosts: [simple.test]
    port: {{number: {port}, name: https-simple, protocol: HTTPS}}
    tls: {{mode: SIMPLE, credentialName: simple.test}}
  - hosts: [mutual.test]
    port: {{number: {port}, name: https-mutual, protocol: HTTPS}}
    tls: {{mode: MUTUAL, credentialName: mutual.test}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: simple, namespace: default}}
spec:
  hosts: [simple.test]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: simple.backend}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: mutual, namespace: default}}
spec:
  hosts: [mutual.test]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: mutual.backend}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: simple, namespace: default}}
spec:
  hosts: [simple.backend]
  ports: [{{number: {simple_backend}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mutual, namespace: default}}
spec:
  hosts: [mutual.backend]
  ports: [{{number: {mutual_backend}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#
    )
}

fn backend(name: &str, dir: &Path) -> Result<(u16, Daemon)> {
    let port = free_port()?;
    let mut cmd = Command::new(portcullis_bin()?);
    cmd.args(["httpbin", "--listen", &format!("127.0.0.1:{port}")]);
    let d = Daemon::spawn(name, cmd, dir)?;
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    )?;
    Ok((port, d))
}

struct Setup {
    port: u16,
    admin: u16,
    certs: std::path::PathBuf,
    gateway: Daemon,
    _backends: [Daemon; 2],
}

impl Setup {
    fn start(dir: &Path) -> Result<Self> {
        let certs = dir.join("certs");
        let out = run(Command::new(portcullis_bin()?)
            .arg("certs")
            .arg("--out")
            .arg(&certs)
            .args(["--host", "simple.test", "--host", "mutual.test"]))?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (simple_port, simple) = backend("simple-backend", dir)?;
        let (mutual_port, mutual) = backend("mutual-backend", dir)?;
        let port = free_port()?;
        let admin = free_port()?;
        let file = dir.join("gw.yaml");
        std::fs::write(&file, config(port, simple_port, mutual_port))?;
        let mut cmd = Command::new(portcullis_bin()?);
        cmd.arg("run")
            .arg("-c")
            .arg(&file)
            .arg("--credentials")
            .arg(&certs)
            .args([
                "--bind",
                "127.0.0.1",
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ]);
        let gateway = Daemon::spawn("portcullis", cmd, dir)?;
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20),
        )
        .with_context(|| format!("gateway did not start:\n{}", gateway.log()))?;
        Ok(Self {
            port,
            admin,
            certs,
            gateway,
            _backends: [simple, mutual],
        })
    }

    /// curl to `https://<sni>:port/get` with more arguments; returns the status code.
    fn curl(&self, sni: &str, client_cert: bool, extra: &[&str]) -> Result<String> {
        let resolve = format!("{sni}:{}:127.0.0.1", self.port);
        let ca = self.certs.join("cacert.pem");
        let mut args = vec![
            "--resolve",
            &resolve,
            "--cacert",
            ca.to_str().context("ca")?,
        ];
        let (cert, key) = (
            self.certs.join("clientcert.pem"),
            self.certs.join("client.key.pem"),
        );
        if client_cert {
            args.extend([
                "--cert",
                cert.to_str().context("cert")?,
                "--key",
                key.to_str().context("key")?,
            ]);
        }
        args.extend(extra);
        Ok(curl(&format!("https://{sni}:{}/get", self.port), &args)?.0)
    }

    fn raw(&self, sni: &str, client_cert: bool) -> RawClient {
        RawClient {
            port: self.port,
            sni: sni.to_owned(),
            ca: self.certs.join("cacert.pem"),
            identity: client_cert.then(|| {
                (
                    self.certs.join("clientcert.pem"),
                    self.certs.join("client.key.pem"),
                )
            }),
        }
    }
}

#[test]
fn a_simple_handshake_does_not_reach_the_mutual_server() -> Result<()> {
    require_h2()?;
    let tmp = tempfile::tempdir()?;
    let s = Setup::start(tmp.path())?;
    let mut failures = Vec::new();
    let mut expect = |what: &str, got: String, want: &str| {
        if got != want {
            failures.push(format!("{what}: got {got}, want {want}"));
        }
    };

    for proto in ["--http1.1", "--http2"] {
        // Controls: each server serves its own host.
        expect(
            &format!("{proto} simple"),
            s.curl("simple.test", false, &[proto])?,
            "200",
        );
        expect(
            &format!("{proto} mutual with cert"),
            s.curl("mutual.test", true, &[proto])?,
            "200",
        );
        expect(
            &format!("{proto} mutual without cert"),
            s.curl("mutual.test", false, &[proto])?,
            "000",
        );
        // The attack: SIMPLE handshake, the MUTUAL server's host (curl sends a custom Host as
        // :authority on HTTP/2), in the spellings a host match must see through.
        for host in [
            "mutual.test",
            "MUTUAL.test",
            "mutual.test:443",
            "mutual.test.",
        ] {
            let header = format!("Host: {host}");
            expect(
                &format!("{proto} SNI simple.test, {header}"),
                s.curl("simple.test", false, &[proto, "-H", &header])?,
                "421",
            );
        }
        // And the other way round: a client certificate does not open the SIMPLE server's
        // routes on the MUTUAL server's connection either.
        expect(
            &format!("{proto} SNI mutual.test, Host: simple.test"),
            s.curl("mutual.test", true, &[proto, "-H", "Host: simple.test"])?,
            "421",
        );
    }

    // HTTP/1.1 absolute-form names the authority in the request line; it wins over Host.
    let raw = s.raw("simple.test", false);
    let mut absolute = RawRequest::get("simple.test", "https://mutual.test/get");
    absolute.host = Some("simple.test".to_owned());
    let out = raw.send(
        Proto::H1,
        &[
            absolute,
            RawRequest::get("simple.test", "https://simple.test/get"),
        ],
        false,
    )?;
    expect(
        "h1 absolute-form https://mutual.test/get",
        out[0].clone(),
        "421",
    );
    expect(
        "h1 absolute-form https://simple.test/get",
        out[1].clone(),
        "200",
    );

    // One HTTP/2 connection reused for both origins, as a browser coalesces connections when
    // the certificate covers both names: the MUTUAL host is refused on it, the SIMPLE host
    // still served, and a `host` header cannot override `:authority`.
    let mut host_header = RawRequest::get("simple.test", "/get");
    host_header.host = Some("mutual.test".to_owned());
    let out = raw.send(
        Proto::H2,
        &[
            RawRequest::get("simple.test", "/get"),
            RawRequest::get("mutual.test", "/get"),
            RawRequest::get("simple.test", "/get"),
            host_header,
        ],
        true,
    )?;
    expect("h2 coalesced: simple.test", out[0].clone(), "200");
    expect("h2 coalesced: mutual.test", out[1].clone(), "421");
    expect("h2 coalesced: simple.test again", out[2].clone(), "200");
    expect(
        "h2 :authority simple.test, host: mutual.test",
        out[3].clone(),
        "200",
    );

    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        s.gateway.log()
    );
    // No misdirected request reached an upstream, and each was counted.
    let log = s.gateway.log();
    let misdirected: Vec<&str> = log.lines().filter(|l| l.contains("status=421")).collect();
    assert_eq!(misdirected.len(), 12, "{log}");
    for line in misdirected {
        assert!(line.contains("upstream=-"), "{line}");
    }
    let (_, metrics) = curl(
        &format!("http://127.0.0.1:{}/stats/prometheus", s.admin),
        &[],
    )?;
    assert!(
        metrics.contains("portcullis_requests_refused_total{reason=\"misdirected\"} 12"),
        "{metrics}"
    );
    Ok(())
}
