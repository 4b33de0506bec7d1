//! The mesh graph page in a real browser: the ingress walkthrough's traffic (mutual TLS 200
//! and 403, plaintext HTTP) through `portcullis run`, then headless Chromium loads the admin
//! listener's `/graph`, once from the daemon's own metrics and once from a real Prometheus
//! scraping it, and the DOM must show a closed lock on the mutual-TLS edge into the gateway and
//! an open one on the plaintext edge. A screenshot is left in `target/graph.png`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use e2e::chromium;
use e2e::chromium::{attributes, edges, DomEdge};
use e2e::prometheus::Prometheus;
use e2e::walkthrough::{curl, Identity, Walkthrough};
use e2e::{free_port, target_dir};

const GATEWAY_NODE: &str = "portcullis.istio-system";

/// The one edge from the unknown clients into the gateway with `security`.
fn edge_into_gateway<'a>(all: &'a [DomEdge], security: &str, dom: &str) -> Result<&'a DomEdge> {
    let found: Vec<&DomEdge> = all
        .iter()
        .filter(|e| {
            e.attr("data-source") == "unknown"
                && e.attr("data-target") == GATEWAY_NODE
                && e.attr("data-security") == security
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        _ => bail!(
            "{} edges unknown -> {GATEWAY_NODE} with data-security={security:?} (want 1); edges: {all:#?}\nDOM:\n{dom}",
            found.len()
        ),
    }
}

/// The `<body>` start tag's attributes: the page marks its state and source there.
fn body_attrs(dom: &str) -> BTreeMap<String, String> {
    dom.find("<body")
        .and_then(|i| dom[i..].find('>').map(|j| &dom[i..i + j]))
        .map(attributes)
        .unwrap_or_default()
}

/// Loads `url` in Chromium and checks the two edges into the gateway: a closed lock on the
/// mutual-TLS one, an open lock on the plaintext one, and nothing else. Returns them.
fn check_page(url: &str, source: &str, scratch: &Path) -> Result<Vec<DomEdge>> {
    let dom = chromium::dump_dom(url, scratch)?;
    let body = body_attrs(&dom);
    assert_eq!(
        (
            body.get("data-state").map(String::as_str),
            body.get("data-graph-source").map(String::as_str)
        ),
        (Some("ready"), Some(source)),
        "{url}: the page did not render its data:\n{dom}"
    );
    let all = edges(&dom);
    assert_eq!(all.len(), 2, "{url}: {all:#?}\n{dom}");
    let locked = edge_into_gateway(&all, "mutual_tls", &dom)?;
    assert!(
        locked.inner.contains(r#"class="lock closed""#) && !locked.inner.contains("lock open"),
        "{url}: the mutual-TLS edge shows no closed lock: {locked:#?}"
    );
    let open = edge_into_gateway(&all, "none", &dom)?;
    assert!(
        open.inner.contains(r#"class="lock open""#) && !open.inner.contains("lock closed"),
        "{url}: the plaintext edge shows no open lock: {open:#?}"
    );
    assert!(
        dom.contains(&format!(r#"data-node="{GATEWAY_NODE}""#))
            && dom.contains(r#"data-node="unknown""#),
        "{url}: the gateway and unknown nodes are missing:\n{dom}"
    );
    Ok(all)
}

/// `png` is a PNG of `width`×`height` with more in it than a blank page.
fn check_png(png: &Path, (width, height): (u32, u32)) -> Result<()> {
    let bytes = std::fs::read(png).with_context(|| format!("reading {}", png.display()))?;
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    // IHDR: width and height, big-endian, right after the signature and the chunk header.
    let size = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    assert_eq!(
        (size(16), size(20)),
        (Some(width), Some(height)),
        "{}",
        png.display()
    );
    assert!(
        bytes.len() > 20_000,
        "{} is {} bytes: a blank page?",
        png.display(),
        bytes.len()
    );
    Ok(())
}

#[test]
fn the_graph_page_shows_the_lock_on_the_mutual_tls_edge() -> Result<()> {
    chromium::check_installed()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let walkthrough = Walkthrough::prepare(dir)?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    // Up first, so that the gateway can be pointed at it; it scrapes once the gateway is up.
    let prometheus = Prometheus::start(&admin, dir)?;
    let gateway = walkthrough.start_gateway(&[
        "--admin",
        &admin,
        "--prometheus",
        &format!("http://{}", prometheus.api),
        "--access-log",
        "off",
    ])?;

    // Two rounds of the walkthrough with a scrape between them, so that Prometheus' rate()
    // sees every series grow.
    for round in 1..=2 {
        assert_eq!(gateway.https("/status/200", Identity::Client)?, "200");
        assert_eq!(gateway.https("/status/418", Identity::Client)?, "403");
        assert_eq!(gateway.http("/status/200")?, "200");
        let total = 3 * round;
        prometheus.query_until("sum(istio_requests_total)", &format!(",\"{total}\"]"))?;
    }

    // The JSON the page draws from the daemon itself.
    let (code, data) = curl(&format!("http://{admin}/graph/data?source=local"), &[])?;
    assert_eq!(code, "200", "{data}");
    for want in [
        r#""source":"local""#,
        r#""unit":"requests""#,
        r#""security":"mutual_tls","requests":4.0,"errors":2.0"#,
        r#""security":"none","requests":2.0,"errors":0.0"#,
    ] {
        assert!(data.contains(want), "{want} missing from {data}");
    }
    let (code, data) = curl(&format!("http://{admin}/graph/data?source=elsewhere"), &[])?;
    assert_eq!(code, "400", "{data}");

    // The page, on the daemon's own numbers: totals are exact.
    let local = check_page(&format!("http://{admin}/graph?source=local"), "local", dir)?;
    let locked = edge_into_gateway(&local, "mutual_tls", "")?;
    assert_eq!(
        (locked.number("data-requests"), locked.number("data-errors")),
        (4.0, 2.0),
        "the 403s count as errors: {locked:#?}"
    );
    assert_eq!(locked.attr("data-error-rate"), "0.5000");
    let open = edge_into_gateway(&local, "none", "")?;
    assert_eq!(
        (open.number("data-requests"), open.number("data-errors")),
        (2.0, 0.0)
    );

    // The page on Prometheus (the default with --prometheus): rates over a minute, both edges
    // moving, the mutual-TLS one with half its requests denied.
    let url = format!("http://{admin}/graph");
    let from_prometheus = check_page(&url, "prometheus", dir)?;
    for security in ["mutual_tls", "none"] {
        let edge = edge_into_gateway(&from_prometheus, security, "")?;
        let rps = edge.number("data-rps");
        assert!(rps > 0.0, "{security}: no rate from Prometheus: {edge:#?}");
    }
    let locked = edge_into_gateway(&from_prometheus, "mutual_tls", "")?;
    let error_rate = locked.number("data-error-rate");
    assert!(
        (error_rate - 0.5).abs() < 0.05,
        "one request in two is a 403: {locked:#?}"
    );

    // What an operator sees: the mesh from Prometheus, and this gateway's own totals.
    std::fs::create_dir_all(target_dir())?;
    let png = target_dir().join("graph.png");
    chromium::screenshot(&url, &png, (1200, 800), dir)?;
    check_png(&png, (1200, 800))?;
    let local_png = target_dir().join("graph-local.png");
    let local_url = format!("http://{admin}/graph?source=local");
    chromium::screenshot(&local_url, &local_png, (1200, 800), dir)?;
    check_png(&local_png, (1200, 800))?;
    eprintln!("screenshots: {} {}", png.display(), local_png.display());

    // Prometheus gone: the page says so instead of drawing an empty mesh.
    drop(prometheus);
    let dom = chromium::dump_dom(&url, dir)?;
    assert_eq!(
        body_attrs(&dom).get("data-state").map(String::as_str),
        Some("error"),
        "{dom}"
    );
    assert!(
        dom.contains("Cannot load the graph: cannot reach Prometheus at http://"),
        "{dom}"
    );
    assert!(edges(&dom).is_empty(), "{dom}");

    Ok(())
}
