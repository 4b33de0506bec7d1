//! Listeners, the TLS terminator and HTTP forwarding.
//!
//! One [`Gateway`] holds the current configuration [`Snapshot`] behind an [`ArcSwap`]: each
//! connection takes the snapshot current when it was accepted and keeps it, so a reload never
//! changes the rules under a request in flight.

pub mod conn;
pub mod http;
pub mod inbound;
pub mod io;
pub mod listener;
pub mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::admin::access_log::AccessLog;
use crate::admin::metrics::{Metrics, Workload};
use crate::config::Snapshot;

pub use listener::{bind_listeners, serve, BoundListener};

/// The running gateway: its configuration and what its listeners share.
pub struct Gateway {
    config: ArcSwap<Snapshot>,
    upstream: upstream::UpstreamClient,
    /// Counters the admin endpoint and tests read.
    pub stats: Stats,
    /// Istio's standard metrics and Portcullis' own, served on the admin listener.
    pub metrics: Metrics,
    pub access_log: AccessLog,
}

/// Process-wide counters (the Istio-standard metrics are separate, in `admin`).
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_accepted: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub requests: AtomicU64,
    pub denied: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Gateway {
    /// A gateway that writes its access log as text to stderr.
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        Self::with_access_log(snapshot, AccessLog::default())
    }

    pub fn with_access_log(snapshot: Snapshot, access_log: AccessLog) -> Arc<Self> {
        let metrics = Metrics::new(Workload {
            name: "portcullis".to_owned(),
            namespace: snapshot.settings.gateway_namespace.clone(),
        });
        Arc::new(Self {
            config: ArcSwap::from_pointee(snapshot),
            upstream: upstream::UpstreamClient::new(),
            stats: Stats::default(),
            metrics,
            access_log,
        })
    }

    /// The configuration new connections will use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.load_full()
    }

    /// Swaps in a new configuration whole; connections already open keep theirs.
    pub fn replace_snapshot(&self, snapshot: Snapshot) {
        self.config.store(Arc::new(snapshot));
    }
}
