//! Auto mTLS between two workloads, with the kernel doing the capture and the rejection: the
//! brief's second workflow end to end, in network namespaces made here.
//!
//! `server` runs the app (`Hello World!` on :80) behind the terminator with mesh-wide STRICT;
//! `outside` is the client node: its `sleep` workload (a cgroup) makes a *plaintext* request to
//! `http://10.231.0.1:80/`, which the kernel redirects to the node's originator, which upgrades it
//! to mutual TLS, checks the server is `spiffe://cluster.local/ns/default/sa/hello` (secure
//! naming) and gets `Hello World!`. A process outside the workload's cgroup still gets the
//! kernel's reset. Both daemons report `istio_requests_total` as `mutual_tls`, from the source
//! and from the destination.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use e2e::chromium;
use e2e::hello::HelloApp;
use e2e::netns::{Topology, SERVER_IF};
use e2e::process::{run, Daemon};
use e2e::prometheus::Prometheus;
use e2e::{is_root, portcullis_bin, skip_not_root};

/// Both nodes' view of the mesh: two workloads and mesh-wide STRICT.
const MESH: &str = "\
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
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A pin directory, uninstalled (links detached, pins removed) at the end.
struct Pins {
    bin: PathBuf,
    ns: String,
    dir: PathBuf,
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

fn wait_for_log(daemon: &Daemon, needle: &str) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if daemon.log().contains(needle) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{needle:?} never appeared:\n{}", daemon.log())
}

/// Runs `curl` in `ns`, inside `cgroup` when given (the workload's own process).
fn curl(ns: &str, cgroup: Option<&Path>, url: &str) -> Result<(Option<i32>, String, String)> {
    let script = match cgroup {
        Some(cg) => format!(
            "echo $$ > {}/cgroup.procs && exec curl -sS -m 5 {url}",
            cg.display()
        ),
        None => format!("exec curl -sS -m 5 {url}"),
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

fn metrics(ns: &str, admin: &str) -> Result<String> {
    let out = run(Topology::exec(ns, "curl").args([
        "-sS",
        "-m",
        "5",
        &format!("http://{admin}/stats/prometheus"),
    ]))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn request_line<'a>(metrics: &'a str, reporter: &str) -> Option<&'a str> {
    metrics.lines().find(|l| {
        l.starts_with("istio_requests_total{")
            && l.contains(&format!("reporter=\"{reporter}\""))
            && l.contains("response_code=\"200\"")
    })
}

#[test]
fn a_plaintext_client_is_upgraded_to_mutual_tls_by_its_node() -> Result<()> {
    if !is_root() {
        skip_not_root("a_plaintext_client_is_upgraded_to_mutual_tls_by_its_node");
        return Ok(());
    }
    let bin = portcullis_bin()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let topo = Topology::create("auto")?;
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

    let cgroup = Cgroup(PathBuf::from(format!(
        "/sys/fs/cgroup/unified/portcullis-e2e-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&cgroup.0).context("creating the client workload's cgroup")?;
    let pid = std::process::id();
    let server_pins = Pins {
        bin: bin.clone(),
        ns: topo.server.clone(),
        dir: format!("/sys/fs/bpf/portcullis-auto-s-{pid}").into(),
    };
    let client_pins = Pins {
        bin: bin.clone(),
        ns: topo.outside.clone(),
        dir: format!("/sys/fs/bpf/portcullis-auto-c-{pid}").into(),
    };

    let daemon = |name: &str,
                  ns: &str,
                  workload: &str,
                  admin: &str,
                  pins: &Path,
                  extra: &[&str]|
     -> Result<Daemon> {
        let mut cmd = Topology::nsenter(ns, &bin);
        cmd.arg("run")
            .arg("-c")
            .arg(&config)
            .arg("--credentials")
            .arg(&certs)
            .args([
                "--mesh-credential",
                workload,
                "--workload",
                workload,
                "--admin",
                admin,
            ])
            .arg("--pin-dir")
            .arg(pins)
            .args(extra);
        Daemon::spawn(name, cmd, dir)
    };
    let server = daemon(
        "server",
        &topo.server,
        "hello",
        // On the veth address, so the Prometheus on the client node scrapes both.
        "10.231.0.1:15000",
        &server_pins.dir,
        &["--iface", SERVER_IF],
    )?;
    wait_for_log(&server, "mesh terminator listening")?;
    // What a Kiali pointed at the mesh's Prometheus reads; it runs on the client node and
    // scrapes both daemons (the server's admin listens on its veth address for that).
    let prometheus = Prometheus::start_in(
        Some(&topo.outside),
        &["127.0.0.1:15000", "10.231.0.1:15000"],
        dir,
    )?;
    let prometheus_url = format!("http://{}", prometheus.api);
    let cg = cgroup.0.to_str().context("cgroup path")?;
    let client = daemon(
        "client",
        &topo.outside,
        "sleep",
        "127.0.0.1:15000",
        &client_pins.dir,
        &["--capture-cgroup", cg, "--prometheus", &prometheus_url],
    )?;
    wait_for_log(&client, "outbound capture")?;

    // The sleep workload's plaintext request: captured, upgraded, verified, answered.
    let (code, body, err) = curl(&topo.outside, Some(&cgroup.0), "http://10.231.0.1:80/")?;
    ensure!(
        code == Some(0) && body == "Hello World!",
        "captured request: exit {code:?} body {body:?} stderr {err:?}\nclient log:\n{}\nserver log:\n{}",
        client.log(),
        server.log()
    );
    // A process outside the workload's cgroup is not captured: STRICT resets its plaintext.
    let read_before = app.bytes_read();
    let (code, _, err) = curl(&topo.outside, None, "http://10.231.0.1:80/")?;
    ensure!(
        code == Some(56) && err.contains("Connection reset by peer"),
        "uncaptured plaintext: {code:?} {err}"
    );
    ensure!(
        app.bytes_read() == read_before,
        "the app read the uncaptured plaintext"
    );

    // Both sides report the request as mutual TLS between the two workloads.
    let client_metrics = metrics(&topo.outside, "127.0.0.1:15000")?;
    let line = request_line(&client_metrics, "source")
        .with_context(|| format!("no source report:\n{client_metrics}"))?;
    eprintln!("client node reports: {line}");
    for want in [
        r#"source_workload="sleep""#,
        r#"source_principal="spiffe://cluster.local/ns/default/sa/sleep""#,
        r#"destination_workload="hello""#,
        r#"destination_principal="spiffe://cluster.local/ns/default/sa/hello""#,
        r#"destination_service="hello.default.svc.cluster.local""#,
        r#"connection_security_policy="mutual_tls""#,
    ] {
        ensure!(line.contains(want), "source report lacks {want}: {line}");
    }
    let server_metrics = metrics(&topo.server, "10.231.0.1:15000")?;
    let line = request_line(&server_metrics, "destination")
        .with_context(|| format!("no destination report:\n{server_metrics}"))?;
    for want in [
        r#"source_workload="sleep""#,
        r#"source_principal="spiffe://cluster.local/ns/default/sa/sleep""#,
        r#"destination_workload="hello""#,
        r#"connection_security_policy="mutual_tls""#,
    ] {
        ensure!(
            line.contains(want),
            "destination report lacks {want}: {line}"
        );
    }

    // The sleep -> hello edge reported by both ends, both mutual TLS: the lock in Kiali.
    for reporter in ["source", "destination"] {
        prometheus.query_until(
            &format!(
                "sum by (reporter, connection_security_policy) (istio_requests_total{{reporter=\"{reporter}\",source_workload=\"sleep\",destination_workload=\"hello\"}})"
            ),
            r#""connection_security_policy":"mutual_tls""#,
        )?;
    }
    // The mesh graph page of the client node, reading that Prometheus, draws the lock on the
    // sleep -> hello edge.
    let graph = "http://127.0.0.1:15000/graph";
    let dom = chromium::dump_dom_in(Some(&topo.outside), graph, dir)?;
    let edge = chromium::edges(&dom)
        .into_iter()
        .find(|e| {
            e.attr("data-source") == "sleep.default" && e.attr("data-target") == "hello.default"
        })
        .with_context(|| format!("no sleep -> hello edge on /graph:\n{dom}"))?;
    ensure!(
        edge.attr("data-security") == "mutual_tls",
        "edge security: {:?}",
        edge.attrs
    );
    ensure!(
        edge.inner.contains("lock closed"),
        "the edge carries a closed lock: {}",
        edge.inner
    );
    let png = e2e::target_dir().join("graph-mesh.png");
    chromium::screenshot_in(Some(&topo.outside), graph, &png, (1200, 800), dir)?;
    eprintln!("mesh graph screenshot: {}", png.display());
    drop((client, server));
    Ok(())
}
