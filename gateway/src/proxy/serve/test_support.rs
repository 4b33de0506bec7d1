//! A loopback HTTP server built from the accept loop and [`serve_http`], and what the tests
//! read from it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::{accept_loop, serve_http, Admission, ConnLimiter, Drain, HttpConn};
use crate::proxy::limits::Limits;
use crate::proxy::telemetry::metrics::{Metrics, Workload};

pub(super) fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(Workload {
        name: "t".into(),
        namespace: "t".into(),
    }))
}

pub(super) fn limit_count(metrics: &Metrics, reason: &str) -> u64 {
    let text = metrics.encode().expect("encode");
    let want = format!("portcullis_limits_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {want} in\n{text}"))
}

/// An HTTP server on loopback whose connections run through [`serve_http`].
pub(super) async fn server(limits: Limits) -> (SocketAddr, Arc<Metrics>, Drain) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = metrics();
    let limits = Arc::new(limits);
    let drain = Drain::new();
    let admission = Admission {
        limiter: ConnLimiter::new(limits.max_connections, limits.max_connections_per_source),
        metrics: metrics.clone(),
    };
    let (m, signal) = (metrics.clone(), drain.signal());
    tokio::spawn(accept_loop(
        listener,
        "test",
        admission,
        drain.signal(),
        move |stream, peer, permit| {
            let conn = HttpConn {
                peer,
                limits: limits.clone(),
                metrics: m.clone(),
                drain: signal.clone(),
                reloads: None,
            };
            async move {
                serve_http(stream, conn, |_req| async {
                    Response::new(Full::new(Bytes::from_static(b"ok")))
                })
                .await;
                drop(permit);
            }
        },
    ));
    (addr, metrics, drain)
}

/// Reads until the server closes; true when it did (EOF or reset) before `wait`.
pub(super) async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
