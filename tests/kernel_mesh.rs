//! Issue 3 steps 4 and 5: the kernel steers a workload port to the rustls terminator. A mesh
//! client with a SPIFFE certificate is terminated, authorized and reaches the app; under
//! STRICT plaintext is reset by the kernel; under PERMISSIVE plaintext is steered to the
//! terminator too and served without a principal. One `portcullis run` drives both halves
//! from one configuration, and a PeerAuthentication edit switches them together.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use e2e::hello::HelloApp;
use e2e::netns::{Topology, SERVER_IF};
use e2e::process::{run, Daemon};
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
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: hello}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {paths: [/admin*]}}]
";

fn peer_auth(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
    )
}

/// The pins of this test, removed (with every link) when it ends.
struct Pins {
    bin: PathBuf,
    ns: String,
    dir: PathBuf,
}

impl Pins {
    fn kernel(&self, args: &[&str]) -> Result<String> {
        let out = run(Topology::nsenter(&self.ns, &self.bin)
            .arg("kernel")
            .args(args)
            .arg("--pin-dir")
            .arg(&self.dir))?;
        ensure!(
            out.status.success(),
            "kernel {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A number from `kernel status`'s `port 80:` counters line.
    fn port80(&self, key: &str) -> Result<u64> {
        let status = self.kernel(&["status"])?;
        status
            .lines()
            .find(|l| l.trim_start().starts_with("port 80: steered="))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            })
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} for port 80 in:\n{status}"))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.kernel(&["uninstall"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Curl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn curl(outside: &str, certs: Option<&Path>, family: &str, path: &str) -> Result<Curl> {
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
            format!("https://server:80{path}")
        }
        None => format!("http://server:80{path}"),
    };
    let out = run(cmd.arg(url))?;
    Ok(Curl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn expect_hello(r: &Curl, what: &str) -> Result<()> {
    ensure!(
        r.code == Some(0) && r.stdout == "Hello World!",
        "{what}: expected Hello World!, got exit {:?} stdout {:?} stderr {:?}",
        r.code,
        r.stdout,
        r.stderr
    );
    Ok(())
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..500 {
        if ok()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what}: not within {timeout:?}")
}

#[test]
fn mesh_clients_are_steered_to_the_terminator_and_plaintext_follows_peer_authentication(
) -> Result<()> {
    if !is_root() {
        skip_not_root(
            "mesh_clients_are_steered_to_the_terminator_and_plaintext_follows_peer_authentication",
        );
        return Ok(());
    }
    let bin = portcullis_bin()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let topo = Topology::create("mesh")?;
    let app = HelloApp::start(&topo.server)?;

    // The server workload's identity and the mesh CA, made by our own CA code; the client is
    // spiffe://cluster.local/ns/default/sa/sleep.
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
    let set_mode = |mode: &str| -> Result<()> {
        let tmp = config.join(".pa.tmp");
        std::fs::write(&tmp, peer_auth(mode))?;
        std::fs::rename(&tmp, config.join("peer-auth.yaml"))?;
        Ok(())
    };
    set_mode("STRICT")?;

    let pins = Pins {
        bin: bin.clone(),
        ns: topo.server.clone(),
        dir: PathBuf::from(format!(
            "/sys/fs/bpf/portcullis-mesh-{}",
            std::process::id()
        )),
    };
    let mut cmd = Topology::nsenter(&topo.server, &bin);
    cmd.arg("run")
        .arg("-c")
        .arg(&config)
        .arg("--credentials")
        .arg(&certs)
        .args([
            "--mesh-credential",
            "server",
            "--iface",
            SERVER_IF,
            "--admin",
            "127.0.0.1:15000",
            "--reload-ms",
            "100",
            "--kernel-log",
        ])
        .env_remove("RUST_LOG")
        .arg("--pin-dir")
        .arg(&pins.dir);
    let mut daemon = Daemon::spawn("portcullis-mesh", cmd, dir)?;
    wait_for("the terminator starts", Duration::from_secs(20), || {
        Ok(daemon.log().contains("mesh terminator listening"))
    })
    .with_context(|| daemon.log())?;

    // STRICT: mTLS clients are steered, terminated, authorized and reach the app.
    for family in ["-4", "-6"] {
        expect_hello(
            &curl(&topo.outside, Some(&certs), family, "/")?,
            &format!("mTLS {family}"),
        )
        .with_context(|| daemon.log())?;
    }
    ensure!(
        pins.port80("steered")? >= 2,
        "the kernel steered the mTLS connections"
    );
    let log = daemon.log();
    ensure!(
        log.contains("principal=cluster.local/ns/default/sa/sleep"),
        "the terminator names the client principal:\n{log}"
    );
    let denied = curl(&topo.outside, Some(&certs), "-4", "/admin/x")?;
    ensure!(
        denied.code == Some(0) && denied.stdout == "RBAC: access denied",
        "AuthorizationPolicy applies on the mesh path: {:?} {:?}",
        denied.stdout,
        denied.stderr
    );

    // STRICT: plaintext is reset in the kernel; the app reads nothing.
    let read_before = app.bytes_read();
    for family in ["-4", "-6"] {
        let r = curl(&topo.outside, None, family, "/")?;
        ensure!(
            r.code == Some(56) && r.stderr.contains("Connection reset by peer"),
            "plaintext {family} under STRICT: exit {:?} {:?}",
            r.code,
            r.stderr
        );
    }
    ensure!(
        app.bytes_read() == read_before,
        "the app read plaintext under STRICT"
    );
    ensure!(pins.port80("reset")? >= 2, "the kernel counted the resets");
    // --kernel-log: the strict program's own line about it reaches the daemon's log.
    wait_for("the kernel's log line", Duration::from_secs(5), || {
        Ok(daemon.log().contains("strict: port 80 plaintext reset"))
    })
    .with_context(|| daemon.log())?;
    // The daemon's own view: the kernel attached and counting, and the terminator served no
    // plaintext (it accepted the steered handshakes, then saw only the resets).
    let out = run(Topology::exec(&topo.server, "curl").args([
        "-sS",
        "-m",
        "5",
        "http://127.0.0.1:15000/kernel",
    ]))?;
    let kernel = String::from_utf8_lossy(&out.stdout);
    eprintln!("/kernel after STRICT plaintext:\n{kernel}");
    ensure!(kernel.contains(r#""attached": true"#), "{kernel}");
    ensure!(
        kernel.contains(r#""inbound_plaintext": 0"#),
        "the terminator served plaintext under STRICT: {kernel}"
    );
    ensure!(
        kernel.contains(r#""inbound_tls": 3"#),
        "three mTLS connections so far: {kernel}"
    );
    let out = run(Topology::exec(&topo.server, "curl").args([
        "-sS",
        "-m",
        "5",
        "http://127.0.0.1:15000/stats/prometheus",
    ]))?;
    let metrics = String::from_utf8_lossy(&out.stdout);
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_kernel_connections_total{")
                && l.contains(r#"verdict="reset""#)
                && l.contains(r#"port="80""#)
                && !l.ends_with(" 0")),
        "the kernel's resets are in the metrics:\n{metrics}"
    );

    // PERMISSIVE: the edit reaches the kernel and the terminator together; plaintext is
    // steered to the terminator and served with no principal, mTLS still works.
    set_mode("PERMISSIVE")?;
    let took = wait_for("PERMISSIVE in the kernel", Duration::from_secs(5), || {
        Ok(pins
            .kernel(&["status"])?
            .lines()
            .any(|l| l.trim().starts_with("port 80: PERMISSIVE")))
    })?;
    eprintln!("mode switch reached the kernel in {took:?}");
    let steered_before = pins.port80("steered")?;
    for family in ["-4", "-6"] {
        wait_for(
            &format!("plaintext {family} under PERMISSIVE"),
            Duration::from_secs(5),
            || Ok(curl(&topo.outside, None, family, "/")?.stdout == "Hello World!"),
        )?;
        expect_hello(
            &curl(&topo.outside, Some(&certs), family, "/")?,
            &format!("mTLS {family} under PERMISSIVE"),
        )?;
    }
    ensure!(
        pins.port80("steered")? >= steered_before + 4,
        "PERMISSIVE traffic is steered to the terminator"
    );
    ensure!(
        daemon.log().lines().any(|l| l.contains("access http")
            && l.contains("principal=-")
            && l.contains("path=/ ")),
        "the terminator served plaintext without a principal:\n{}",
        daemon.log()
    );

    // Fail closed: back to STRICT, then the daemon dies. The terminator's socket is gone, so
    // the pinned steering program refuses new connections to the STRICT port (the SYN finds
    // no socket and is answered with a RST) instead of handing them to the app: no client,
    // plaintext or not, reaches the app unjudged, and none takes a slot in its accept queue.
    set_mode("STRICT")?;
    wait_for("STRICT in the kernel", Duration::from_secs(5), || {
        Ok(pins
            .kernel(&["status"])?
            .lines()
            .any(|l| l.trim().starts_with("port 80: STRICT")))
    })?;
    daemon.kill();
    let read_before = app.bytes_read();
    let accepted_before = app.stats.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let reset_before = pins.port80("reset")?;
    for family in ["-4", "-6"] {
        let r = curl(&topo.outside, None, family, "/")?;
        ensure!(
            r.code == Some(7),
            "plaintext {family} after the daemon died is refused: exit {:?} {:?}",
            r.code,
            r.stderr
        );
    }
    ensure!(
        app.bytes_read() == read_before
            && app.stats.accepted.load(std::sync::atomic::Ordering::SeqCst) == accepted_before,
        "the app accepted or read something after the daemon died"
    );
    ensure!(
        pins.port80("reset")? >= reset_before + 2,
        "the refusals are counted as resets"
    );
    Ok(())
}
