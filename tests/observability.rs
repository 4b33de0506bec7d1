//! Observability end to end: the ingress walkthrough's requests through the real binary, then
//! the admin listener scraped with real curl — Istio's standard metrics with the
//! `mutual_tls` label Kiali draws its lock from, health, a config dump without keys — plus
//! the JSON access log and `portcullis explain` on the same configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use e2e::certs::make_openssl_certs;
use e2e::process::{run, Daemon};
use e2e::prometheus::Prometheus;
use e2e::walkthrough::{
    curl, port_offset, routing, write_credential_dir, Walkthrough, WALKTHROUGH,
};
use e2e::{free_port, portcullis_bin, wait_for_port};

/// The samples of one metric in a Prometheus text exposition: labels and value.
fn samples(exposition: &str, metric: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.rsplit_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        // Values are ours (no `",` inside), so splitting on `",` is exact enough.
        let map = labels
            .split("\",")
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
            .collect();
        out.push((map, value));
    }
    out
}

/// The value of the one sample of `metric` whose labels include `want`; fails when there
/// is not exactly one.
fn value(exposition: &str, metric: &str, want: &[(&str, &str)]) -> Result<f64> {
    let matching: Vec<f64> = samples(exposition, metric)
        .into_iter()
        .filter(|(labels, _)| {
            want.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .collect();
    match matching.as_slice() {
        [v] => Ok(*v),
        _ => bail!(
            "{} samples of {metric} with {want:?} (want 1):\n{exposition}",
            matching.len()
        ),
    }
}

#[test]
fn walkthrough_metrics_health_config_dump_access_log_and_explain() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let certs_dir = dir.join("certs");
    std::fs::create_dir_all(&certs_dir)?;
    let certs = make_openssl_certs(&certs_dir)?;

    let backend_port = free_port()?;
    let backend_addr = format!("127.0.0.1:{backend_port}");
    let mut cmd = Command::new(portcullis_bin()?);
    cmd.args(["httpbin", "--listen", &backend_addr]);
    let _backend = Daemon::spawn("httpbin", cmd, dir)?;
    wait_for_port(backend_addr.parse()?, Duration::from_secs(20))?;

    let config = dir.join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::write(config.join("gateway.yaml"), WALKTHROUGH)?;
    std::fs::write(config.join("routing.yaml"), routing(backend_port))?;
    let creds = dir.join("credentials");
    write_credential_dir(&certs, &creds)?;

    let offset = port_offset()?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let access_log = dir.join("access.log");
    let mut cmd = Command::new(portcullis_bin()?);
    cmd.arg("run")
        .arg("-c")
        .arg(&config)
        .arg("--credentials")
        .arg(&creds)
        .args(["--bind", "127.0.0.1", "--port-offset", &offset.to_string()])
        .args(["--admin", &admin])
        .arg("--access-log")
        .arg(&access_log)
        .args(["--access-log-format", "json"]);
    let gateway = Daemon::spawn("portcullis", cmd, dir)?;
    let https_port = 443 + offset;
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], https_port)),
        Duration::from_secs(20),
    )
    .with_context(|| format!("gateway did not start:\n{}", gateway.log()))?;

    let (code, body) = curl(&format!("http://{admin}/healthz/ready"), &[])?;
    assert_eq!(code, "200", "ready once the listeners are bound: {body}");
    // Started now so it is up and scraping by the time the requests are done.
    let prometheus = Prometheus::start(&admin, dir)?;

    // The walkthrough's requests.
    let resolve = format!("test.com:{https_port}:127.0.0.1");
    let ca = certs.ca_cert();
    let (client_cert, client_key) = (certs.client_cert(), certs.client_key());
    let (server_cert, server_key) = (certs.server_cert(), certs.server_key());
    let https = |path: &str, identity: Option<(&Path, &Path)>| -> Result<String> {
        let mut args: Vec<&str> = vec!["--resolve", &resolve, "--cacert"];
        args.push(ca.to_str().context("ca path")?);
        if let Some((c, k)) = identity {
            args.extend([
                "--cert",
                c.to_str().context("cert path")?,
                "--key",
                k.to_str().context("key path")?,
            ]);
        }
        let (code, _) = curl(&format!("https://test.com:{https_port}{path}"), &args)?;
        Ok(code)
    };
    let client = Some((client_cert.as_path(), client_key.as_path()));
    let server_id = Some((server_cert.as_path(), server_key.as_path()));
    assert_eq!(
        https("/status/200", None)?,
        "000",
        "no client cert: no HTTP"
    );
    assert_eq!(https("/status/200", client)?, "200");
    assert_eq!(https("/status/418", client)?, "403");
    assert_eq!(https("/status/418", server_id)?, "418");
    let (code, _) = curl(&format!("http://127.0.0.1:{}/status/200", 80 + offset), &[])?;
    assert_eq!(code, "200");

    let (code, metrics) = curl(&format!("http://{admin}/stats/prometheus"), &[])?;
    assert_eq!(code, "200", "{metrics}");
    let requests = "istio_requests_total";
    let mesh = [
        ("reporter", "destination"),
        ("destination_service", "httpbin.default.svc.cluster.local"),
        ("destination_service_name", "httpbin"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        mesh.iter().chain(extra).copied().collect()
    };
    // The lock: the denied and the allowed request of test.client, both over mutual TLS.
    for code in ["403", "200"] {
        let labels = with(&[
            ("connection_security_policy", "mutual_tls"),
            ("response_code", code),
            ("source_principal", "spiffe://test.client"),
            ("response_flags", "-"),
        ]);
        assert_eq!(value(&metrics, requests, &labels)?, 1.0, "{code}");
        assert_eq!(
            value(
                &metrics,
                "istio_request_duration_milliseconds_count",
                &labels
            )?,
            1.0
        );
    }
    // A verified certificate without a SPIFFE id is still mutual TLS, from an unknown
    // principal; plain HTTP is not.
    let teapot = with(&[
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "418"),
        ("source_principal", "unknown"),
    ]);
    assert_eq!(value(&metrics, requests, &teapot)?, 1.0);
    let plain = with(&[
        ("connection_security_policy", "none"),
        ("response_code", "200"),
        ("source_principal", "unknown"),
    ]);
    assert_eq!(value(&metrics, requests, &plain)?, 1.0);
    let total: f64 = samples(&metrics, requests).iter().map(|(_, v)| v).sum();
    assert_eq!(total, 4.0, "four HTTP requests reached the gateway");

    assert_eq!(
        value(
            &metrics,
            "portcullis_authz_denied_total",
            &[("policy", "istio-system/test")]
        )?,
        1.0
    );
    assert_eq!(
        value(
            &metrics,
            "portcullis_tls_handshake_failures_total",
            &[("reason", "no_client_cert")]
        )?,
        1.0
    );
    let expiry = value(
        &metrics,
        "portcullis_certificate_expiry_seconds",
        &[("credential", "test.com")],
    )?;
    assert!(
        expiry > 86_400.0,
        "the test certificate is valid for days: {expiry}"
    );
    // Bounded cardinality: no label carries a path or a peer address.
    for (labels, _) in samples(&metrics, requests) {
        assert!(
            labels
                .values()
                .all(|v| !v.contains("/status") && !v.contains("127.0.0.1")),
            "{labels:?}"
        );
    }

    let (code, dump) = curl(&format!("http://{admin}/config_dump"), &[])?;
    assert_eq!(code, "200");
    assert!(
        !dump.contains("PRIVATE KEY") && !dump.contains("BEGIN"),
        "{dump}"
    );
    for want in [
        "\"tls_mode\": \"MUTUAL\"",
        "\"credential_name\": \"test.com\"",
        "httpbin.default.svc.cluster.local",
        "\"action\": \"DENY\"",
    ] {
        assert!(
            dump.contains(want),
            "{want} missing from the config dump:\n{dump}"
        );
    }
    // No kernel programs in this run (no --mesh-credential): /kernel says so and still shows
    // the terminator's counters.
    let (code, kernel) = curl(&format!("http://{admin}/kernel"), &[])?;
    assert_eq!(code, "200");
    assert!(
        kernel.contains(r#""attached": false"#) && kernel.contains(r#""inbound_accepted": 0"#),
        "{kernel}"
    );

    // The JSON access log: one line per request, with identity and decision.
    let log = std::fs::read_to_string(&access_log)?;
    assert_eq!(log.lines().count(), 4, "{log}");
    let denied = log
        .lines()
        .find(|l| l.contains("\"status\":403"))
        .with_context(|| format!("no 403 line:\n{log}"))?;
    for want in [
        "\"principal\":\"test.client\"",
        "\"authz\":\"DENY by istio-system/test rule 0\"",
        "\"policy\":\"istio-system/test\"",
        "\"path\":\"/status/418\"",
        "\"sni\":\"test.com\"",
        "\"time\":\"",
    ] {
        assert!(denied.contains(want), "{want} missing: {denied}");
    }

    // A real Prometheus scraped the same numbers: the PromQL Kiali's lock rests on.
    let result = prometheus.query_until(
        r#"istio_requests_total{connection_security_policy="mutual_tls",response_code="403"}"#,
        r#","1"]"#,
    )?;
    assert!(
        result.contains(r#""source_principal":"spiffe://test.client""#),
        "{result}"
    );
    prometheus.query_until(
        r#"sum(istio_requests_total{reporter="destination",response_code="200"})"#,
        r#","2"]"#,
    )?;
    prometheus.query_until(
        r#"sum(istio_requests_total{connection_security_policy="mutual_tls",response_code="200"})"#,
        r#","1"]"#,
    )?;

    // explain on the same files agrees with what the daemon did.
    let explain = |path: &str| -> Result<(i32, String)> {
        let out = run(Command::new(portcullis_bin()?)
            .arg("explain")
            .arg("-c")
            .arg(&config)
            .arg("--credentials")
            .arg(&creds)
            .args(["--principal", "spiffe://test.client", "--host", "test.com"])
            .args(["--path", path]))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    let (code, out) = explain("/status/418")?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("DENY\n  decided by: DENY policy istio-system/test, rule 0\n"),
        "{out}"
    );
    let (code, out) = explain("/status/200")?;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ALLOW\n"), "{out}");
    Ok(())
}

/// A busy admin port stops `portcullis run` at startup with a message that says so.
/// A request the client abandons while the upstream works on it (HTTP/1.1: the connection
/// closed; HTTP/2: its stream reset) was served with no access-log line and no metric (attack
/// review): the handler is dropped mid-flight. It is logged and counted now, with status 0 and
/// Envoy's flag `DC`, naming the decision and the upstream it went to.
#[test]
fn requests_the_client_abandons_are_still_logged_and_counted() -> Result<()> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let w = Walkthrough::prepare(dir.path())?;
    let admin = format!("127.0.0.1:{}", e2e::free_port()?);
    let gw = w.start_gateway(&["--admin", &admin])?;
    let mut h1 = std::net::TcpStream::connect(("127.0.0.1", gw.http_port))?;
    h1.write_all(b"GET /delay/2?abandoned=h1 HTTP/1.1\r\nHost: test.com\r\n\r\n")?;
    std::thread::sleep(Duration::from_millis(500));
    drop(h1);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/h2c_header.py");
    let out = e2e::process::run(std::process::Command::new("python3").arg(&script).args([
        &gw.http_port.to_string(),
        "/delay/2?abandoned=h2",
        "x-test",
        "1",
        "0.5",
    ]))?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "abandoned",
        "{out:?}"
    );
    let start = std::time::Instant::now();
    let lines = loop {
        let log = gw.daemon.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("abandoned=h"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= 2 || start.elapsed() > Duration::from_secs(10) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        lines.len(),
        2,
        "one line per abandoned request:\n{}",
        gw.daemon.log()
    );
    for line in &lines {
        for want in [
            "status=0",
            "response_flags=DC",
            "upstream=127.0.0.1:",
            "authz=\"ALLOW",
        ] {
            assert!(line.contains(want), "{want} missing: {line}");
        }
    }
    let (_, exposition) = curl(&format!("http://{admin}/stats/prometheus"), &[])?;
    assert_eq!(
        value(
            &exposition,
            "istio_requests_total",
            &[("response_code", "0"), ("response_flags", "DC")]
        )?,
        2.0,
        "{exposition}"
    );
    Ok(())
}

#[test]
fn a_busy_admin_port_is_a_startup_error() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let busy = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = busy.local_addr()?;
    // The walkthrough without its MUTUAL server, so no credentials are needed.
    let yaml = format!("{WALKTHROUGH}---\n{}", routing(1)).replace(
        "  - hosts: [test.com]\n    port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: MUTUAL, credentialName: test.com}\n",
        "",
    );
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, yaml)?;
    let out = run(Command::new(portcullis_bin()?)
        .arg("run")
        .arg("-c")
        .arg(&file)
        .args([
            "--bind",
            "127.0.0.1",
            "--port-offset",
            &port_offset()?.to_string(),
        ])
        .args(["--admin", &addr.to_string()]))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on the admin address {addr}")),
        "{stderr}"
    );
    Ok(())
}
