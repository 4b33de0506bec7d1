//! The ingress walkthrough, set up for a test: openssl certificates, the built-in httpbin,
//! the Gateway/AuthorizationPolicy/VirtualService files and `portcullis run` on loopback, plus
//! the walkthrough's curl requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::certs::{make_openssl_certs, OpensslCerts};
use crate::process::{run, Daemon};
use crate::rawhttp::RawClient;
use crate::{free_port, portcullis_bin, wait_for_port};

/// The walkthrough's Gateway and AuthorizationPolicy (as in `ingress.rs`).
pub const WALKTHROUGH: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: httpbin, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - hosts: ['*']
    port: {name: test, number: 80, protocol: HTTP}
  - hosts: [test.com]
    port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: MUTUAL, credentialName: test.com}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: test, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [test.client]}}]
    to: [{operation: {paths: [/status/418]}}]
  selector: {matchLabels: {istio: ingressgateway}}
"#;

/// The VirtualService and ServiceEntry that send everything to httpbin on `backend_port`.
pub fn routing(backend_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: ['*']
  gateways: [httpbin]
  http:
  - route:
    - destination: {{host: httpbin.default.svc.cluster.local, port: {{number: 8000}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {backend_port}}}}}]
"#
    )
}

/// Two free ports whose distance is the 80/443 distance, for `--port-offset`.
pub fn port_offset() -> Result<u16> {
    for _ in 0..50 {
        let http = free_port()?;
        if !(1100..=65000 - 363).contains(&http) {
            continue;
        }
        let offset = http - 80;
        if std::net::TcpListener::bind(("127.0.0.1", 443 + offset)).is_ok() {
            return Ok(offset);
        }
    }
    bail!("no free pair of ports for the gateway")
}

/// `curl -sS` to `url`, returning (status code, body). Extra args go before the URL.
pub fn curl(url: &str, extra: &[&str]) -> Result<(String, String)> {
    curl_in(None, url, extra)
}

/// [`curl`] run inside network namespace `netns` (`None`: here).
pub fn curl_in(netns: Option<&str>, url: &str, extra: &[&str]) -> Result<(String, String)> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("curl");
            c
        }
        None => Command::new("curl"),
    };
    let out = run(cmd
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.to_owned(), body.to_owned()))
}

/// `dir/test.com/{tls.crt,tls.key,ca.crt}`: the credential the MUTUAL server names.
pub fn write_credential_dir(certs: &OpensslCerts, dir: &Path) -> Result<()> {
    let cred = dir.join("test.com");
    std::fs::create_dir_all(&cred)?;
    std::fs::copy(certs.server_cert(), cred.join("tls.crt"))?;
    std::fs::copy(certs.server_key(), cred.join("tls.key"))?;
    std::fs::copy(certs.ca_cert(), cred.join("ca.crt"))?;
    Ok(())
}

/// The httpbin behind the gateway.
#[derive(Clone, Copy, Debug)]
pub enum Upstream {
    /// `portcullis httpbin`.
    BuiltIn,
    /// The real httpbin from PyPI under gunicorn: Flask decodes the path, as most frameworks do.
    PyPiHttpbin,
}

impl Upstream {
    fn start(self, addr: &str, dir: &Path) -> Result<Daemon> {
        match self {
            Upstream::BuiltIn => {
                let mut cmd = Command::new(portcullis_bin()?);
                cmd.args(["httpbin", "--listen", addr]);
                Daemon::spawn("httpbin", cmd, dir)
            }
            Upstream::PyPiHttpbin => {
                let check = run(Command::new("python3").args(["-c", "import httpbin, gunicorn"]))?;
                if !check.status.success() {
                    bail!("the PyPI httpbin is not installed (`pip install httpbin gunicorn`; .ci/install-prereqs installs it)");
                }
                let mut cmd = Command::new("python3");
                cmd.args(["-m", "gunicorn", "-b", addr, "-w", "1", "httpbin:app"]);
                Daemon::spawn("httpbin-pypi", cmd, dir)
            }
        }
    }
}

/// Which certificate a walkthrough request presents.
#[derive(Clone, Copy, Debug)]
pub enum Identity {
    /// No client certificate: the MUTUAL handshake fails.
    Anonymous,
    /// `spiffe://test.client`.
    Client,
    /// The server's certificate: verified, but no SPIFFE id.
    Server,
}

/// The walkthrough's backend and configuration, ready for `portcullis run`.
pub struct Walkthrough {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub credentials: PathBuf,
    pub certs: OpensslCerts,
    _backend: Daemon,
}

impl Walkthrough {
    /// Makes the certificates with openssl, starts the built-in httpbin and writes the
    /// configuration, all under `dir`.
    pub fn prepare(dir: &Path) -> Result<Self> {
        Self::prepare_with(dir, Upstream::BuiltIn)
    }

    /// [`Walkthrough::prepare`] with the upstream of choice.
    pub fn prepare_with(dir: &Path, upstream: Upstream) -> Result<Self> {
        let certs_dir = dir.join("certs");
        std::fs::create_dir_all(&certs_dir)?;
        let certs = make_openssl_certs(&certs_dir)?;
        let backend_port = free_port()?;
        let backend_addr = format!("127.0.0.1:{backend_port}");
        let backend = upstream.start(&backend_addr, dir)?;
        wait_for_port(backend_addr.parse()?, Duration::from_secs(20))
            .with_context(|| format!("the upstream did not start:\n{}", backend.log()))?;
        let config = dir.join("config");
        std::fs::create_dir_all(&config)?;
        std::fs::write(config.join("gateway.yaml"), WALKTHROUGH)?;
        std::fs::write(config.join("routing.yaml"), routing(backend_port))?;
        let credentials = dir.join("credentials");
        write_credential_dir(&certs, &credentials)?;
        Ok(Self {
            dir: dir.to_owned(),
            config,
            credentials,
            certs,
            _backend: backend,
        })
    }

    /// `portcullis run` on the walkthrough, bound to 127.0.0.1 with a free port offset, with
    /// `extra` arguments; returns once the HTTPS port accepts connections.
    pub fn start_gateway(&self, extra: &[&str]) -> Result<Gateway> {
        self.start_gateway_with(extra, None)
    }

    /// [`Self::start_gateway`] with the daemon's `RLIMIT_NOFILE` set to `nofile` (soft, hard)
    /// before it execs, the way a service manager with a low limit starts it.
    pub fn start_gateway_with(
        &self,
        extra: &[&str],
        nofile: Option<(u64, u64)>,
    ) -> Result<Gateway> {
        let offset = port_offset()?;
        let mut cmd = Command::new(portcullis_bin()?);
        cmd.arg("run")
            .arg("-c")
            .arg(&self.config)
            .arg("--credentials")
            .arg(&self.credentials)
            .args(["--bind", "127.0.0.1", "--port-offset", &offset.to_string()])
            .args(extra);
        if let Some((soft, hard)) = nofile {
            use std::os::unix::process::CommandExt;
            let rlim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child being exec'd.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let daemon = Daemon::spawn("portcullis", cmd, &self.dir)?;
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], 443 + offset)),
            Duration::from_secs(20),
        )
        .with_context(|| format!("gateway did not start:\n{}", daemon.log()))?;
        Ok(Gateway {
            https_port: 443 + offset,
            http_port: 80 + offset,
            ca: self.certs.ca_cert(),
            client: (self.certs.client_cert(), self.certs.client_key()),
            server: (self.certs.server_cert(), self.certs.server_key()),
            daemon,
        })
    }
}

/// A running walkthrough gateway and the requests to send it.
pub struct Gateway {
    pub https_port: u16,
    pub http_port: u16,
    ca: PathBuf,
    client: (PathBuf, PathBuf),
    server: (PathBuf, PathBuf),
    pub daemon: Daemon,
}

impl Gateway {
    /// `https://test.com/<path>` with `identity`; returns the status code (`000`: no HTTP).
    pub fn https(&self, path: &str, identity: Identity) -> Result<String> {
        self.https_with(path, identity, &[])
    }

    /// [`Gateway::https`] with more curl arguments (`--http1.1`, `--path-as-is`, …).
    pub fn https_with(&self, path: &str, identity: Identity, extra: &[&str]) -> Result<String> {
        Ok(self.https_full(path, identity, extra)?.0)
    }

    /// [`Gateway::https`] with more curl arguments; returns (status code, body and whatever
    /// `-w` added).
    pub fn https_full(
        &self,
        path: &str,
        identity: Identity,
        extra: &[&str],
    ) -> Result<(String, String)> {
        let resolve = format!("test.com:{}:127.0.0.1", self.https_port);
        let mut args: Vec<&str> = vec!["--resolve", &resolve, "--cacert"];
        args.push(self.ca.to_str().context("ca path")?);
        let pair = match identity {
            Identity::Anonymous => None,
            Identity::Client => Some(&self.client),
            Identity::Server => Some(&self.server),
        };
        if let Some((cert, key)) = pair {
            args.extend([
                "--cert",
                cert.to_str().context("cert path")?,
                "--key",
                key.to_str().context("key path")?,
            ]);
        }
        args.extend(extra);
        let url = format!("https://test.com:{}{path}", self.https_port);
        curl(&url, &args)
    }

    /// A raw client for the HTTPS port, SNI `test.com`, presenting `identity`.
    pub fn raw_client(&self, identity: Identity) -> RawClient {
        let pair = match identity {
            Identity::Anonymous => None,
            Identity::Client => Some(self.client.clone()),
            Identity::Server => Some(self.server.clone()),
        };
        RawClient {
            port: self.https_port,
            sni: "test.com".to_owned(),
            ca: self.ca.clone(),
            identity: pair,
        }
    }

    /// Plain HTTP on the port-80 server; returns the status code.
    pub fn http(&self, path: &str) -> Result<String> {
        Ok(curl(&format!("http://127.0.0.1:{}{path}", self.http_port), &[])?.0)
    }
}
