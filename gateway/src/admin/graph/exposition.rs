//! `istio_requests_total` read back from this daemon's own exposition.
//!
//! prometheus-client offers no way to walk a metric family, so the graph reads what a
//! Prometheus scrape would read: the text `/stats/prometheus` serves. The graph and the
//! scrape can then never disagree.

use std::collections::HashMap;

use super::{Security, Series, WorkloadRef, UNKNOWN};

const METRIC: &str = "istio_requests_total";

/// The `istio_requests_total` samples of a Prometheus/OpenMetrics text exposition. Lines
/// that do not parse are skipped: the text is our own encoder's.
pub fn request_series(exposition: &str) -> Vec<Series> {
    exposition.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Series> {
    let rest = line.strip_prefix(METRIC)?.strip_prefix('{')?;
    let (labels, rest) = parse_labels(rest)?;
    // The value, then an optional timestamp or exemplar.
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    let label = |name: &str| labels.get(name).map_or(UNKNOWN, String::as_str).to_owned();
    Some(Series {
        reporter: label("reporter"),
        source: WorkloadRef {
            name: label("source_workload"),
            namespace: label("source_workload_namespace"),
        },
        destination: WorkloadRef {
            name: label("destination_workload"),
            namespace: label("destination_workload_namespace"),
        },
        service: label("destination_service_name"),
        security: Security::from_label(&label("connection_security_policy")),
        response_code: label("response_code").parse().unwrap_or(0),
        value,
    })
}

/// `a="x",b="y\"z"} rest` → ({a: x, b: y"z}, ` rest`), undoing the format's three escapes.
fn parse_labels(mut s: &str) -> Option<(HashMap<String, String>, &str)> {
    let mut labels = HashMap::new();
    loop {
        s = s.strip_prefix(',').unwrap_or(s);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (name, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        s = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_series_and_skips_everything_else() {
        let text = "\
# HELP istio_requests Requests handled by the gateway.
# TYPE istio_requests counter
istio_requests_total{reporter=\"destination\",source_workload=\"unknown\",source_workload_namespace=\"default\",destination_workload=\"portcullis\",destination_workload_namespace=\"istio-system\",destination_service_name=\"httpbin\",response_code=\"403\",connection_security_policy=\"mutual_tls\"} 2
istio_requests_total{reporter=\"destination\",source_workload=\"a \\\"quoted\\\" \\\\ name\",response_code=\"200\",connection_security_policy=\"none\"} 7 1700000000
istio_request_duration_milliseconds_count{reporter=\"destination\"} 9
istio_requests_total{broken
# EOF
";
        let s = request_series(text);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].reporter, "destination");
        assert_eq!(s[0].source.namespace, "default");
        assert_eq!(s[0].destination.name, "portcullis");
        assert_eq!(s[0].service, "httpbin");
        assert_eq!(
            (s[0].security, s[0].response_code, s[0].value),
            (Security::MutualTls, 403, 2.0)
        );
        assert_eq!(s[1].source.name, r#"a "quoted" \ name"#);
        assert_eq!(s[1].destination.name, UNKNOWN, "missing labels are unknown");
        assert_eq!((s[1].security, s[1].value), (Security::None, 7.0));
    }

    #[test]
    fn reads_what_the_metrics_module_writes() {
        use crate::proxy::conn::ConnInfo;
        use crate::proxy::telemetry::metrics::{Metrics, RequestProtocol, RequestRecord, Workload};
        use crate::proxy::telemetry::ResponseFlags;
        let m = Metrics::new(Workload {
            name: "portcullis".to_owned(),
            namespace: "istio-system".to_owned(),
        });
        let conn = ConnInfo::new(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            80,
        );
        for status in [200, 503] {
            m.record_request(&RequestRecord {
                conn: &conn,
                service: Some("httpbin.default.svc.cluster.local"),
                protocol: RequestProtocol::http,
                status,
                flags: ResponseFlags::None,
                duration: std::time::Duration::from_millis(1),
                request_bytes: 0,
                response_bytes: 0,
            });
        }
        let mut s = request_series(&m.encode().unwrap());
        s.sort_by_key(|s| s.response_code);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[1].response_code, s[1].security, s[1].service.as_str()),
            (503, Security::None, "httpbin")
        );
        assert_eq!(s[1].destination.namespace, "istio-system");
    }
}
