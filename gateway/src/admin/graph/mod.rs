//! The mesh graph: `/graph` (a page embedded in the binary) and `/graph/data` (its JSON).
//!
//! The graph is built from `istio_requests_total` series, wherever they come from: this
//! daemon's own registry ([`exposition`], totals since start) or a Prometheus that scrapes
//! every node ([`prometheus`], rates over a minute, the query Kiali runs). Either way the
//! series become one [`Graph`]: workloads as nodes, and one edge per (source, destination,
//! `connection_security_policy`) carrying requests and errors. The page draws a closed lock
//! on `mutual_tls` edges and an open one on plaintext.
//!
//! The Prometheus query is proxied here rather than sent by the browser, so the page needs no
//! CORS from Prometheus and works when only the admin port is forwarded.

pub mod exposition;
pub mod prometheus;

use std::collections::{BTreeMap, BTreeSet};

use http::StatusCode;
use serde::Serialize;

use crate::proxy::telemetry::metrics::Metrics;
use prometheus::Prometheus;

/// What Istio writes for a workload it cannot name (a client outside the mesh).
const UNKNOWN: &str = "unknown";

/// The page and its assets, served as they are.
pub const PAGE_HTML: &str = include_str!("page.html");
pub const PAGE_JS: &str = include_str!("graph.js");
pub const PAGE_CSS: &str = include_str!("graph.css");

/// `connection_security_policy`, as Istio fills it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    MutualTls,
    /// Plaintext (PERMISSIVE, or a Gateway server without TLS) or TLS without a client cert.
    None,
    /// Istio leaves the label `unknown` on `reporter="source"` series.
    Unknown,
}

impl Security {
    pub fn from_label(value: &str) -> Self {
        match value {
            "mutual_tls" => Self::MutualTls,
            "none" => Self::None,
            _ => Self::Unknown,
        }
    }
}

/// A workload as the metrics name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    pub name: String,
    pub namespace: String,
}

impl WorkloadRef {
    /// The node id: every unknown workload is one "unknown" node, whatever its namespace,
    /// as in Kiali.
    fn node_id(&self) -> String {
        if self.name == UNKNOWN {
            UNKNOWN.to_owned()
        } else {
            format!("{}.{}", self.name, self.namespace)
        }
    }
}

/// One `istio_requests_total` series, reduced to what the graph uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub reporter: String,
    pub source: WorkloadRef,
    pub destination: WorkloadRef,
    /// `destination_service_name`.
    pub service: String,
    pub security: Security,
    /// `response_code`; 0 when the request got no response.
    pub response_code: u16,
    /// A total (local) or a rate per second (Prometheus).
    pub value: f64,
}

impl Series {
    /// Kiali counts 4xx and 5xx as errors, and a request that got no response (code 0).
    fn is_error(&self) -> bool {
        self.response_code == 0 || self.response_code >= 400
    }
}

/// Where the numbers came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// This daemon's registry.
    Local,
    /// A Prometheus HTTP API (`--prometheus`).
    Prometheus,
}

/// What an edge's `requests` and `errors` count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Totals since the daemon started; the page derives rates from successive polls.
    Requests,
    /// Rates over [`prometheus::WINDOW`].
    RequestsPerSecond,
}

/// The `/graph/data` document.
#[derive(Debug, Serialize)]
pub struct Graph {
    pub source: SourceKind,
    /// The Prometheus queried, for the page's header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<String>,
    pub unit: Unit,
    /// The rate window, for Prometheus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<&'static str>,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct Node {
    pub id: String,
    pub workload: String,
    pub namespace: String,
    /// This daemon's own workload.
    pub local: bool,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct Edge {
    pub source: String,
    pub target: String,
    pub security: Security,
    pub requests: f64,
    pub errors: f64,
    /// `destination_service_name`s of the requests on this edge.
    pub services: Vec<String>,
    /// The reporter whose series the edge was drawn from.
    pub reporter: String,
}

impl Graph {
    /// Builds the graph from `series`. `local` is this daemon's workload, marked on its node.
    ///
    /// A request between two mesh workloads is counted twice, once by each side's proxy
    /// (`reporter="source"` and `"destination"`). As Kiali does, an edge is drawn from the
    /// destination's report when there is one, since only that one knows the
    /// `connection_security_policy`; the source's report is used for destinations that do
    /// not report (outside the mesh).
    pub fn build(
        source: SourceKind,
        unit: Unit,
        series: &[Series],
        local: Option<&WorkloadRef>,
    ) -> Self {
        let reported_by_destination: BTreeSet<(String, String)> = series
            .iter()
            .filter(|s| s.reporter == "destination")
            .map(|s| (s.source.node_id(), s.destination.node_id()))
            .collect();
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        let mut edges: BTreeMap<(String, String, Security), Edge> = BTreeMap::new();
        let mut add_node = |w: &WorkloadRef| {
            let id = w.node_id();
            nodes.entry(id.clone()).or_insert_with(|| Node {
                local: local.is_some_and(|l| l.node_id() == id),
                workload: w.name.clone(),
                namespace: if w.name == UNKNOWN {
                    UNKNOWN.to_owned()
                } else {
                    w.namespace.clone()
                },
                id,
            });
        };
        if let Some(l) = local {
            add_node(l);
        }
        for s in series {
            let (from, to) = (s.source.node_id(), s.destination.node_id());
            let pair = (from.clone(), to.clone());
            if s.reporter != "destination" && reported_by_destination.contains(&pair) {
                continue;
            }
            add_node(&s.source);
            add_node(&s.destination);
            let edge = edges
                .entry((from.clone(), to.clone(), s.security))
                .or_insert_with(|| Edge {
                    source: from,
                    target: to,
                    security: s.security,
                    requests: 0.0,
                    errors: 0.0,
                    services: Vec::new(),
                    reporter: s.reporter.clone(),
                });
            edge.requests += s.value;
            if s.is_error() {
                edge.errors += s.value;
            }
            if s.service != UNKNOWN && !edge.services.contains(&s.service) {
                edge.services.push(s.service.clone());
                edge.services.sort();
            }
        }
        Self {
            source,
            prometheus: None,
            unit,
            window: None,
            nodes: nodes.into_values().collect(),
            edges: edges.into_values().collect(),
        }
    }
}

/// `/graph/data[?source=local|prometheus]`: the graph as JSON, from `prometheus` when one is
/// configured and from `metrics` otherwise (or as asked); errors are `{"error": "…"}`.
pub async fn data(
    metrics: &Metrics,
    prometheus: Option<&Prometheus>,
    query: Option<&str>,
) -> (StatusCode, String) {
    let error =
        |status, message: &str| (status, serde_json::json!({ "error": message }).to_string());
    let asked = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("source="));
    let me = metrics.workload();
    let local = WorkloadRef {
        name: me.name.clone(),
        namespace: me.namespace.clone(),
    };
    let graph = match (asked, prometheus) {
        (Some("prometheus") | None, Some(prometheus)) => match prometheus.request_series().await {
            Ok(series) => Graph {
                prometheus: Some(prometheus.url().to_string()),
                window: Some(prometheus::WINDOW),
                ..Graph::build(
                    SourceKind::Prometheus,
                    Unit::RequestsPerSecond,
                    &series,
                    Some(&local),
                )
            },
            Err(e) => {
                tracing::warn!(error = %e, "graph: the Prometheus query failed");
                return error(StatusCode::BAD_GATEWAY, &e.to_string());
            }
        },
        (Some("prometheus"), None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "no Prometheus configured (portcullis run --prometheus URL)",
            )
        }
        (Some("local") | None, _) => match metrics.encode() {
            Ok(text) => {
                let series = exposition::request_series(&text);
                Graph::build(SourceKind::Local, Unit::Requests, &series, Some(&local))
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        (Some(other), _) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("unknown source {other:?}: local or prometheus"),
            )
        }
    };
    match serde_json::to_string(&graph) {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, namespace: &str) -> WorkloadRef {
        WorkloadRef {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    fn series(
        reporter: &str,
        from: WorkloadRef,
        to: WorkloadRef,
        security: Security,
        code: u16,
        value: f64,
    ) -> Series {
        Series {
            reporter: reporter.to_owned(),
            source: from,
            destination: to,
            service: "httpbin".to_owned(),
            security,
            response_code: code,
            value,
        }
    }

    #[test]
    fn the_walkthrough_gives_a_locked_and_an_open_edge_from_unknown() {
        let gw = w("portcullis", "istio-system");
        // The client's SPIFFE namespace does not split the unknown node.
        let input = [
            series(
                "destination",
                w(UNKNOWN, "default"),
                gw.clone(),
                Security::MutualTls,
                200,
                1.0,
            ),
            series(
                "destination",
                w(UNKNOWN, UNKNOWN),
                gw.clone(),
                Security::MutualTls,
                403,
                1.0,
            ),
            series(
                "destination",
                w(UNKNOWN, UNKNOWN),
                gw.clone(),
                Security::None,
                200,
                3.0,
            ),
        ];
        let g = Graph::build(SourceKind::Local, Unit::Requests, &input, Some(&gw));
        let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["portcullis.istio-system", "unknown"]);
        assert!(g.nodes[0].local && !g.nodes[1].local);
        assert_eq!(g.nodes[1].namespace, UNKNOWN);
        assert_eq!(g.edges.len(), 2);
        let locked = &g.edges[0];
        assert_eq!(
            (
                locked.source.as_str(),
                locked.target.as_str(),
                locked.security
            ),
            ("unknown", "portcullis.istio-system", Security::MutualTls)
        );
        assert_eq!((locked.requests, locked.errors), (2.0, 1.0));
        assert_eq!(locked.services, ["httpbin"]);
        let open = &g.edges[1];
        assert_eq!(
            (open.security, open.requests, open.errors),
            (Security::None, 3.0, 0.0)
        );
    }

    #[test]
    fn the_destination_report_wins_over_the_source_report() {
        let (client, server) = (w("sleep", "default"), w("httpbin", "default"));
        let input = [
            series(
                "source",
                client.clone(),
                server.clone(),
                Security::Unknown,
                200,
                5.0,
            ),
            series(
                "destination",
                client.clone(),
                server.clone(),
                Security::MutualTls,
                200,
                5.0,
            ),
            // Nobody reports on the destination side of this one: the source's report stays.
            series(
                "source",
                client.clone(),
                w("api", "external"),
                Security::Unknown,
                503,
                2.0,
            ),
        ];
        let g = Graph::build(
            SourceKind::Prometheus,
            Unit::RequestsPerSecond,
            &input,
            None,
        );
        assert_eq!(g.edges.len(), 2, "{:?}", g.edges);
        let to_server = g
            .edges
            .iter()
            .find(|e| e.target == "httpbin.default")
            .unwrap();
        assert_eq!(
            (
                to_server.security,
                to_server.requests,
                to_server.reporter.as_str()
            ),
            (Security::MutualTls, 5.0, "destination")
        );
        let external = g.edges.iter().find(|e| e.target == "api.external").unwrap();
        assert_eq!((external.requests, external.errors), (2.0, 2.0));
        assert!(g.nodes.iter().all(|n| !n.local));
    }

    #[tokio::test]
    async fn data_reads_the_local_registry_unless_a_prometheus_is_configured() {
        use crate::proxy::telemetry::metrics::Workload;
        let metrics = Metrics::new(Workload {
            name: "portcullis".to_owned(),
            namespace: "istio-system".to_owned(),
        });
        let (status, body) = data(&metrics, None, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains(r#""source":"local""#), "{body}");
        assert!(
            body.contains(r#""local":true"#),
            "the gateway is a node before any traffic: {body}"
        );
        let (status, body) = data(&metrics, None, Some("source=prometheus")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("--prometheus URL"), "{body}");
        let (status, body) = data(&metrics, None, Some("x=1&source=kiali")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#"unknown source \"kiali\""#), "{body}");

        // A configured but absent Prometheus is the default source, and a 502 that names it;
        // ?source=local still answers from the registry.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let prometheus = Prometheus::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let (status, body) = data(&metrics, Some(&prometheus), None).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
        let (status, body) = data(&metrics, Some(&prometheus), Some("source=local")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    #[test]
    fn the_document_uses_istio_spellings() {
        let gw = w("portcullis", "istio-system");
        let input = [series(
            "destination",
            w(UNKNOWN, UNKNOWN),
            gw.clone(),
            Security::MutualTls,
            0,
            1.0,
        )];
        let g = Graph::build(SourceKind::Local, Unit::Requests, &input, Some(&gw));
        let json = serde_json::to_string(&g).unwrap();
        for want in [
            r#""source":"local""#,
            r#""unit":"requests""#,
            r#""security":"mutual_tls""#,
            r#""errors":1.0"#,
        ] {
            assert!(json.contains(want), "{want} missing in {json}");
        }
        assert!(!json.contains("prometheus"), "{json}");
    }
}
