//! The admin listener: metrics, health, config dump, and the observability pieces the proxy
//! records into ([`metrics`], [`access_log`]).
//!
//! Endpoints (plain HTTP/1.1, meant for loopback; `portcullis run --admin`):
//!
//! | Path | |
//! |---|---|
//! | `/stats/prometheus` | Istio's standard metrics and `portcullis_*`, Prometheus text format |
//! | `/healthz/ready` | 200 once the listeners are bound, 503 before |
//! | `/config_dump` | the compiled configuration as JSON, without key material |
//! | `/kernel` | the eBPF programs' counters (`{"attached": false}` until the kernel path reports) |

pub mod access_log;
pub mod config_dump;
pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::proxy::Gateway;

/// What the admin endpoints read: the gateway and whether it is ready.
pub struct Admin {
    gateway: Arc<Gateway>,
    ready: AtomicBool,
}

impl Admin {
    pub fn new(gateway: Arc<Gateway>) -> Arc<Self> {
        Arc::new(Self {
            gateway,
            ready: AtomicBool::new(false),
        })
    }

    /// Called once the listeners are bound: `/healthz/ready` answers 200 from now on.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Binds `addr` now (so a busy port fails `portcullis run` at startup) and serves it in
    /// a background task for the life of the runtime.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        tokio::spawn(async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let admin = self.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.handle(&req)) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
        });
        Ok(local)
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned());
        }
        match req.uri().path() {
            "/stats/prometheus" => self.prometheus(),
            "/healthz/ready" if self.is_ready() => text(StatusCode::OK, "LIVE\n".to_owned()),
            "/healthz/ready" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "listeners not bound yet\n".to_owned(),
            ),
            "/config_dump" => {
                let snapshot = self.gateway.snapshot();
                match serde_json::to_string_pretty(&config_dump::ConfigDump::new(&snapshot)) {
                    Ok(body) => json(body),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            }
            // The kernel path does not report counters to the daemon yet.
            "/kernel" => json(r#"{"attached": false}"#.to_owned()),
            "/" => text(
                StatusCode::OK,
                "/stats/prometheus\n/healthz/ready\n/config_dump\n/kernel\n".to_owned(),
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
        }
    }

    fn prometheus(&self) -> Response<Full<Bytes>> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let metrics = &self.gateway.metrics;
        metrics.update_certificate_expiry(&self.gateway.snapshot().credentials, now);
        match metrics.encode() {
            Ok(body) => {
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(body: String) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::OK, body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
