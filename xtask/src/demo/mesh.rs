//! `cargo xtask demo mesh`: the mesh story in three network namespaces, each step printed with
//! the command a newcomer would type and what it printed, each step checked.
//!
//! The nodes are set up by `vagrant/node.sh` — the script the Vagrant VMs are provisioned
//! with — run inside the `client` and `server` namespaces; the mesh's YAML is `vagrant/*.yaml`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::netns::{Topology, CLIENT_ADDR, CLIENT_LINK, SERVER_ADDR, SERVER_IFACES};
use super::sh;
use super::wire::{Capture, Seen};

/// The mesh every node sees (addresses filled in), and the resources the steps apply.
const MESH_YAML: &str = include_str!("../../../vagrant/mesh.yaml");
const STRICT_YAML: &str = include_str!("../../../vagrant/strict.yaml");
const DENY_ADMIN_YAML: &str = include_str!("../../../vagrant/deny-admin.yaml");

const HELLO_ID: &str = "spiffe://cluster.local/ns/default/sa/hello";
const SLEEP_ID: &str = "spiffe://cluster.local/ns/default/sa/sleep";
/// A mesh identity the `hello` destination may not run as.
const IMPOSTOR_ID: &str = "spiffe://cluster.local/ns/default/sa/impostor";

type StepFn = fn(&Demo) -> Result<()>;

const STEPS: [(&str, StepFn); 7] = [
    (
        "the client workload's plaintext request crosses the link as mutual TLS",
        step_auto_mtls,
    ),
    ("mesh-wide STRICT mutual TLS is applied", step_strict),
    (
        "from outside the mesh, plaintext is reset by the server's kernel",
        step_outside_reset,
    ),
    (
        "the client workload, still plaintext on its side, is still answered",
        step_still_answered,
    ),
    (
        "an AuthorizationPolicy denies the client's principal one path",
        step_authz,
    ),
    (
        "secure naming: a server with the wrong identity gets nothing from the client",
        step_secure_naming,
    ),
    (
        "the mesh graph draws the lock on sleep -> hello",
        step_graph,
    ),
];

/// One node's files: `config/` (watched by its daemon), `certs/`, logs and pid files.
struct Node {
    ns: String,
    state: PathBuf,
    pins: PathBuf,
}

struct Demo {
    bin: PathBuf,
    node_sh: PathBuf,
    /// The workload's cgroup v2 directory (made and removed by node.sh).
    cgroup: PathBuf,
    scratch: PathBuf,
    screenshot: PathBuf,
    /// Declared before `topo`: the nodes go down while their namespaces still exist.
    client: Node,
    server: Node,
    topo: Topology,
}

pub fn run(bin: &Path, screenshot: Option<PathBuf>) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the mesh demo makes network namespaces, a cgroup and eBPF programs: run it as root \
             (sudo env \"PATH=$PATH\" cargo xtask demo mesh)"
        );
    }
    sh::catch_interrupts();
    let tmp = tempfile::Builder::new()
        .prefix("portcullis-demo-")
        .tempdir()?;
    let screenshot = screenshot.unwrap_or_else(|| crate::target_dir().join("demo-mesh-graph.png"));
    let started = Instant::now();
    let (result, leftovers) = {
        let demo = Demo::setup(bin, tmp.path(), screenshot)?;
        let result = demo.steps();
        let leftovers = demo.leftovers_after_cleanup();
        (result, leftovers)
    };
    // The demo's own scratch files (logs, captures) go with it; the screenshot stays.
    let leftover = leftovers?;
    ensure!(
        leftover.is_empty(),
        "the demo left behind: {}",
        leftover.join(", ")
    );
    println!(
        "Cleaned up: namespaces, the workload's cgroup and both nodes' BPF pins are gone ({:.0}s in all).",
        started.elapsed().as_secs_f64()
    );
    result
}

fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup v2 hierarchy is mounted (the client workload's capture needs one)")
}

impl Demo {
    fn setup(bin: &Path, scratch: &Path, screenshot: PathBuf) -> Result<Self> {
        let pid = std::process::id();
        let topo = Topology::create(scratch)?;
        let node = |ns: &str, role: &str| Node {
            ns: ns.to_owned(),
            state: scratch.join(role),
            pins: PathBuf::from(format!("/sys/fs/bpf/portcullis-demo-{pid}-{role}")),
        };
        let demo = Self {
            bin: bin.to_owned(),
            node_sh: crate::workspace().join("vagrant/node.sh"),
            cgroup: cgroup2_root()?.join(format!("portcullis-demo-{pid}-sleep")),
            scratch: scratch.to_owned(),
            screenshot,
            client: node(&topo.client, "client"),
            server: node(&topo.server, "server"),
            topo,
        };
        println!("Setting up: namespaces {} (client), {} (server), {} (outside), one veth link from the server to each.",
            demo.topo.client, demo.topo.server, demo.topo.outside);
        let certs = scratch.join("certs");
        sh::ok(
            Command::new(bin)
                .arg("certs")
                .arg("--out")
                .arg(&certs)
                .args([
                    "--workload",
                    &format!("hello={HELLO_ID}"),
                    "--workload",
                    &format!("sleep={SLEEP_ID}"),
                    "--workload",
                    &format!("impostor={IMPOSTOR_ID}"),
                ]),
        )?;
        let mesh = MESH_YAML
            .replace("SERVER_ADDR", SERVER_ADDR)
            .replace("CLIENT_ADDR", CLIENT_ADDR);
        for n in [&demo.client, &demo.server] {
            std::fs::create_dir_all(n.state.join("config"))?;
            std::fs::write(n.state.join("config/mesh.yaml"), &mesh)?;
            std::os::unix::fs::symlink(&certs, n.state.join("certs"))?;
        }
        demo.node_up("server", &demo.server, &[])?;
        demo.node_up("client", &demo.client, &[])?;
        println!(
            "  server: the app answers `Hello World!` on :80; Portcullis terminates mutual TLS as {HELLO_ID}\n  \
             client: a `sleep` workload in cgroup {}; Portcullis captures its connections as {SLEEP_ID}\n  \
             outside: no Portcullis\n  no PeerAuthentication yet: the mesh is PERMISSIVE, as Istio's default",
            demo.cgroup.display()
        );
        Ok(demo)
    }

    /// `node.sh up ROLE` in the node's namespace; `env` adds settings (e.g. IDENTITY).
    fn node_up(&self, role: &str, node: &Node, env: &[(&str, &str)]) -> Result<()> {
        let mut cmd = self.node_sh(node, "up");
        cmd.arg(role).arg(&node.state).envs(env.iter().copied());
        sh::ok(&mut cmd).with_context(|| format!("node.sh up {role}"))?;
        Ok(())
    }

    fn node_sh(&self, node: &Node, verb: &str) -> Command {
        let mut cmd = self.topo.exec(&node.ns, "bash");
        cmd.arg(&self.node_sh)
            .arg(verb)
            .env("PORTCULLIS", &self.bin)
            .env("PIN_DIR", &node.pins)
            .env("CGROUP", &self.cgroup)
            .env("IFACES", SERVER_IFACES);
        cmd
    }

    fn steps(&self) -> Result<()> {
        for (i, (title, step)) in STEPS.iter().enumerate() {
            let n = i + 1;
            println!("\n== Step {n}/{}: {title}", STEPS.len());
            if let Err(e) = step(self) {
                println!("FAILED: step {n} did not hold: {e:#}");
                bail!("step {n} ({title}) did not hold: {e:#}");
            }
            println!("-> step {n} held");
        }
        println!("\nAll {} steps held.", STEPS.len());
        Ok(())
    }

    /// `curl ARGS` as the client workload (inside its cgroup, on the client node).
    fn workload_curl(&self, args: &[&str]) -> Result<Curl> {
        let mut cmd = self.node_sh(&self.client, "workload");
        cmd.arg(&self.client.state).arg("curl").args(args);
        Curl::run(&mut cmd, args, "the sleep workload, on the client node")
    }

    fn log(node: &Node) -> String {
        std::fs::read(node.state.join("portcullis.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Writes `yaml` as `config/<file>` on `nodes` and waits until each daemon reloaded it.
    fn apply(&self, nodes: &[&Node], file: &str, yaml: &str) -> Result<()> {
        let before: Vec<usize> = nodes
            .iter()
            .map(|n| Self::log(n).matches("configuration reloaded").count())
            .collect();
        for n in nodes {
            std::fs::write(n.state.join("config").join(file), yaml)?;
        }
        let names: Vec<&str> = nodes.iter().map(|n| role(&n.state)).collect();
        println!(
            "  $ cp {file} <node>/config/    # on {}; each daemon watches its config directory",
            names.join(" and ")
        );
        for line in yaml.lines() {
            println!("  | {line}");
        }
        for (n, count) in nodes.iter().zip(before) {
            wait_until(Duration::from_secs(10), || {
                Self::log(n).matches("configuration reloaded").count() > count
            })
            .with_context(|| format!("{} never reloaded:\n{}", role(&n.state), Self::log(n)))?;
            println!("  {}: configuration reloaded", role(&n.state));
        }
        Ok(())
    }

    /// Brings both nodes down and reports what is still there.
    fn leftovers_after_cleanup(self) -> Result<Vec<String>> {
        for n in [&self.client, &self.server] {
            let mut cmd = self.node_sh(n, "down");
            sh::quietly(cmd.arg(&n.state));
        }
        let names = [
            self.topo.client.clone(),
            self.topo.server.clone(),
            self.topo.outside.clone(),
        ];
        let pins = [self.client.pins.clone(), self.server.pins.clone()];
        let cgroup = self.cgroup.clone();
        drop(self);
        let mut left = Vec::new();
        let netns =
            String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output()?.stdout)
                .into_owned();
        for ns in names {
            if netns
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&ns))
            {
                left.push(format!("network namespace {ns}"));
            }
        }
        for p in pins.iter().chain([&cgroup]) {
            if p.exists() {
                left.push(p.display().to_string());
            }
        }
        Ok(left)
    }
}

impl Drop for Demo {
    /// After a failure or Ctrl-C: both nodes down (daemons, app, workload, pins, cgroup).
    /// `node.sh down` is idempotent, so the normal path running it first is harmless.
    fn drop(&mut self) {
        for n in [&self.client, &self.server] {
            let mut cmd = self.node_sh(n, "down");
            sh::quietly(cmd.arg(&n.state));
        }
    }
}

fn role(state: &Path) -> &str {
    state.file_name().and_then(|s| s.to_str()).unwrap_or("node")
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !done() {
        sh::check_interrupted()?;
        ensure!(start.elapsed() < timeout, "not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One curl run and what it printed.
struct Curl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Curl {
    fn run(cmd: &mut Command, args: &[&str], place: &str) -> Result<Self> {
        let out = sh::output(cmd)?;
        let this = Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        println!("  $ curl {}    # as {place}", args.join(" "));
        for line in this.stdout.lines().chain(this.stderr.lines()) {
            println!("  {}", line.trim_end());
        }
        Ok(this)
    }

    /// The status code of a `curl -i` response.
    fn status(&self) -> Option<&str> {
        self.stdout.split_whitespace().nth(1)
    }

    fn hello(&self) -> Result<()> {
        ensure!(
            self.code == Some(0) && self.stdout == "Hello World!",
            "expected `Hello World!`, got exit {:?}, stdout {:?}, stderr {:?}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(())
    }
}

/// Prints the capture's summary (the first lines) and proves only TLS crossed.
fn show_capture(capture_cmd: &str, seen: &Seen) {
    println!("  $ {capture_cmd}    # on the client's link, during that request");
    println!("  $ tshark -r … -d tcp.port==80,tls");
    for line in seen.summary.iter().take(14) {
        println!("  {line}");
    }
    if seen.summary.len() > 14 {
        println!("  … ({} frames in all)", seen.summary.len());
    }
}

fn step_auto_mtls(demo: &Demo) -> Result<()> {
    let capture = Capture::start(
        &demo.topo,
        &demo.topo.client,
        CLIENT_LINK,
        &demo.scratch,
        "client-link",
    )?;
    let command = capture.command.clone();
    let curl = demo.workload_curl(&["-sS", "-m", "5", "http://server:80/"]);
    let seen = capture.finish(&demo.topo, &demo.topo.client)?;
    curl?.hello()?;
    show_capture(&command, &seen);
    let tls = |what: &str| seen.summary.iter().any(|l| l.contains(what));
    ensure!(
        tls("Client Hello") && tls("Application Data"),
        "the capture shows no TLS handshake and records: {:#?}",
        seen.summary
    );
    for clear in ["GET /", "Hello World!"] {
        ensure!(
            !seen.contains(clear),
            "`{clear}` crossed the link in clear ({})",
            demo.scratch.display()
        );
    }
    println!(
        "  The {} bytes captured hold a TLS handshake and encrypted records; neither `GET /` nor \
         `Hello World!` appears in them.",
        seen.bytes.len()
    );
    Ok(())
}

fn step_strict(demo: &Demo) -> Result<()> {
    demo.apply(&[&demo.server, &demo.client], "strict.yaml", STRICT_YAML)
}

fn step_outside_reset(demo: &Demo) -> Result<()> {
    let outside = &demo.topo.outside;
    let capture = Capture::start(
        &demo.topo,
        outside,
        "to-server",
        &demo.scratch,
        "outside-link",
    )?;
    let args = ["-sS", "-m", "5", "http://server:80/"];
    let mut cmd = demo.topo.exec(outside, "curl");
    cmd.args(args);
    let curl = Curl::run(&mut cmd, &args, "a process outside the mesh");
    let seen = capture.finish(&demo.topo, outside)?;
    let curl = curl?;
    ensure!(
        curl.code == Some(56) && curl.stderr.contains("Connection reset by peer"),
        "expected curl: (56) … Connection reset by peer, got exit {:?}: {}",
        curl.code,
        curl.stderr
    );
    // The control for step 1's capture: the same capture does see plaintext when it crosses.
    ensure!(
        seen.contains("GET /") && !seen.contains("Hello World!"),
        "the outside link should carry the plaintext `GET /` and no answer; it carried {} \
         (`GET /`: {}, `Hello World!`: {}):\n{}",
        seen.bytes.len(),
        seen.contains("GET /"),
        seen.contains("Hello World!"),
        seen.summary.join("\n")
    );
    println!(
        "  On the outside link the same capture sees the plaintext `GET /` (so step 1's capture \
         would have shown it too) and no `Hello World!`: the server's kernel reset the connection \
         before the app read a byte."
    );
    Ok(())
}

fn step_still_answered(demo: &Demo) -> Result<()> {
    demo.workload_curl(&["-sS", "-m", "5", "http://server:80/"])?
        .hello()
}

fn step_authz(demo: &Demo) -> Result<()> {
    demo.apply(&[&demo.server], "deny-admin.yaml", DENY_ADMIN_YAML)?;
    let denied = demo.workload_curl(&["-sS", "-m", "5", "-i", "http://server:80/admin"])?;
    ensure!(
        denied.status() == Some("403") && denied.stdout.ends_with("RBAC: access denied"),
        "expected 403 RBAC: access denied on /admin, got {:?}",
        denied.stdout
    );
    let allowed = demo.workload_curl(&["-sS", "-m", "5", "-i", "http://server:80/"])?;
    ensure!(
        allowed.status() == Some("200") && allowed.stdout.ends_with("Hello World!"),
        "expected 200 Hello World! on /, got {:?}",
        allowed.stdout
    );
    Ok(())
}

fn step_secure_naming(demo: &Demo) -> Result<()> {
    println!(
        "  $ IDENTITY=impostor node.sh up server    # the server node now presents {IMPOSTOR_ID},\n  \
         #   a certificate from the same mesh CA, but `hello` runs as {HELLO_ID}"
    );
    demo.node_up("server", &demo.server, &[("IDENTITY", "impostor")])?;
    let before = Demo::log(&demo.client).matches("secure naming").count();
    let curl = demo.workload_curl(&["-sS", "-m", "5", "http://server:80/"])?;
    ensure!(
        curl.code != Some(0) && !curl.stdout.contains("Hello World!"),
        "the workload got an answer from the impostor: exit {:?} {:?}",
        curl.code,
        curl.stdout
    );
    wait_until(Duration::from_secs(5), || {
        Demo::log(&demo.client).matches("secure naming").count() > before
    })
    .context("the client node never said why it refused")?;
    let log = Demo::log(&demo.client);
    let why = log
        .lines()
        .rev()
        .find(|l| l.contains("secure naming"))
        .unwrap_or_default();
    ensure!(
        why.contains(IMPOSTOR_ID) && why.contains(HELLO_ID),
        "the refusal names neither identity: {why}"
    );
    println!("  client node's log: {}", why.trim());
    Ok(())
}

fn step_graph(demo: &Demo) -> Result<()> {
    let url = "http://127.0.0.1:15000/graph";
    let ns = Some(demo.topo.client.as_str());
    let dom = e2e::chromium::dump_dom_in(ns, url, &demo.scratch)?;
    let edge = e2e::chromium::edges(&dom)
        .into_iter()
        .find(|e| {
            e.attr("data-source") == "sleep.default" && e.attr("data-target") == "hello.default"
        })
        .context("the page draws no sleep -> hello edge")?;
    ensure!(
        edge.attr("data-security") == "mutual_tls" && edge.inner.contains("lock closed"),
        "the sleep -> hello edge has no closed lock: {:?}",
        edge.attrs
    );
    if let Some(dir) = demo.screenshot.parent() {
        std::fs::create_dir_all(dir)?;
    }
    e2e::chromium::screenshot_in(ns, url, &demo.screenshot, (1200, 800), &demo.scratch)?;
    println!(
        "  $ chromium --headless --screenshot {url}    # on the client node (its admin listener)\n  \
         edge sleep.default -> hello.default: connection_security_policy=mutual_tls, closed lock, {} requests\n  \
         screenshot: {}",
        edge.attr("data-requests"),
        demo.screenshot.display()
    );
    Ok(())
}
