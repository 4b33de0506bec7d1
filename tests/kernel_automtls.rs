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

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::chromium;
use e2e::mesh::TwoNodes;
use e2e::netns::{Topology, SERVER_IF};
use e2e::process::run;
use e2e::prometheus::Prometheus;
use e2e::{is_root, skip_not_root};

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
    let mut mesh = TwoNodes::create(
        "auto",
        false,
        // On the veth address, so the Prometheus on the client node scrapes both.
        ("10.231.0.1:15000", &["--iface", SERVER_IF]),
        ("127.0.0.1:15000", &[]),
    )?;
    mesh.server.start()?;
    // What a Kiali pointed at the mesh's Prometheus reads; it runs on the client node and
    // scrapes both daemons (the server's admin listens on its veth address for that).
    let prometheus = Prometheus::start_in(
        Some(&mesh.topo.outside),
        &["127.0.0.1:15000", "10.231.0.1:15000"],
        mesh.dir(),
    )?;
    mesh.client
        .add_args(&["--prometheus", &format!("http://{}", prometheus.api)]);
    mesh.client.start()?;
    let (topo, app) = (&mesh.topo, &mesh.app);

    // The sleep workload's plaintext request: captured, upgraded, verified, answered.
    let (code, body, err) = mesh.curl(true, "http://10.231.0.1:80/", Duration::from_secs(5))?;
    ensure!(
        code == Some(0) && body == "Hello World!",
        "captured request: exit {code:?} body {body:?} stderr {err:?}\nclient log:\n{}\nserver log:\n{}",
        mesh.client.log(),
        mesh.server.log()
    );
    // A process outside the workload's cgroup is not captured: STRICT resets its plaintext.
    let read_before = app.bytes_read();
    let (code, _, err) = mesh.curl(false, "http://10.231.0.1:80/", Duration::from_secs(5))?;
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
    // Asked as a rate, as the graph asks: a rate needs two scrapes of the series, one is
    // not enough for the page to draw the edge.
    for reporter in ["source", "destination"] {
        prometheus.query_until(
            &format!(
                "sum by (reporter, connection_security_policy) (rate(istio_requests_total{{reporter=\"{reporter}\",source_workload=\"sleep\",destination_workload=\"hello\"}}[1m]))"
            ),
            r#""connection_security_policy":"mutual_tls""#,
        )?;
    }
    // The mesh graph page of the client node, reading that Prometheus, draws the lock on the
    // sleep -> hello edge.
    let graph = "http://127.0.0.1:15000/graph";
    let dom = chromium::dump_dom_in(Some(&topo.outside), graph, mesh.dir())?;
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
    chromium::screenshot_in(Some(&topo.outside), graph, &png, (1200, 800), mesh.dir())?;
    eprintln!("mesh graph screenshot: {}", png.display());
    Ok(())
}
