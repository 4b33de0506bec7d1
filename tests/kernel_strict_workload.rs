//! Issue 13: STRICT covers the workload, fails closed by default, and a plaintext flood costs
//! the app nothing. As root, in namespaces made here: the mesh daemon runs **without**
//! `--iface` under a mesh-wide STRICT whose WorkloadEntry names only port 80, with a plaintext
//! HTTP app on :80 (std's default 128-deep accept queue), a second app on :6379 that no
//! entry names and a third on :15090, a port Istio reserves but the daemon does not bind.
//! Checked with the daemon running and after `kill -9`, on IPv4 and IPv6.

use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use e2e::hello::HelloApp;
use e2e::mesh::{Node, Pins};
use e2e::netns::{Topology, SERVER_IF, SERVER_V4, SERVER_V6};
use e2e::process::run;
use e2e::{is_root, portcullis_bin, skip_not_root};

const WORKLOAD: &str = "\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: hello, namespace: default}
spec:
  address: 10.231.0.1
  labels: {app: hello}
  serviceAccount: hello
  ports: {http: 80}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

/// Port of the app no WorkloadEntry or ServiceEntry names.
const UNNAMED: u16 = 6379;

/// A port Istio reserves (telemetry) that the daemon does not bind: a workload app there is
/// STRICT like any other port.
const ISTIO_RESERVED: u16 = 15090;

/// Connections of the plaintext flood, per round.
const FLOOD: usize = 2000;

// ---------------------------------------------------------------------------------------------
// The unnamed app: a tiny HTTP responder that records who it read bytes from.

#[derive(Default)]
struct Reads {
    /// Bytes read from connections whose peer is not loopback (i.e. not the terminator).
    from_outside: AtomicU64,
    /// Bytes read from the terminator (loopback peers).
    from_terminator: AtomicU64,
    accepted_outside: AtomicU64,
}

struct UnnamedApp {
    reads: Arc<Reads>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Option<()>>>,
}

impl UnnamedApp {
    fn start(ns: &str, port: u16) -> Result<Self> {
        let reads = Arc::new(Reads::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (r, st) = (reads.clone(), stop.clone());
        let handle = Topology::spawn_in(ns, move || {
            let listener = match TcpListener::bind(("::", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(listener.set_nonblocking(true).map_err(|e| e.to_string()));
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, peer)) => serve_one(conn, peer, &r),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })?;
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            other => bail!("the unnamed app did not start: {other:?}"),
        }
        Ok(Self {
            reads,
            stop,
            handle: Some(handle),
        })
    }
}

fn serve_one(mut conn: TcpStream, peer: SocketAddr, reads: &Reads) {
    let outside = !peer.ip().to_canonical().is_loopback();
    if outside {
        reads.accepted_outside.fetch_add(1, Ordering::SeqCst);
    }
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        let counter = if outside {
            &reads.from_outside
        } else {
            &reads.from_terminator
        };
        counter.fetch_add(n as u64, Ordering::SeqCst);
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            break;
        }
    }
}

impl Drop for UnnamedApp {
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

fn curl(outside: &str, certs: Option<&Path>, family: &str, port: u16) -> Result<Curl> {
    let mut cmd = Topology::exec(outside, "curl");
    cmd.args(["-sS", family, "-m", "5"]);
    let url = match certs {
        Some(dir) => {
            cmd.arg("--cacert")
                .arg(dir.join("cacert.pem"))
                .arg("--cert")
                .arg(dir.join("clientcert.pem"))
                .arg("--key")
                .arg(dir.join("client.key.pem"));
            format!("https://server:{port}/")
        }
        None => format!("http://server:{port}/"),
    };
    let out = run(cmd.arg(url))?;
    Ok(Curl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Outcomes of raw plaintext connections from the outside namespace.
#[derive(Debug, Default)]
struct FloodOutcome {
    attempted: u64,
    refused: u64,
    reset: u64,
    answered: u64,
    other: u64,
}

/// `count` plaintext connections, each writing `payload` first, from 8 threads in `outside`,
/// alternating IPv4 and IPv6; bounded by count and by a minute of wall time.
fn flood(outside: &str, port: u16, count: usize, payload: &'static [u8]) -> Result<FloodOutcome> {
    let threads = 8;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut handles = Vec::new();
    for t in 0..threads {
        handles.push(Topology::spawn_in(outside, move || {
            let mut out = FloodOutcome::default();
            for i in 0..count / threads {
                if Instant::now() > deadline {
                    break;
                }
                out.attempted += 1;
                let ip: IpAddr = if (i + t) % 2 == 0 {
                    SERVER_V4.into()
                } else {
                    SERVER_V6.into()
                };
                match one_plaintext(SocketAddr::new(ip, port), payload) {
                    Ok(true) => out.answered += 1,
                    Ok(false) => out.other += 1,
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => out.refused += 1,
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                        ) =>
                    {
                        out.reset += 1
                    }
                    Err(_) => out.other += 1,
                }
            }
            out
        })?);
    }
    let mut total = FloodOutcome::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("a flood thread panicked"))?
            .context("a flood thread could not enter the namespace")?;
        total.attempted += r.attempted;
        total.refused += r.refused;
        total.reset += r.reset;
        total.answered += r.answered;
        total.other += r.other;
    }
    Ok(total)
}

/// Ok(true) when something answered with bytes.
fn one_plaintext(addr: SocketAddr, payload: &[u8]) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(payload)?;
    let mut buf = [0u8; 64];
    Ok(s.read(&mut buf)? > 0)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn strict_covers_every_workload_port_fails_closed_and_a_flood_costs_the_app_nothing() -> Result<()>
{
    let name = "strict_covers_every_workload_port_fails_closed_and_a_flood_costs_the_app_nothing";
    if !is_root() {
        skip_not_root(name);
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let topo = Topology::create("kstrictwl")?;
    let app = HelloApp::start(&topo.server)?;
    let unnamed = UnnamedApp::start(&topo.server, UNNAMED)?;
    let reserved = UnnamedApp::start(&topo.server, ISTIO_RESERVED)?;
    let (mut node, certs) = server_node(&topo, tmp.path(), &[])?;
    node.start()?;

    let status = kernel(&topo, &node, &["status"])?;
    // Only the ports the daemon binds on a reachable address are exceptions to the default:
    // the terminator's. Admin (15000) and outbound (15001) listen on loopback only, so they
    // follow the default like Istio's other reserved ports (15090 here, whose app below is
    // reset): an exception would open that port, on every address, to any app binding it.
    ensure!(
        status.lines().any(|l| l.trim() == "port 15006: DISABLE"),
        "the terminator's port is an exception to the default:\n{status}"
    );
    for port in [15000, 15001, ISTIO_RESERVED] {
        ensure!(
            !status.contains(&format!("port {port}:")),
            "port {port} has an entry of its own, not the workload's STRICT:\n{status}"
        );
    }
    let tc_line = status
        .lines()
        .find(|l| l.starts_with("tc ingress:"))
        .unwrap_or_default();
    ensure!(
        tc_line.contains(SERVER_IF) && tc_line.contains("lo"),
        "without --iface the STRICT check is attached to the workload's interface and lo:\n{status}"
    );
    ensure!(
        status
            .lines()
            .any(|l| l.trim() == "default:   STRICT, steered"),
        "the mesh-wide STRICT is the default of every port:\n{status}"
    );

    // The unnamed port: mTLS is steered, terminated and forwarded; plaintext never reaches the
    // app, neither as HTTP nor as a line protocol behind `16 03 01`.
    for family in ["-4", "-6"] {
        let r = curl(&topo.outside, Some(&certs), family, UNNAMED)?;
        ensure!(
            r.code == Some(0) && r.stdout == "ok",
            "mTLS {family} to the unnamed port: exit {:?} {:?} {:?}\n{}",
            r.code,
            r.stdout,
            r.stderr,
            node.log()
        );
        for port in [UNNAMED, ISTIO_RESERVED] {
            let r = curl(&topo.outside, None, family, port)?;
            ensure!(
                r.code == Some(56),
                "plaintext {family} to the unnamed port {port} is reset: exit {:?} {:?}",
                r.code,
                r.stderr
            );
        }
    }
    let line = flood(
        &topo.outside,
        UNNAMED,
        16,
        b"\x16\x03\x01\nPING\r\nSET k v\r\n",
    )?;
    ensure!(
        line.answered == 0,
        "a line protocol behind 16 03 01 was answered: {line:?}"
    );
    ensure!(
        unnamed.reads.from_terminator.load(Ordering::SeqCst) > 0,
        "the terminator forwarded the mTLS requests"
    );

    // The flood: FLOOD plaintext connections to port 80, many times the app's 128-deep queue.
    // Each is steered to the terminator and reset in the kernel, so the app accepts none.
    let accepted_before = app.stats.accepted.load(Ordering::SeqCst);
    let outcome = flood(
        &topo.outside,
        80,
        FLOOD,
        b"GET / HTTP/1.1\r\nHost: server\r\n\r\n",
    )?;
    eprintln!("flood with the daemon up: {outcome:?}");
    ensure!(
        outcome.answered == 0,
        "plaintext was answered during the flood: {outcome:?}"
    );
    ensure!(
        app.stats.accepted.load(Ordering::SeqCst) == accepted_before,
        "the app accepted connections of the flood"
    );
    for family in ["-4", "-6"] {
        let r = curl(&topo.outside, Some(&certs), family, 80)?;
        ensure!(
            r.code == Some(0) && r.stdout == "Hello World!",
            "mTLS {family} right after the flood: exit {:?} {:?} {:?}",
            r.code,
            r.stdout,
            r.stderr
        );
    }

    // kill -9: nothing terminates mTLS any more, and nothing unjudged reaches either app.
    node.kill9()?;
    let accepted_before = app.stats.accepted.load(Ordering::SeqCst);
    let read_before = app.bytes_read();
    for port in [80, UNNAMED, ISTIO_RESERVED] {
        for family in ["-4", "-6"] {
            let r = curl(&topo.outside, None, family, port)?;
            ensure!(
                r.code == Some(7),
                "plaintext {family} to :{port} after kill -9 is refused: exit {:?} {:?}",
                r.code,
                r.stderr
            );
        }
    }
    let dead = flood(
        &topo.outside,
        80,
        FLOOD / 4,
        b"GET / HTTP/1.1\r\nHost: server\r\n\r\n",
    )?;
    eprintln!("flood with the daemon dead: {dead:?}");
    ensure!(
        dead.answered == 0 && dead.attempted > 0 && dead.refused == dead.attempted,
        "every connection is refused with the daemon dead: {dead:?}"
    );
    ensure!(
        app.stats.accepted.load(Ordering::SeqCst) == accepted_before
            && app.bytes_read() == read_before,
        "the app accepted or read something after the daemon died"
    );
    ensure!(
        unnamed.reads.from_outside.load(Ordering::SeqCst) == 0
            && unnamed.reads.accepted_outside.load(Ordering::SeqCst) == 0,
        "the unnamed app accepted or read a connection from outside"
    );
    ensure!(
        reserved.reads.from_outside.load(Ordering::SeqCst) == 0
            && reserved.reads.accepted_outside.load(Ordering::SeqCst) == 0,
        "the app on {ISTIO_RESERVED} accepted or read a connection from outside"
    );
    Ok(())
}

/// The server node of these tests: certificates, the WorkloadEntry and mesh-wide STRICT, and
/// the mesh daemon (not started yet) without `--iface`: it finds the interfaces itself.
/// Returns the node and the certificate directory.
fn server_node(topo: &Topology, dir: &Path, extra: &[&str]) -> Result<(Node, PathBuf)> {
    let bin = portcullis_bin()?;
    let certs = dir.join("certs");
    let out = run(Command::new(&bin)
        .arg("certs")
        .arg("--out")
        .arg(&certs)
        .args([
            "--host",
            "server",
            "--client-id",
            "spiffe://cluster.local/ns/default/sa/sleep",
        ]))?;
    ensure!(
        out.status.success(),
        "certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::write(config.join("workload.yaml"), WORKLOAD)?;
    let pins = Pins::new(
        &topo.server,
        PathBuf::from(format!(
            "/sys/fs/bpf/portcullis-wl-{}-{}",
            std::process::id(),
            topo.server
        )),
    )?;
    let mut args: Vec<OsString> = vec!["run".into(), "-c".into(), config.into()];
    args.extend(["--credentials".into(), certs.clone().into()]);
    args.extend(
        ["--mesh-credential", "server", "--admin", "127.0.0.1:15000"]
            .into_iter()
            .chain(extra.iter().copied())
            .map(OsString::from),
    );
    args.extend(["--pin-dir".into(), pins.dir.clone().into()]);
    let node = Node::new(
        "portcullis-wl",
        &topo.server,
        args,
        "mesh terminator listening",
        dir,
        pins,
    );
    Ok((node, certs))
}

/// `portcullis kernel ARGS` against `node`'s pins, in its namespace; its stdout.
fn kernel(topo: &Topology, node: &Node, args: &[&str]) -> Result<String> {
    let out = run(Topology::nsenter(&topo.server, &portcullis_bin()?)
        .arg("kernel")
        .args(args)
        .arg("--pin-dir")
        .arg(&node.pins.dir))?;
    ensure!(
        out.status.success(),
        "kernel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `--exclude-inbound-ports` leaves exactly the ports it names outside the mesh: plaintext
/// reaches the excluded app, with the daemon up and dead, while the other ports of the same
/// workload stay STRICT (reset up, refused dead) on both families.
#[test]
fn excluded_inbound_ports_and_only_those_take_plaintext() -> Result<()> {
    let name = "excluded_inbound_ports_and_only_those_take_plaintext";
    if !is_root() {
        skip_not_root(name);
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let topo = Topology::create("kexclude")?;
    let _app = HelloApp::start(&topo.server)?;
    let unnamed = UnnamedApp::start(&topo.server, UNNAMED)?;
    let excluded = UNNAMED.to_string();
    let (mut node, _certs) =
        server_node(&topo, tmp.path(), &["--exclude-inbound-ports", &excluded])?;
    node.start()?;
    let status = kernel(&topo, &node, &["status"])?;
    ensure!(
        status.contains("default:   STRICT, steered"),
        "the mesh-wide STRICT stays the default:\n{status}"
    );
    for alive in [true, false] {
        if !alive {
            node.kill9()?;
        }
        let state = if alive { "up" } else { "dead" };
        for family in ["-4", "-6"] {
            let r = curl(&topo.outside, None, family, UNNAMED)?;
            ensure!(
                r.code == Some(0) && r.stdout == "ok",
                "plaintext {family} to the excluded port, daemon {state}: exit {:?} {:?} {:?}",
                r.code,
                r.stdout,
                r.stderr
            );
            let r = curl(&topo.outside, None, family, 80)?;
            let want = if alive { 56 } else { 7 };
            ensure!(
                r.code == Some(want),
                "plaintext {family} to :80, daemon {state}: exit {:?} (want {want}) {:?}",
                r.code,
                r.stderr
            );
        }
    }
    ensure!(
        unnamed.reads.from_outside.load(Ordering::SeqCst) > 0,
        "the excluded app read the plaintext requests"
    );
    Ok(())
}
