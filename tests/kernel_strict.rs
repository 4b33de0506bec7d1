//! The kernel path end to end, as root, in network namespaces made here: a plaintext app on
//! :80 in `server`, curl in `outside`, and `portcullis kernel run` enforcing PeerAuthentication
//! from a config directory. Covers issue 3 steps 1–3, 6 and 7 on IPv4 and IPv6.
//!
//! Pins go to a per-test directory under /sys/fs/bpf (tests run in parallel); the daemon's
//! default is /sys/fs/bpf/portcullis.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use e2e::hello::HelloApp;
use e2e::netns::{Topology, SERVER_IF};
use e2e::process::{run, Daemon};
use e2e::{is_root, portcullis_bin, skip_not_root};

const WORKLOAD: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: hello, namespace: default}
spec:
  address: 10.231.0.1
  labels: {app: hello}
  ports: {http: 80}
";

fn mesh_wide(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n\
         metadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
    )
}

// ---------------------------------------------------------------------------------------------
// The daemon and its pins.

static NEXT_PIN: AtomicU32 = AtomicU32::new(0);

/// The kernel path under test: the pin directory, config directory and daemon command line.
/// Dropping it uninstalls (detach + unpin), then removes the pin directory if anything is left.
struct KernelPath {
    bin: PathBuf,
    ns: String,
    pin_dir: PathBuf,
    config: tempfile::TempDir,
}

impl KernelPath {
    fn new(ns: &str) -> Result<Self> {
        let n = NEXT_PIN.fetch_add(1, Ordering::Relaxed);
        let config = tempfile::tempdir()?;
        std::fs::write(config.path().join("workload.yaml"), WORKLOAD)?;
        Ok(Self {
            bin: portcullis_bin()?,
            ns: ns.to_owned(),
            pin_dir: PathBuf::from(format!(
                "/sys/fs/bpf/portcullis-e2e-{}-{n}",
                std::process::id()
            )),
            config,
        })
    }

    fn set_peer_auth(&self, mode: Option<&str>) -> Result<()> {
        let path = self.config.path().join("peer-auth.yaml");
        match mode {
            // Write then rename: the daemon never reads a half-written file.
            Some(mode) => {
                let tmp = self.config.path().join(".peer-auth.tmp");
                std::fs::write(&tmp, mesh_wide(mode))?;
                std::fs::rename(&tmp, &path)?;
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Topology::nsenter(&self.ns, &self.bin);
        cmd.arg("kernel")
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir);
        cmd
    }

    /// `kernel run --config` without steering: port 80 (named by the WorkloadEntry) follows
    /// the mesh-wide PeerAuthentication, while `--default permissive` keeps the workload-wide
    /// default out of it — a STRICT default without `--steer` is refused (the tc check alone
    /// cannot cover the ephemeral port range).
    fn start_daemon(&self, log_dir: &Path, name: &str) -> Result<Daemon> {
        let mut cmd = self.cmd(&[
            "run",
            "--iface",
            SERVER_IF,
            "--poll-ms",
            "100",
            "--default",
            "permissive",
        ]);
        cmd.arg("--config").arg(self.config.path());
        Daemon::spawn(name, cmd, log_dir)
    }

    fn status(&self) -> Result<Status> {
        let out = run(&mut self.cmd(&["status"]))?;
        ensure!(
            out.status.success(),
            "kernel status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Status(String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// Polls status until port 80 shows `mode`; returns how long that took.
    fn wait_mode(&self, mode: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let want = format!("port 80: {mode}");
        for _ in 0..1000 {
            if let Ok(st) = self.status() {
                if st.0.lines().any(|l| l.trim() == want) {
                    return Ok(start.elapsed());
                }
            }
            if start.elapsed() > timeout {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("port 80 not in mode {mode} after {timeout:?}")
    }

    fn uninstall(&self) -> Result<String> {
        let out = run(&mut self.cmd(&["uninstall"]))?;
        ensure!(
            out.status.success(),
            "uninstall failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for KernelPath {
    fn drop(&mut self) {
        let _ = self.uninstall();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// `portcullis kernel status` text.
struct Status(String);

impl Status {
    /// A `key=value` number from the `port 80:` counters line.
    fn port80(&self, key: &str) -> u64 {
        self.0
            .lines()
            .find(|l| l.trim_start().starts_with("port 80: steered="))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn program_ids(&self) -> String {
        self.0
            .lines()
            .find(|l| l.starts_with("programs:"))
            .unwrap_or_default()
            .to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// The client.

struct CurlResult {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn curl(outside: &str, family: &str, scheme: &str) -> Result<CurlResult> {
    let out = run(Topology::exec(outside, "curl").args([
        "-sS",
        family,
        "-m",
        "5",
        "-k",
        &format!("{scheme}://server:80/"),
    ]))?;
    Ok(CurlResult {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn assert_hello(outside: &str, family: &str) -> Result<()> {
    let r = curl(outside, family, "http")?;
    ensure!(
        r.code == Some(0) && r.stdout == "Hello World!",
        "curl {family} expected Hello World!, got exit {:?} stdout {:?} stderr {:?}",
        r.code,
        r.stdout,
        r.stderr
    );
    Ok(())
}

fn assert_reset(outside: &str, family: &str) -> Result<()> {
    let r = curl(outside, family, "http")?;
    ensure!(
        r.code == Some(56) && r.stderr.contains("Recv failure: Connection reset by peer"),
        "curl {family} expected exit 56 `Connection reset by peer`, got exit {:?} stdout {:?} stderr {:?}",
        r.code,
        r.stdout,
        r.stderr
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// Issue 3 steps 1, 2, 3, 6 and 7, on IPv4 and IPv6.
#[test]
fn strict_resets_plaintext_in_the_kernel() -> Result<()> {
    if !is_root() {
        skip_not_root("strict_resets_plaintext_in_the_kernel");
        return Ok(());
    }
    let logs = tempfile::tempdir()?;
    // Declared in teardown order reversed: daemon, then app, then pins, then namespaces.
    let topo = Topology::create("strict")?;
    // Software checksums end to end: the resets must carry correct ones to be accepted.
    topo.checksum_offload_off()?;
    let kernel = KernelPath::new(&topo.server)?;
    let app = HelloApp::start(&topo.server)?;
    let out = topo.outside.as_str();

    // 1. No PeerAuthentication: Istio's default PERMISSIVE, plaintext passes.
    let mut daemon = kernel.start_daemon(logs.path(), "daemon-1")?;
    kernel.wait_mode("PERMISSIVE", Duration::from_secs(10))?;
    assert_hello(out, "-4")?;
    assert_hello(out, "-6")?;
    //    DISABLE: plaintext passes.
    kernel.set_peer_auth(Some("DISABLE"))?;
    kernel.wait_mode("DISABLE", Duration::from_secs(2))?;
    assert_hello(out, "-4")?;
    assert_hello(out, "-6")?;
    let ids = kernel.status()?.program_ids();
    ensure!(ids.contains("strict="), "no program ids in status: {ids}");

    // 2. Mesh-wide STRICT: the kernel resets plaintext; the switch is maps-only and fast.
    kernel.set_peer_auth(Some("STRICT"))?;
    let took = kernel.wait_mode("STRICT", Duration::from_secs(2))?;
    ensure!(
        took < Duration::from_secs(1),
        "STRICT took {took:?} to apply"
    );
    let before = kernel.status()?;
    let read_before = app.bytes_read();
    assert_reset(out, "-4")?;
    assert_reset(out, "-6")?;

    // 3. The reset came from the kernel, and the app read nothing.
    let after = kernel.status()?;
    ensure!(
        after.port80("reset") >= before.port80("reset") + 2,
        "kernel reset counter did not rise by 2:\n{}\n{}",
        before.0,
        after.0
    );
    ensure!(
        app.bytes_read() == read_before,
        "the app read {} bytes of plaintext under STRICT",
        app.bytes_read() - read_before
    );
    ensure!(
        after.program_ids() == ids,
        "programs were reloaded by a mode change: {ids} → {}",
        after.program_ids()
    );
    eprintln!("counters after the STRICT resets:\n{}", after.0);
    for ns in [&topo.server, &topo.outside] {
        let bad = Topology::nstat(ns, "TcpInCsumErrors")?;
        ensure!(
            bad == 0,
            "{bad} TCP checksum errors in {ns}: a reset carried a bad checksum"
        );
        let resets = Topology::nstat(ns, "TcpEstabResets")?;
        ensure!(
            resets >= 2,
            "TcpEstabResets {resets} in {ns}: both sockets must be torn down"
        );
    }

    // 7. Flip back and forth while the daemon runs: within a second, no reload.
    kernel.set_peer_auth(Some("PERMISSIVE"))?;
    let took = kernel.wait_mode("PERMISSIVE", Duration::from_secs(2))?;
    ensure!(
        took < Duration::from_secs(1),
        "PERMISSIVE took {took:?} to apply"
    );
    assert_hello(out, "-4")?;
    kernel.set_peer_auth(Some("STRICT"))?;
    kernel.wait_mode("STRICT", Duration::from_secs(2))?;
    assert_reset(out, "-4")?;

    // 6. kill -9: the pins keep enforcing.
    let killed = run(Command::new("kill").args(["-9", &daemon.pid().to_string()]))?;
    ensure!(killed.status.success(), "kill -9 failed");
    for _ in 0..100 {
        if daemon.try_wait().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(daemon.try_wait().is_some(), "the daemon survived kill -9");
    let read_before = app.bytes_read();
    assert_reset(out, "-4")?;
    assert_reset(out, "-6")?;
    ensure!(
        app.bytes_read() == read_before,
        "the app read plaintext after kill -9"
    );
    ensure!(
        kernel.pin_dir.join("links").exists(),
        "pins vanished with the daemon"
    );

    //    A restart adopts the pinned programs (same ids) and follows the config again;
    //    a change made while it was down is applied on start.
    kernel.set_peer_auth(Some("DISABLE"))?;
    let daemon2 = kernel.start_daemon(logs.path(), "daemon-2")?;
    kernel.wait_mode("DISABLE", Duration::from_secs(10))?;
    ensure!(
        kernel.status()?.program_ids() == ids,
        "restart reloaded the programs instead of adopting them"
    );
    ensure!(
        daemon2.log().contains("adopted pinned"),
        "restart did not report adoption: {}",
        daemon2.log()
    );
    assert_hello(out, "-6")?;
    kernel.set_peer_auth(Some("STRICT"))?;
    kernel.wait_mode("STRICT", Duration::from_secs(2))?;
    assert_reset(out, "-6")?;
    drop(daemon2);
    drop(daemon);

    // uninstall: every link, program and map pin goes; enforcement ends.
    let report = kernel.uninstall()?;
    ensure!(report.contains("2 links detached"), "uninstall: {report}");
    ensure!(
        !kernel.pin_dir.exists(),
        "{} still exists",
        kernel.pin_dir.display()
    );
    assert_hello(out, "-4")?;
    assert_hello(out, "-6")?;
    drop(app);
    Ok(())
}

/// Under STRICT a TLS ClientHello is not reset: it reaches the listener untouched.
#[test]
fn strict_lets_tls_handshakes_through() -> Result<()> {
    if !is_root() {
        skip_not_root("strict_lets_tls_handshakes_through");
        return Ok(());
    }
    let logs = tempfile::tempdir()?;
    let topo = Topology::create("tls")?;
    let kernel = KernelPath::new(&topo.server)?;
    let app = HelloApp::start(&topo.server)?;
    kernel.set_peer_auth(Some("STRICT"))?;
    let _daemon = kernel.start_daemon(logs.path(), "daemon")?;
    kernel.wait_mode("STRICT", Duration::from_secs(10))?;

    for family in ["-4", "-6"] {
        let before = kernel.status()?;
        let r = curl(&topo.outside, family, "https")?;
        // The app is plaintext, so the handshake fails — but not with a reset.
        ensure!(
            r.code != Some(56) && r.code != Some(0),
            "curl https {family}: exit {:?} {}",
            r.code,
            r.stderr
        );
        let after = kernel.status()?;
        ensure!(
            after.port80("passed") > before.port80("passed"),
            "the ClientHello was not counted as passed:\n{}",
            after.0
        );
        ensure!(
            after.port80("reset") == before.port80("reset"),
            "TLS was reset"
        );
    }
    let firsts = app
        .stats
        .first_bytes
        .lock()
        .map(|f| f.clone())
        .unwrap_or_default();
    ensure!(
        firsts.iter().filter(|b| b.first() == Some(&0x16)).count() >= 2,
        "the app did not receive the ClientHellos: {firsts:?}"
    );
    ensure!(app.stats.read_resets.load(Ordering::SeqCst) == 0);
    Ok(())
}
