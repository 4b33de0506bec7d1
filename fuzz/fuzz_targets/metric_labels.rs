//! Metric labels carry a certificate's identity (`source_principal`, the namespace and
//! service account of a workload id) and configuration names. Whatever they hold, the
//! Prometheus exposition must keep each value inside its label: the admin graph page reads
//! the same text back, so an escaped value would draw a forged edge there and in Kiali.
//!
//! Input: `namespace \0 service_account \0 trust_domain \0 service \0 workload \0
//! workload_namespace`.
//!
//! Properties:
//! - encoding never fails and every exposition line is a comment or `name{…} value` /
//!   `name value`, with no raw line break inside a label;
//! - the graph's reader (`admin::graph::exposition::request_series`) reads the recorded
//!   request back as one series with the labels given.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portcullis::admin::graph::exposition::request_series;
use portcullis::identity::{Identity, PeerCertificate};
use portcullis::proxy::conn::{ConnInfo, InboundTarget};
use portcullis::proxy::telemetry::metrics::{
    split_service, Metrics, RequestProtocol, RequestRecord, Workload,
};
use portcullis::proxy::telemetry::ResponseFlags;
use portcullis_fuzz::fields;

fuzz_target!(|data: &[u8]| {
    let f = fields(data, 6);
    let s = |i: usize| f[i].clone().unwrap_or_default();
    let identity = Identity::Workload {
        trust_domain: s(2),
        namespace: s(0),
        service_account: s(1),
    };
    let cert = PeerCertificate {
        identity: Some(identity.clone()),
        uris: vec![identity.uri()],
        dns_names: Vec::new(),
        subject: String::new(),
        sha256_hex: "00".repeat(32),
    };
    let mut conn = ConnInfo::new(
        "10.0.0.1:40000".parse().expect("constant address"),
        "10.0.0.2:443".parse().expect("constant address"),
        443,
    );
    conn.tls = true;
    conn.set_peer_cert(cert);
    conn.inbound = Some(std::sync::Arc::new(InboundTarget {
        app: "127.0.0.1:8080".parse().expect("constant address"),
        workload_name: s(4),
        workload_namespace: s(5),
    }));
    let metrics = Metrics::new(Workload {
        name: "portcullis".to_owned(),
        namespace: "istio-system".to_owned(),
    });
    let service = s(3);
    metrics.record_request(&RequestRecord {
        conn: &conn,
        service: Some(&service),
        protocol: RequestProtocol::http,
        status: 403,
        flags: ResponseFlags::None,
        duration: Duration::from_millis(1),
        request_bytes: 1,
        response_bytes: 2,
    });
    let text = metrics
        .encode()
        .expect("encoding into a String cannot fail");
    for line in text.lines() {
        assert!(
            line.starts_with('#') || line.contains(' '),
            "not an exposition line: {line:?}"
        );
    }
    let series = request_series(&text);
    assert_eq!(series.len(), 1, "{series:?}\n{text}");
    let got = &series[0];
    assert_eq!(got.source.name, s(1), "source_workload");
    assert_eq!(got.source.namespace, s(0), "source_workload_namespace");
    assert_eq!(got.destination.name, s(4), "destination_workload");
    assert_eq!(
        got.destination.namespace,
        s(5),
        "destination_workload_namespace"
    );
    assert_eq!(
        got.service,
        split_service(&service).0,
        "destination_service_name"
    );
    assert_eq!(got.response_code, 403);
    assert_eq!(got.value, 1.0);
});
