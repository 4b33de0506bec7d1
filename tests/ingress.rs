//! The "mTLS on the ingress gateway" walkthrough, end to end: certificates made by the real
//! `openssl` CLI, the YAML unchanged, the real `portcullis` binary, real `curl`, and
//! an httpbin upstream (the built-in one, and the real one from PyPI).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use e2e::certs::{make_openssl_certs, OpensslCerts};
use e2e::process::{run, Daemon};
use e2e::walkthrough::{port_offset, routing, write_credential_dir, WALKTHROUGH};
use e2e::{free_port, portcullis_bin, wait_for_port};

struct Curl<'a> {
    certs: &'a OpensslCerts,
    https_port: u16,
}

struct CurlOut {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Curl<'_> {
    fn https(
        &self,
        path: &str,
        identity: Option<(&Path, &Path)>,
        extra: &[&str],
    ) -> Result<CurlOut> {
        let mut cmd = Command::new("curl");
        let port = self.https_port;
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &format!("test.com:{port}:127.0.0.1"),
        ])
        .arg("--cacert")
        .arg(self.certs.ca_cert());
        if let Some((cert, key)) = identity {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        cmd.args(extra)
            .arg(format!("https://test.com:{port}{path}"));
        let out = run(&mut cmd)?;
        Ok(CurlOut {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The Kubernetes way: `kubectl create secret generic test.com --from-file=tls.key=…` gives a
/// Secret with base64 `data`.
fn secret_yaml(certs: &OpensslCerts) -> Result<String> {
    let b64 = |p: &Path| -> Result<String> {
        let out = run(Command::new("openssl").args(["base64", "-A", "-in"]).arg(p))?;
        Ok(String::from_utf8(out.stdout)?)
    };
    Ok(format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: test.com, namespace: istio-system}}\ntype: Opaque\ndata:\n  tls.key: {}\n  tls.crt: {}\n  ca.crt: {}\n",
        b64(&certs.server_key())?,
        b64(&certs.server_cert())?,
        b64(&certs.ca_cert())?
    ))
}

enum Backend {
    BuiltIn,
    PyPiHttpbin,
}

fn start_backend(kind: Backend, port: u16, logs: &Path) -> Result<Daemon> {
    let addr = format!("127.0.0.1:{port}");
    let daemon = match kind {
        Backend::BuiltIn => {
            let mut cmd = Command::new(portcullis_bin()?);
            cmd.args(["httpbin", "--listen", &addr]);
            Daemon::spawn("httpbin-builtin", cmd, logs)?
        }
        Backend::PyPiHttpbin => {
            let check = run(Command::new("python3").args(["-c", "import httpbin, gunicorn"]))?;
            if !check.status.success() {
                bail!("the PyPI httpbin is not installed (`pip install httpbin gunicorn`; .ci/run installs it)");
            }
            let mut cmd = Command::new("python3");
            cmd.args(["-m", "gunicorn", "-b", &addr, "-w", "1", "httpbin:app"]);
            Daemon::spawn("httpbin-pypi", cmd, logs)?
        }
    };
    wait_for_port(addr.parse()?, Duration::from_secs(20)).context("backend did not start")?;
    Ok(daemon)
}

fn walkthrough(backend: Backend, credential_as_secret: bool) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let certs_dir = dir.join("certs");
    std::fs::create_dir_all(&certs_dir)?;
    let certs = make_openssl_certs(&certs_dir)?;

    let backend_port = free_port()?;
    let _backend = start_backend(backend, backend_port, dir)?;

    let config = dir.join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::write(config.join("gateway.yaml"), WALKTHROUGH)?;
    std::fs::write(config.join("routing.yaml"), routing(backend_port))?;
    let creds = dir.join("credentials");
    if credential_as_secret {
        std::fs::write(config.join("secret.yaml"), secret_yaml(&certs)?)?;
    } else {
        write_credential_dir(&certs, &creds)?;
    }

    let offset = port_offset()?;
    let mut cmd = Command::new(portcullis_bin()?);
    cmd.arg("run")
        .arg("-c")
        .arg(&config)
        .arg("--credentials")
        .arg(&creds);
    cmd.args(["--bind", "127.0.0.1", "--port-offset", &offset.to_string()]);
    // The tests run in parallel: each gateway gets its own admin port.
    cmd.args(["--admin", &format!("127.0.0.1:{}", free_port()?)]);
    cmd.env("RUST_LOG", "info");
    let gateway = Daemon::spawn("portcullis", cmd, dir)?;
    let https_port = 443 + offset;
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], https_port)),
        Duration::from_secs(20),
    )
    .with_context(|| format!("gateway did not start:\n{}", gateway.log()))?;
    let curl = Curl {
        certs: &certs,
        https_port,
    };
    let client = Some((certs.client_cert(), certs.client_key()));
    let client = client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));

    // 1. No client certificate: the handshake fails and the gateway says why.
    let out = curl.https("/status/200", None, &[])?;
    assert_ne!(
        out.code, 0,
        "no client cert must fail the handshake: {}",
        out.stdout
    );
    assert!(
        out.stdout.is_empty(),
        "no HTTP response expected, got {:?}",
        out.stdout
    );
    let log = wait_for_log(&gateway, "TLS handshake failed reason=")?;
    assert!(
        log.contains("peer sent no certificates")
            || log.contains("NoCertificatesPresented")
            || log.contains("certificate required"),
        "the gateway logs why the handshake failed:\n{log}"
    );

    // 2. The client identity gets through on HTTP/2.
    let out = curl.https("/status/200", client, &["-I"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("HTTP/2 200"),
        "expected HTTP/2 200, got {:?}",
        out.stdout
    );

    // 3. The same identity is denied on /status/418 by the DENY policy.
    let out = curl.https("/status/418", client, &["-w", "\n%{http_code}"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "RBAC: access denied\n403");

    // 4. Another identity (the server cert: no SPIFFE SAN) reaches the teapot.
    let server_id = Some((certs.server_cert(), certs.server_key()));
    let server_id = server_id.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let out = curl.https("/status/418", server_id, &["-w", "\n%{http_code}"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.ends_with("\n418"),
        "expected 418, got {:?}",
        out.stdout
    );
    assert!(
        out.stdout.contains("-=[ teapot ]=-"),
        "teapot body expected, got {:?}",
        out.stdout
    );

    // 5. Plain HTTP through the port-80 server.
    let out = run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{}/status/200", 80 + offset),
    ]))?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The upstream sees who the client was, in Envoy's header format (httpbin hides the
    // x-forwarded-* headers it considers its own, so only XFCC is visible here).
    let out = curl.https("/headers", client, &[])?;
    assert!(
        out.stdout.contains("URI=spiffe://test.client"),
        "XFCC names the client: {}",
        out.stdout
    );

    // The access log names the principal and the policy that denied.
    let log = gateway.log();
    assert!(
        log.contains("principal=test.client"),
        "access log names the principal:\n{log}"
    );
    assert!(
        log.contains("DENY by istio-system/test rule 0"),
        "access log names the policy:\n{log}"
    );
    Ok(())
}

fn wait_for_log(daemon: &Daemon, needle: &str) -> Result<String> {
    for _ in 0..50 {
        let log = daemon.log();
        if log.contains(needle) {
            return Ok(log);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{needle:?} never appeared in the log:\n{}", daemon.log())
}

#[test]
fn walkthrough_with_builtin_backend_and_credential_directory() -> Result<()> {
    walkthrough(Backend::BuiltIn, false)
}

#[test]
fn walkthrough_with_pypi_httpbin_and_kubernetes_secret() -> Result<()> {
    walkthrough(Backend::PyPiHttpbin, true)
}

/// `portcullis check` on bad input: non-zero exit, and the message names file, line, field.
#[test]
fn check_reports_bad_input_precisely() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let certs_dir = dir.join("certs");
    std::fs::create_dir_all(&certs_dir)?;
    let certs = make_openssl_certs(&certs_dir)?;
    let creds = dir.join("credentials");
    write_credential_dir(&certs, &creds)?;
    let check = |name: &str, yaml: &str| -> Result<(bool, String)> {
        let file = dir.join(name);
        std::fs::write(&file, yaml)?;
        let out = run(Command::new(portcullis_bin()?)
            .arg("check")
            .arg("-c")
            .arg(&file)
            .arg("--credentials")
            .arg(&creds))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        ))
    };
    let base = format!("{WALKTHROUGH}---\n{}", routing(8000));

    let (ok, out) = check("good.yaml", &base)?;
    assert!(ok, "the walkthrough is valid: {out}");

    let (ok, out) = check(
        "typo.yaml",
        &base.replace("credentialName: test.com", "credentialNam: test.com"),
    )?;
    assert!(!ok);
    assert!(
        out.contains("typo.yaml:11 (document 1, Gateway default/httpbin)")
            && out.contains("credentialNam"),
        "{out}"
    );

    let (ok, out) = check(
        "missing.yaml",
        &base.replace("credentialName: test.com", "credentialName: nope.com"),
    )?;
    assert!(!ok);
    assert!(
        out.contains("missing.yaml:11") && out.contains("credential \"nope.com\" not found"),
        "{out}"
    );

    let (ok, out) = check(
        "action.yaml",
        &base.replace("action: DENY", "action: CUSTOM"),
    )?;
    assert!(!ok);
    assert!(
        out.contains("action.yaml:") && out.contains("CUSTOM"),
        "{out}"
    );

    // A key that does not match its certificate.
    std::fs::copy(certs.client_key(), creds.join("test.com/tls.key"))?;
    let (ok, out) = check("good.yaml", &base)?;
    assert!(!ok);
    assert!(
        out.contains("tls.key does not match the certificate"),
        "{out}"
    );

    // A CA file that is not a CA.
    write_credential_dir(&certs, &creds)?;
    std::fs::copy(certs.client_cert(), creds.join("test.com/ca.crt"))?;
    let (ok, out) = check("good.yaml", &base)?;
    assert!(!ok);
    assert!(out.contains("is not a CA certificate"), "{out}");
    Ok(())
}
