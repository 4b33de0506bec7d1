//! The admin listener: metrics, health, config dump. It only serves what the proxy records
//! ([`crate::proxy::telemetry`]); the proxy never imports `admin`.
//!
//! Endpoints (plain HTTP/1.1, meant for loopback; `portcullis run --admin`):
//!
//! | Path | |
//! |---|---|
//! | `/stats/prometheus` | Istio's standard metrics and `portcullis_*`, Prometheus text format |
//! | `/healthz/ready` | 200 once the listeners are bound, 503 before |
//! | `/config_dump` | the compiled configuration as JSON, without key material |
//! | `/kernel` | the eBPF programs' state and counters, and the terminator's own counters |
//! | `/graph` | the mesh graph page ([`graph`]); `/graph/data` is its JSON |

pub mod config_dump;
pub mod graph;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::proxy::serve::{accept_loop, serve_http1, HttpConn};
use crate::proxy::{Admission, ConnLimiter, DrainSignal, Gateway};
use graph::prometheus::{Prometheus, PrometheusUrl};

/// What the admin endpoints read: the gateway, whether it is ready, and the Prometheus the
/// graph reads from.
pub struct Admin {
    gateway: Arc<Gateway>,
    ready: AtomicBool,
    prometheus: Option<Prometheus>,
}

impl Admin {
    /// `prometheus`: where `/graph` reads every node's traffic (`--prometheus`); without it
    /// the graph shows this daemon's own.
    pub fn new(gateway: Arc<Gateway>, prometheus: Option<PrometheusUrl>) -> Arc<Self> {
        Arc::new(Self {
            gateway,
            ready: AtomicBool::new(false),
            prometheus: prometheus.map(Prometheus::new),
        })
    }

    /// Called once the listeners are bound: `/healthz/ready` answers 200 from now on.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Binds `addr` now, so a busy port fails `portcullis run` at startup.
    pub async fn bind(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).await?;
        Ok(AdminServer {
            admin: self,
            listener,
        })
    }

    async fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
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
            "/kernel" => self.kernel(),
            "/graph" | "/graph/" => asset(graph::PAGE_HTML, "text/html; charset=utf-8"),
            "/graph/graph.js" => asset(graph::PAGE_JS, "text/javascript; charset=utf-8"),
            "/graph/graph.css" => asset(graph::PAGE_CSS, "text/css; charset=utf-8"),
            "/graph/data" => {
                let prometheus = self.prometheus.as_ref();
                let metrics = &self.gateway.metrics;
                let (status, body) = graph::data(metrics, prometheus, req.uri().query()).await;
                let mut resp = json(body);
                *resp.status_mut() = status;
                resp
            }
            "/" => text(
                StatusCode::OK,
                "/stats/prometheus\n/healthz/ready\n/config_dump\n/kernel\n/graph\n".to_owned(),
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
        }
    }

    /// The kernel programs' state and counters (read from the pins this process installed or
    /// adopted), beside the terminator's own counters: together they show that a reset
    /// connection was never read by user space.
    fn kernel(&self) -> Response<Full<Bytes>> {
        let kernel = self
            .gateway
            .kernel_pins
            .get()
            .map(|pins| crate::kernel::status(pins).map_err(|e| e.to_string()));
        let body = serde_json::json!({
            "attached": matches!(kernel, Some(Ok(_))),
            "status": match &kernel {
                Some(Ok(st)) => serde_json::to_value(st).unwrap_or_default(),
                _ => serde_json::Value::Null,
            },
            "error": match &kernel {
                Some(Err(e)) => serde_json::Value::String(e.clone()),
                _ => serde_json::Value::Null,
            },
            "terminator": serde_json::to_value(&self.gateway.stats).unwrap_or_default(),
        });
        match serde_json::to_string_pretty(&body) {
            Ok(b) => json(b),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        }
    }

    fn prometheus(&self) -> Response<Full<Bytes>> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let metrics = &self.gateway.metrics;
        metrics.update_certificate_expiry(&self.gateway.snapshot().credentials, now);
        if let Some(pins) = self.gateway.kernel_pins.get() {
            match crate::kernel::status(pins) {
                Ok(st) => metrics.update_kernel(&st.counters),
                Err(e) => tracing::debug!(error = %e, "kernel counters not readable"),
            }
        }
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

/// The admin listener, bound: [`AdminServer::run`] serves it through the shared accept loop.
pub struct AdminServer {
    admin: Arc<Admin>,
    listener: TcpListener,
}

impl AdminServer {
    /// Admin connections have their own small cap, so an operator can still look when a
    /// flood fills the gateway's.
    const MAX_CONNECTIONS: usize = 64;

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the drain starts.
    pub async fn run(self, drain: DrainSignal) {
        let gateway = self.admin.gateway.clone();
        let admission = Admission {
            limiter: ConnLimiter::new(Self::MAX_CONNECTIONS, Self::MAX_CONNECTIONS),
            metrics: gateway.metrics.clone(),
        };
        let (admin, conn_drain) = (self.admin, drain.clone());
        accept_loop(
            self.listener,
            "admin",
            admission,
            drain,
            move |stream, peer, permit| {
                let admin = admin.clone();
                let http = HttpConn {
                    peer,
                    limits: admin.gateway.limits.clone(),
                    metrics: admin.gateway.metrics.clone(),
                    drain: conn_drain.clone(),
                    reloads: None,
                };
                async move {
                    let _permit = permit;
                    serve_http1(stream, http, move |req| {
                        let admin = admin.clone();
                        async move { admin.handle(&req).await }
                    })
                    .await;
                }
            },
        )
        .await;
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
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
