//! Outbound capture end to end, as root: `portcullis kernel capture attach` puts the cgroup
//! connect4 + sock_ops programs on a cgroup made here; curl, run inside that cgroup and the
//! client network namespace, asks for `http://10.231.0.1:80/` and lands on a stand-in for the
//! outbound proxy on `127.0.0.1:15001`, which then learns `10.231.0.1:80` from the peer address
//! it accepted. Destinations not in the set, and processes outside the cgroup, go direct.
//!
//! Processes join the cgroup through `nsenter --net=…` (only the network namespace changes):
//! `ip netns exec` remounts /sys and would hide /sys/fs/cgroup/unified.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use e2e::hello::HelloApp;
use e2e::netns::Topology;
use e2e::process::run;
use e2e::{is_root, portcullis_bin, skip_not_root};

const OUTBOUND: &str = "127.0.0.1:15001";
const MESH_DEST: &str = "10.231.0.1:80";
/// Served by nobody: a connect there that is not captured is refused.
const OTHER_DEST: &str = "10.231.0.1:8080";

static NEXT: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------------------------
// Test-owned resources, removed on drop (also when the test fails).

/// A cgroup v2 directory made for this test.
struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    fn create() -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "/sys/fs/cgroup/unified/portcullis-test-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes (curl) have exited and been reaped; removal can still race their final
        // accounting for a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove {}", self.path.display());
    }
}

/// The pin directory of this test and the CLI that manages it; uninstalls on drop.
struct Pins {
    bin: PathBuf,
    ns: String,
    dir: PathBuf,
}

impl Pins {
    fn new(ns: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            bin: portcullis_bin()?,
            ns: ns.to_owned(),
            dir: PathBuf::from(format!(
                "/sys/fs/bpf/portcullis-capture-{}-{n}",
                std::process::id()
            )),
        })
    }

    /// `portcullis kernel ARGS --pin-dir DIR` in the client namespace: (success, stdout, stderr).
    fn kernel(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = run(Topology::nsenter(&self.ns, &self.bin)
            .arg("kernel")
            .args(args)
            .arg("--pin-dir")
            .arg(&self.dir))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn ok(&self, args: &[&str]) -> Result<(String, String)> {
        let (ok, stdout, stderr) = self.kernel(args)?;
        ensure!(ok, "kernel {args:?} failed: {stderr}");
        Ok((stdout, stderr))
    }

    fn attach(&self, cgroup: &Cgroup, dests: &[&str]) -> Result<String> {
        let cg = cgroup.path.to_string_lossy().into_owned();
        let mut args = vec!["capture", "attach", "--cgroup", &cg, "--outbound", OUTBOUND];
        for d in dests {
            args.extend(["--dest", d]);
        }
        Ok(self.ok(&args)?.1)
    }

    fn original_dst(&self, peer: SocketAddr) -> Result<Option<String>> {
        let (ok, stdout, stderr) = self.kernel(&["capture", "original-dst", &peer.to_string()])?;
        if ok {
            return Ok(Some(stdout.trim().to_owned()));
        }
        ensure!(
            stderr.contains("no original destination recorded"),
            "original-dst {peer}: {stderr}"
        );
        Ok(None)
    }

    fn status_line(&self, key: &str) -> Result<String> {
        let (status, _) = self.ok(&["capture", "status"])?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
            .with_context(|| format!("no `{key}` in capture status:\n{status}"))
    }

    fn captured(&self) -> Result<u64> {
        Ok(self.status_line("captured:")?.parse()?)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.kernel(&["uninstall"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stands in for the outbound proxy: listens on 127.0.0.1:15001 in the client namespace,
/// answers every request with `captured`, and reports each accepted peer address.
struct StandIn {
    peers: Receiver<SocketAddr>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Option<()>>>,
}

impl StandIn {
    fn start(ns: &str) -> Result<Self> {
        let (peer_tx, peers) = std::sync::mpsc::channel();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = Topology::spawn_in(ns, move || {
            let listener = match TcpListener::bind(OUTBOUND) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(listener.set_nonblocking(true).map_err(|e| e.to_string()));
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        answer(conn);
                        let _ = peer_tx.send(peer);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })?;
        match ready.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            other => bail!("the stand-in listener did not start: {other:?}"),
        }
        Ok(Self {
            peers,
            stop,
            handle: Some(handle),
        })
    }

    /// The next accepted peer, if one comes within `timeout`.
    fn next_peer(&self, timeout: Duration) -> Option<SocketAddr> {
        self.peers.recv_timeout(timeout).ok()
    }
}

fn answer(mut conn: std::net::TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 65536 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let _ = conn
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\ncaptured");
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

struct Curl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// curl `http://DEST/` in the client namespace; inside `cgroup` when given (the shell moves
/// itself into the cgroup, then becomes curl).
fn curl(ns: &str, cgroup: Option<&Path>, dest: &str) -> Result<Curl> {
    let url = format!("http://{dest}/");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"));
    match cgroup {
        Some(cg) => {
            cmd.args([
                "sh",
                "-c",
                "echo $$ > \"$1/cgroup.procs\" && exec curl -sS -m 5 \"$2\"",
            ])
            .arg("sh")
            .arg(cg)
            .arg(&url);
        }
        None => {
            cmd.args(["curl", "-sS", "-m", "5", &url]);
        }
    }
    let out = run(&mut cmd)?;
    Ok(Curl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn expect_body(r: &Curl, body: &str, what: &str) -> Result<()> {
    ensure!(
        r.code == Some(0) && r.stdout == body,
        "{what}: expected {body:?}, got exit {:?} stdout {:?} stderr {:?}",
        r.code,
        r.stdout,
        r.stderr
    );
    Ok(())
}

fn expect_refused(r: &Curl, what: &str) -> Result<()> {
    // 7: "Failed to connect" — the connect went to the real destination, where nothing listens.
    ensure!(
        r.code == Some(7),
        "{what}: expected curl exit 7 (connection refused), got exit {:?} stdout {:?} stderr {:?}",
        r.code,
        r.stdout,
        r.stderr
    );
    Ok(())
}

/// Nothing reached the stand-in (checked for a short while: captured connects are immediate).
fn expect_no_capture(standin: &StandIn, what: &str) -> Result<()> {
    if let Some(peer) = standin.next_peer(Duration::from_millis(300)) {
        bail!("{what}: the outbound listener accepted a connection from {peer}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// A captured connect reaches the outbound listener and its original destination is found by
/// peer address (once); other destinations, other processes and an uninstalled capture go
/// direct; a second attach adopts the pins and syncs the destination set.
#[test]
fn capture_sends_mesh_connects_to_the_outbound_listener() -> Result<()> {
    if !is_root() {
        skip_not_root("capture_sends_mesh_connects_to_the_outbound_listener");
        return Ok(());
    }
    // Dropped in reverse: pins (uninstall) before the cgroup, namespaces last.
    let topo = Topology::create("capture")?;
    let app = HelloApp::start(&topo.server)?;
    let standin = StandIn::start(&topo.outside)?;
    let cgroup = Cgroup::create()?;
    let pins = Pins::new(&topo.outside)?;
    let ns = topo.outside.as_str();
    let cg = Some(cgroup.path.as_path());

    let log = pins.attach(&cgroup, &[MESH_DEST])?;
    ensure!(log.contains("loaded and pinned"), "first attach: {log}");

    // Inside the cgroup: captured; the listener learns the original destination from the peer.
    let r = curl(ns, cg, MESH_DEST)?;
    expect_body(&r, "captured", "curl in the cgroup to the mesh destination")?;
    let peer = standin
        .next_peer(Duration::from_secs(5))
        .context("the outbound listener accepted nothing")?;
    ensure!(
        pins.original_dst(peer)?.as_deref() == Some(MESH_DEST),
        "original destination of {peer} is not {MESH_DEST}"
    );
    ensure!(
        pins.original_dst(peer)?.is_none(),
        "the entry for {peer} was not consumed by the first lookup"
    );
    ensure!(pins.captured()? == 1, "captured counter is not 1");
    ensure!(
        app.stats.accepted.load(Ordering::SeqCst) == 0,
        "the captured connect also reached the server"
    );

    // A destination not in MESH_DESTS is not captured (nothing serves it: refused).
    expect_refused(&curl(ns, cg, OTHER_DEST)?, "curl in the cgroup to :8080")?;
    expect_no_capture(&standin, "destination not in MESH_DESTS")?;

    // A process outside the cgroup is not captured: it reaches the server itself.
    expect_body(
        &curl(ns, None, MESH_DEST)?,
        "Hello World!",
        "curl outside the cgroup",
    )?;
    expect_no_capture(&standin, "process outside the cgroup")?;
    ensure!(
        app.stats.accepted.load(Ordering::SeqCst) == 1,
        "the server did not see the uncaptured connect"
    );
    ensure!(pins.captured()? == 1, "uncaptured connects were counted");

    // Attach again with another set: the pins are adopted, the set becomes exactly that.
    let log = pins.attach(&cgroup, &[OTHER_DEST])?;
    ensure!(log.contains("adopted pinned"), "second attach: {log}");
    let dests = pins.status_line("destinations:")?;
    ensure!(dests == format!("[{OTHER_DEST}]"), "destinations: {dests}");
    expect_body(
        &curl(ns, cg, MESH_DEST)?,
        "Hello World!",
        "curl in the cgroup to a destination removed from the set",
    )?;
    expect_no_capture(&standin, "destination removed from the set")?;
    expect_body(
        &curl(ns, cg, OTHER_DEST)?,
        "captured",
        "curl in the cgroup to the added destination",
    )?;
    let peer = standin
        .next_peer(Duration::from_secs(5))
        .context("the outbound listener accepted nothing after the set changed")?;
    ensure!(
        pins.original_dst(peer)?.as_deref() == Some(OTHER_DEST),
        "original destination of {peer} is not {OTHER_DEST}"
    );
    ensure!(pins.captured()? == 2, "captured counter is not 2");

    // uninstall: both links and every pin go; the cgroup's connects go direct again.
    let (report, _) = pins.ok(&["uninstall"])?;
    ensure!(report.contains("2 links detached"), "uninstall: {report}");
    ensure!(!pins.dir.exists(), "{} still exists", pins.dir.display());
    expect_refused(
        &curl(ns, cg, OTHER_DEST)?,
        "curl in the cgroup after uninstall",
    )?;
    expect_no_capture(&standin, "after uninstall")?;
    Ok(())
}

/// A missing cgroup and a cgroup v1 hierarchy are refused with their own messages, before
/// anything is pinned.
#[test]
fn capture_refuses_what_is_not_a_cgroup_v2_directory() -> Result<()> {
    if !is_root() {
        skip_not_root("capture_refuses_what_is_not_a_cgroup_v2_directory");
        return Ok(());
    }
    let topo = Topology::create("capture-bad")?;
    let pins = Pins::new(&topo.outside)?;
    let start = Instant::now();
    let mut cases = vec![(
        "/sys/fs/cgroup/unified/portcullis-no-such-cgroup",
        "no cgroup directory",
    )];
    if Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
        cases.push(("/sys/fs/cgroup/pids", "a cgroup v1 hierarchy"));
    }
    cases.push(("/tmp", "not on a cgroup filesystem"));
    for (path, want) in cases {
        let (ok, _, stderr) =
            pins.kernel(&["capture", "attach", "--cgroup", path, "--dest", MESH_DEST])?;
        ensure!(
            !ok && stderr.contains(want),
            "{path}: expected `{want}`, got ok={ok} {stderr}"
        );
    }
    ensure!(
        !pins.dir.exists(),
        "a refused attach left {}",
        pins.dir.display()
    );
    ensure!(start.elapsed() < Duration::from_secs(30), "took too long");
    Ok(())
}

/// The inbound path and the capture share one pin directory: attaching the inbound programs
/// after the capture leaves the capture working, and one uninstall removes both.
#[test]
fn inbound_and_capture_share_a_pin_dir() -> Result<()> {
    if !is_root() {
        skip_not_root("inbound_and_capture_share_a_pin_dir");
        return Ok(());
    }
    let topo = Topology::create("capture-both")?;
    let standin = StandIn::start(&topo.outside)?;
    let cgroup = Cgroup::create()?;
    let pins = Pins::new(&topo.outside)?;
    let ns = topo.outside.as_str();

    pins.attach(&cgroup, &[MESH_DEST])?;
    // The pin directory exists but holds no inbound pins: the inbound install must not take
    // the capture's pins for a half-finished install of its own.
    pins.ok(&["attach", "--iface", "lo", "--port", "9=disable"])?;
    let dests = pins.status_line("destinations:")?;
    ensure!(dests == format!("[{MESH_DEST}]"), "destinations: {dests}");
    expect_body(
        &curl(ns, Some(&cgroup.path), MESH_DEST)?,
        "captured",
        "curl in the cgroup with both halves installed",
    )?;
    let peer = standin
        .next_peer(Duration::from_secs(5))
        .context("the outbound listener accepted nothing")?;
    ensure!(
        pins.original_dst(peer)?.as_deref() == Some(MESH_DEST),
        "original destination of {peer} is not {MESH_DEST}"
    );

    // steer-netns, strict-lo and the two capture links.
    let (report, _) = pins.ok(&["uninstall"])?;
    ensure!(report.contains("4 links detached"), "uninstall: {report}");
    ensure!(!pins.dir.exists(), "{} still exists", pins.dir.display());
    Ok(())
}
