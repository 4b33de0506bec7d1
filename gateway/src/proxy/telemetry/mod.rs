//! What the proxy reports about the traffic it carries: Istio's standard metrics
//! ([`metrics`]) and the access log ([`access_log`]).
//!
//! Telemetry lives beside the proxy because the proxy is what records into it (as ztunnel's
//! `proxy/metrics.rs`); the admin listener only serves it (`/stats/prometheus`, `/graph`), so
//! the dependency runs one way: `admin` → `proxy::telemetry`, never `proxy` → `admin`.
//!
//! Label values that come from a closed set are enums ([`Reporter`], [`SecurityPolicy`],
//! [`ResponseFlags`]) whose text is exactly what Istio and Envoy write, so Prometheus queries,
//! Kiali and log parsers read our exposition and our access lines unchanged.

pub mod access_log;
mod labels;
pub mod metrics;

pub use labels::{Reporter, ResponseFlags, SecurityPolicy};
