//! The targets: Portcullis and its peers (nginx, HAProxy) as mTLS terminators in front of one
//! upstream, all with the same certificates, one worker each, pinned to the proxy core; and
//! the upstream itself (nginx serving static files), pinned to the load core.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::sys::{self, pinned, pinned_to, Proc, LOAD_CORE, PROXY_CORE};

/// What a request goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Target {
    Portcullis,
    Nginx,
    Haproxy,
    /// oha in plaintext straight at the upstream: the ceiling.
    Direct,
}

impl Target {
    pub const PROXIES: [Target; 3] = [Target::Portcullis, Target::Nginx, Target::Haproxy];
    pub const PEERS: [Target; 2] = [Target::Nginx, Target::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Target::Portcullis => "portcullis",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
            Target::Direct => "direct",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The key type of a certificate set (server, client and CA keys alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum KeyType {
    EcdsaP256,
    Rsa2048,
}

impl KeyType {
    pub fn cli_name(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Rsa2048 => "rsa-2048",
        }
    }
}

/// A certificate set made by `portcullis certs`.
#[derive(Clone, Debug)]
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn make(portcullis: &Path, dir: PathBuf, key: KeyType) -> Result<Self> {
        sys::run_ok(
            Command::new(portcullis)
                .arg("certs")
                .arg("--out")
                .arg(&dir)
                .args(["--host", "test.com", "--client-id", "spiffe://test.client"])
                .args(["--key-type", key.cli_name(), "--force"])
                .stdout(std::process::Stdio::null()),
        )?;
        // HAProxy wants the certificate and its key in one file.
        let mut pem = std::fs::read(dir.join("servercert.pem"))?;
        pem.extend(std::fs::read(dir.join("serverkey.pem"))?);
        std::fs::write(dir.join("haproxy.pem"), pem)?;
        Ok(Self { dir })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("cacert.pem")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("clientcert.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key.pem")
    }
}

/// A running target: where to send requests, and the process to measure (none for direct).
pub struct Running {
    pub target: Target,
    pub port: u16,
    pub proc: Option<Proc>,
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }
}

/// Everything the targets share: the work directory, the binaries, the upstream's port.
pub struct Lab {
    pub work: PathBuf,
    /// The open-file limit every process started inherits.
    pub nofile: u64,
    pub portcullis: PathBuf,
    pub upstream_port: u16,
}

/// How a target is started when it departs from the suite's standard setup.
#[derive(Clone, Debug, Default)]
pub struct Tuning {
    /// Workers (Portcullis `--workers`, nginx `worker_processes`) and as many cores, from the
    /// proxy core up. `None`: one core, and Portcullis's default (one worker on one core).
    pub workers: Option<u32>,
    /// More `portcullis run` arguments (a security default turned off, say).
    pub portcullis_args: Vec<String>,
    /// Portcullis's configuration without its AuthorizationPolicy.
    pub no_authz: bool,
}

impl Tuning {
    pub fn workers(n: u32) -> Self {
        Self {
            workers: Some(n),
            ..Self::default()
        }
    }

    /// The taskset CPU list of the proxy: the proxy core and the next `workers - 1`.
    pub fn cpus(&self) -> String {
        match self.workers {
            None | Some(0 | 1) => PROXY_CORE.to_string(),
            Some(n) => format!("{PROXY_CORE}-{}", PROXY_CORE + n - 1),
        }
    }
}

/// The static files the upstream serves.
pub const SMALL_PATH: &str = "/1k";
pub const BULK_PATH: &str = "/10m";
pub const SMALL_BYTES: usize = 1024;
pub const BULK_BYTES: usize = 10 * 1024 * 1024;

fn nginx_main(dir: &Path, nofile: u64, workers: u32) -> String {
    let d = dir.display();
    // One process (no master): the one pid is the whole proxy, as for the other targets.
    // Several workers need the master, which forks them; the suite measures the process tree.
    let processes = if workers > 1 {
        format!("worker_processes {workers};\nmaster_process on;\n")
    } else {
        "worker_processes 1;\nmaster_process off;\n".to_owned()
    };
    format!(
        "{processes}daemon off;\npid {d}/nginx.pid;\n\
         worker_rlimit_nofile {files};\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections {conns}; }}\n",
        files = nofile,
        conns = nofile.saturating_sub(100),
    )
}

fn nginx_temp_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "  client_body_temp_path {d}/tmp-body; proxy_temp_path {d}/tmp-proxy;\n  \
         fastcgi_temp_path {d}/tmp-fcgi; uwsgi_temp_path {d}/tmp-uwsgi; scgi_temp_path {d}/tmp-scgi;\n"
    )
}

/// The upstream: nginx serving two static files, fast enough that every proxy, not the
/// upstream, is what a proxied run measures (the direct run shows the headroom).
pub fn upstream_conf(dir: &Path, nofile: u64, port: u16) -> String {
    format!(
        "{main}http {{\n  access_log off;\n{temps}  sendfile on; tcp_nopush on;\n  \
         keepalive_requests 10000000; keepalive_timeout 600s;\n  default_type application/octet-stream;\n  \
         server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    root {www};\n  }}\n}}\n",
        main = nginx_main(dir, nofile, 1),
        temps = nginx_temp_paths(dir),
        www = dir.join("www").display(),
    )
}

/// nginx as an mTLS terminator: `ssl_verify_client on`, keep-alive to the upstream, and a
/// `location` that answers the DENY path the way Portcullis's AuthorizationPolicy does.
pub fn nginx_conf(
    dir: &Path,
    nofile: u64,
    workers: u32,
    certs: &Certs,
    port: u16,
    upstream: u16,
) -> String {
    let c = certs.dir.display();
    format!(
        "{main}http {{\n  access_log off;\n{temps}  keepalive_requests 10000000; keepalive_timeout 600s;\n  \
         upstream backend {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 10000000; }}\n  \
         server {{\n    listen 127.0.0.1:{port} ssl http2 backlog=4096;\n    server_name test.com;\n    \
         ssl_certificate {c}/servercert.pem; ssl_certificate_key {c}/serverkey.pem;\n    \
         ssl_client_certificate {c}/cacert.pem; ssl_verify_client on;\n    \
         ssl_protocols TLSv1.2 TLSv1.3;\n    \
         location = /status/418 {{ return 403 \"RBAC: access denied\"; }}\n    \
         location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n      proxy_max_temp_file_size 0;\n    }}\n  }}\n}}\n",
        main = nginx_main(dir, nofile, workers),
        temps = nginx_temp_paths(dir),
    )
}

/// HAProxy the same: `verify required`, `http-reuse always`, and an `http-request return` for
/// the DENY path.
pub fn haproxy_conf(certs: &Certs, port: u16, upstream: u16) -> String {
    let c = certs.dir.display();
    format!(
        "global\n  nbthread 1\n\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n  \
         timeout http-keep-alive 600s\n  http-reuse always\n\n\
         frontend fe\n  bind 127.0.0.1:{port} ssl crt {c}/haproxy.pem ca-file {c}/cacert.pem verify required alpn h2,http/1.1\n  \
         http-request return status 403 content-type text/plain string \"RBAC: access denied\" if {{ path /status/418 }}\n  \
         default_backend be\n\n\
         backend be\n  server up 127.0.0.1:{upstream}\n"
    )
}

/// The walkthrough's MUTUAL server for test.com and (with `authz`) its DENY policy, routed
/// to the upstream.
pub fn portcullis_conf(upstream: u16, authz: bool) -> String {
    let conf = format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: bench, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - hosts: [test.com]
    port: {{number: 443, name: https, protocol: HTTPS}}
    tls: {{mode: MUTUAL, credentialName: test.com}}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: test, namespace: istio-system}}
spec:
  action: DENY
  rules:
  - from: [{{source: {{principals: [test.client]}}}}]
    to: [{{operation: {{paths: [/status/418]}}}}]
  selector: {{matchLabels: {{istio: ingressgateway}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: upstream, namespace: default}}
spec:
  hosts: ['*']
  gateways: [bench]
  http:
  - route:
    - destination: {{host: upstream.default.svc.cluster.local, port: {{number: 8000}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: upstream, namespace: default}}
spec:
  hosts: [upstream.default.svc.cluster.local]
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {upstream}}}}}]
"#
    );
    if authz {
        return conf;
    }
    conf.split("---\n")
        .filter(|doc| !doc.contains("kind: AuthorizationPolicy"))
        .collect::<Vec<_>>()
        .join("---\n")
}

impl Lab {
    /// Writes the upstream's files and starts it on the load core.
    pub fn start_upstream(&self) -> Result<Proc> {
        let dir = self.work.join("upstream");
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::write(dir.join("www/1k"), vec![b'x'; SMALL_BYTES])?;
        std::fs::write(dir.join("www/10m"), vec![b'x'; BULK_BYTES])?;
        std::fs::write(
            dir.join("nginx.conf"),
            upstream_conf(&dir, self.nofile, self.upstream_port),
        )?;
        let log = dir.join("stderr.log");
        let mut proc = Proc::spawn(
            "upstream nginx",
            pinned(LOAD_CORE, "nginx")
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf")),
            &log,
        )?;
        sys::wait_for_port(&mut proc, &log, self.upstream_port, Duration::from_secs(10))?;
        Ok(proc)
    }

    /// Starts `target` with `certs` on a fresh port, pinned to the proxy core, and waits until
    /// it accepts connections. Direct starts nothing.
    pub fn start(&self, target: Target, certs: &Certs) -> Result<Running> {
        self.start_wrapped(
            target,
            certs,
            &[],
            Duration::from_secs(10),
            &Tuning::default(),
        )
    }

    /// [`Lab::start`] with `tuning`.
    pub fn start_tuned(&self, target: Target, certs: &Certs, tuning: &Tuning) -> Result<Running> {
        self.start_wrapped(target, certs, &[], Duration::from_secs(10), tuning)
    }

    /// [`Lab::start_tuned`] with the proxy run under `wrapper` (e.g. valgrind), which may
    /// start slowly: `startup` bounds the wait for its port.
    pub fn start_wrapped(
        &self,
        target: Target,
        certs: &Certs,
        wrapper: &[String],
        startup: Duration,
        tuning: &Tuning,
    ) -> Result<Running> {
        let cpus = tuning.cpus();
        let proxy = |program: &Path| {
            let mut cmd = pinned_to(&cpus, wrapper.first().map_or(program, Path::new));
            if !wrapper.is_empty() {
                cmd.args(&wrapper[1..]).arg(program);
            }
            cmd
        };
        if target == Target::Direct {
            return Ok(Running {
                target,
                port: self.upstream_port,
                proc: None,
            });
        }
        let dir = self.work.join(target.name());
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("stderr.log");
        let (port, mut cmd) = match target {
            Target::Nginx => {
                let port = sys::free_port()?;
                let conf = dir.join("nginx.conf");
                std::fs::write(
                    &conf,
                    nginx_conf(
                        &dir,
                        self.nofile,
                        tuning.workers.unwrap_or(1),
                        certs,
                        port,
                        self.upstream_port,
                    ),
                )?;
                let mut cmd = proxy(Path::new("nginx"));
                cmd.arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(conf);
                (port, cmd)
            }
            Target::Haproxy => {
                let port = sys::free_port()?;
                let conf = dir.join("haproxy.cfg");
                std::fs::write(&conf, haproxy_conf(certs, port, self.upstream_port))?;
                let mut cmd = proxy(Path::new("haproxy"));
                // -db: foreground, one process.
                cmd.arg("-db").arg("-f").arg(conf);
                (port, cmd)
            }
            Target::Portcullis => {
                let port = portcullis_port()?;
                let conf = dir.join("config.yaml");
                std::fs::write(&conf, portcullis_conf(self.upstream_port, !tuning.no_authz))?;
                let mut cmd = proxy(&self.portcullis);
                if let Some(n) = tuning.workers {
                    cmd.args(["--workers", &n.to_string()]);
                }
                cmd.arg("run")
                    .arg("-c")
                    .arg(conf)
                    .arg("--credentials")
                    .arg(&certs.dir)
                    .args(["--bind", "127.0.0.1", "--admin", "off"])
                    .args(["--access-log", "off"])
                    .args(["--port-offset", &(port - 443).to_string()])
                    .args(&tuning.portcullis_args)
                    .env("RUST_LOG", "warn");
                (port, cmd)
            }
            Target::Direct => unreachable!("handled above"),
        };
        let mut proc = Proc::spawn(target.name(), &mut cmd, &log)
            .with_context(|| format!("starting {target}"))?;
        sys::wait_for_port(&mut proc, &log, port, startup)?;
        Ok(Running {
            target,
            port,
            proc: Some(proc),
        })
    }
}

/// A free port above 443 (the Gateway says 443; `--port-offset` moves it).
fn portcullis_port() -> Result<u16> {
    for _ in 0..50 {
        let port = sys::free_port()?;
        if port > 1024 {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port for portcullis")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_authz_the_policy_document_alone_is_dropped() {
        let with = portcullis_conf(8080, true);
        let without = portcullis_conf(8080, false);
        assert!(with.contains("kind: AuthorizationPolicy"));
        assert!(!without.contains("AuthorizationPolicy"));
        for kind in ["Gateway", "VirtualService", "ServiceEntry"] {
            assert!(without.contains(&format!("kind: {kind}\n")), "{kind}");
        }
        assert_eq!(without.matches("---\n").count(), 2);
    }

    #[test]
    fn two_nginx_workers_need_the_master_process() {
        let certs = Certs {
            dir: PathBuf::from("/c"),
        };
        let one = nginx_conf(Path::new("/w"), 1024, 1, &certs, 1, 2);
        let two = nginx_conf(Path::new("/w"), 1024, 2, &certs, 1, 2);
        assert!(one.starts_with("worker_processes 1;\nmaster_process off;"));
        assert!(two.starts_with("worker_processes 2;\nmaster_process on;"));
        assert_eq!(
            Tuning::workers(2).cpus(),
            format!("{PROXY_CORE}-{}", PROXY_CORE + 1)
        );
        assert_eq!(Tuning::default().cpus(), PROXY_CORE.to_string());
    }
}
