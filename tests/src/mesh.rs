//! Two mesh nodes in network namespaces made here (root only): `server` runs the app
//! (`Hello World!` on :80) behind its daemon's terminator, `outside` is the client node whose
//! `sleep` workload (a cgroup v2 directory) makes plaintext requests that its daemon captures
//! and upgrades to mutual TLS. Both nodes read the same [`MESH`] (mesh-wide STRICT). Each
//! node's daemon can be killed and started again with the same arguments; the pins and the
//! cgroup are removed when the test ends.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::hello::HelloApp;
use crate::netns::Topology;
use crate::portcullis_bin;
use crate::process::{run, Daemon};

/// Both nodes' view of the mesh: two workloads and mesh-wide STRICT.
pub const MESH: &str = "\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: hello, namespace: default}
spec: {address: 10.231.0.1, labels: {app: hello}, serviceAccount: hello, ports: {http: 80}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sleep, namespace: default}
spec: {address: 10.231.0.2, labels: {app: sleep}, serviceAccount: sleep, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hello, namespace: default}
spec:
  hosts: [hello.default.svc.cluster.local]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: hello}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

/// A cgroup v2 directory for the client workload, removed at the end.
pub struct Cgroup(pub PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A pin directory, uninstalled (links detached, pins removed) at the end.
pub struct Pins {
    bin: PathBuf,
    ns: String,
    pub dir: PathBuf,
}

impl Pins {
    /// The pin directory `dir` of a daemon in `ns`.
    pub fn new(ns: &str, dir: PathBuf) -> Result<Self> {
        Ok(Self {
            bin: portcullis_bin()?,
            ns: ns.to_owned(),
            dir,
        })
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = run(Topology::nsenter(&self.ns, &self.bin)
            .arg("uninstall")
            .arg("--pin-dir")
            .arg(&self.dir));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One node's `portcullis run --mesh-credential`: the arguments it was started with, so a
/// restart is the same command. Drops its daemon before its pins.
pub struct Node {
    name: String,
    ns: String,
    args: Vec<OsString>,
    /// The log line that says the daemon is serving.
    ready: &'static str,
    log_dir: PathBuf,
    starts: u32,
    daemon: Option<Daemon>,
    pub pins: Pins,
}

impl Node {
    /// A node running `portcullis <args>` in `ns` (the arguments name `pins.dir`), serving
    /// once `ready` appears in its log; logs go to `log_dir`. Not started yet.
    pub fn new(
        name: &str,
        ns: &str,
        args: Vec<OsString>,
        ready: &'static str,
        log_dir: &Path,
        pins: Pins,
    ) -> Self {
        Self {
            name: name.to_owned(),
            ns: ns.to_owned(),
            args,
            ready,
            log_dir: log_dir.to_owned(),
            starts: 0,
            daemon: None,
            pins,
        }
    }

    /// Appends arguments for the next start (something only known once the other node runs).
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(OsString::from));
    }

    /// Starts the daemon (again, after [`Node::kill9`]) and waits (bounded) for its ready line.
    pub fn start(&mut self) -> Result<()> {
        ensure!(self.daemon.is_none(), "{} is already running", self.name);
        let mut cmd = Topology::nsenter(&self.ns, &self.pins.bin);
        cmd.args(&self.args);
        self.starts += 1;
        // Each start logs to its own file: the killed daemon's log stays readable.
        let name = match self.starts {
            1 => self.name.clone(),
            n => format!("{}-{n}", self.name),
        };
        let mut daemon = Daemon::spawn(&name, cmd, &self.log_dir)?;
        let start = Instant::now();
        while !daemon.log().contains(self.ready) {
            if start.elapsed() > Duration::from_secs(20) || daemon.try_wait().is_some() {
                bail!("{name}: {:?} never appeared:\n{}", self.ready, daemon.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some(daemon);
        Ok(())
    }

    /// `kill -9` the daemon (nothing runs on its behalf; its pinned programs stay) and reap
    /// it; fails if it had already exited.
    pub fn kill9(&mut self) -> Result<()> {
        let mut d = self.daemon.take().context("no daemon to kill")?;
        if let Some(status) = d.try_wait() {
            bail!(
                "{} had exited before the kill: {status}\n{}",
                self.name,
                d.log()
            );
        }
        // Daemon::kill sends SIGKILL and waits for the exit.
        d.kill();
        Ok(())
    }

    /// The running daemon's log (empty when none runs).
    pub fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// True while a started daemon has not exited.
    pub fn alive(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(|d| d.try_wait().is_none())
    }
}

/// The two nodes, their app and credentials. Fields drop in order: daemons, pins, cgroup,
/// app, namespaces, files.
pub struct TwoNodes {
    pub server: Node,
    pub client: Node,
    pub cgroup: Cgroup,
    pub app: HelloApp,
    pub topo: Topology,
    /// `portcullis certs --workload hello=… --workload sleep=…` output.
    pub certs: PathBuf,
    tmp: tempfile::TempDir,
}

impl TwoNodes {
    /// Makes the namespaces (and the probe namespace when asked), the app, the credentials,
    /// the configuration and the client's cgroup. The daemons are described but not started:
    /// `server_args` and `client_args` are appended to each one's `portcullis run`.
    pub fn create(
        tag: &str,
        probe: bool,
        (server_admin, server_args): (&str, &[&str]),
        (client_admin, client_args): (&str, &[&str]),
    ) -> Result<Self> {
        let bin = portcullis_bin()?;
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_owned();
        let topo = if probe {
            Topology::create_with_probe(tag)?
        } else {
            Topology::create(tag)?
        };
        let app = HelloApp::start(&topo.server)?;

        let certs = dir.join("certs");
        let out = run(Command::new(&bin)
            .arg("certs")
            .arg("--out")
            .arg(&certs)
            .args([
                "--workload",
                "hello=spiffe://cluster.local/ns/default/sa/hello",
                "--workload",
                "sleep=spiffe://cluster.local/ns/default/sa/sleep",
            ]))?;
        ensure!(
            out.status.success(),
            "certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = dir.join("mesh.yaml");
        std::fs::write(&config, MESH)?;

        let pid = std::process::id();
        let cgroup = Cgroup(PathBuf::from(format!(
            "/sys/fs/cgroup/unified/portcullis-e2e-{tag}-{pid}"
        )));
        std::fs::create_dir_all(&cgroup.0).context("creating the client workload's cgroup")?;
        let cg = cgroup.0.to_str().context("cgroup path")?.to_owned();

        let node = |name: &str,
                    ns: &str,
                    workload: &str,
                    admin: &str,
                    ready: &'static str,
                    extra: &[&str]|
         -> Node {
            let pins = Pins {
                bin: bin.clone(),
                ns: ns.to_owned(),
                dir: format!("/sys/fs/bpf/portcullis-{tag}-{name}-{pid}").into(),
            };
            let mut args: Vec<OsString> = vec!["run".into(), "-c".into(), config.clone().into()];
            args.extend(["--credentials".into(), certs.clone().into()]);
            for a in [
                "--mesh-credential",
                workload,
                "--workload",
                workload,
                "--admin",
                admin,
                "--pin-dir",
            ] {
                args.push(a.into());
            }
            args.push(pins.dir.clone().into());
            args.extend(extra.iter().map(OsString::from));
            Node::new(name, ns, args, ready, &dir, pins)
        };
        let server = node(
            "server",
            &topo.server,
            "hello",
            server_admin,
            "mesh terminator listening",
            server_args,
        );
        let mut client_extra = vec!["--capture-cgroup", &cg];
        client_extra.extend(client_args);
        let client = node(
            "client",
            &topo.outside,
            "sleep",
            client_admin,
            "outbound capture",
            &client_extra,
        );
        Ok(Self {
            server,
            client,
            cgroup,
            app,
            topo,
            certs,
            tmp,
        })
    }

    /// Where the test's files and logs live.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// A plaintext request by the client workload (a `curl` in its cgroup on the client
    /// node), or by a process of that node outside the cgroup (not captured) when `captured`
    /// is false. Returns curl's exit code, stdout and stderr.
    pub fn curl(
        &self,
        captured: bool,
        url: &str,
        max_time: Duration,
    ) -> Result<(Option<i32>, String, String)> {
        curl_in(
            &self.topo.outside,
            captured.then_some(self.cgroup.0.as_path()),
            url,
            max_time,
        )
    }
}

/// Runs `curl` in `ns`, inside `cgroup` when given (the workload's own process).
pub fn curl_in(
    ns: &str,
    cgroup: Option<&Path>,
    url: &str,
    max_time: Duration,
) -> Result<(Option<i32>, String, String)> {
    let secs = format!("{:.1}", max_time.as_secs_f64());
    let script = match cgroup {
        Some(cg) => format!(
            "echo $$ > {}/cgroup.procs && exec curl -sS -m {secs} {url}",
            cg.display()
        ),
        None => format!("exec curl -sS -m {secs} {url}"),
    };
    let out = run(Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["sh", "-c", &script]))?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
