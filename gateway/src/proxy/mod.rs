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
pub mod outbound;
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
    /// The bpffs pin directory, once this process has loaded or adopted the kernel programs
    /// (the admin endpoint reads their counters from it).
    pub kernel_pins: std::sync::OnceLock<std::path::PathBuf>,
}

/// Process-wide counters (the Istio-standard metrics are separate, in `admin`).
#[derive(Debug, Default, serde::Serialize)]
pub struct Stats {
    pub connections_accepted: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Connections the mesh terminator accepted (steered by the kernel or dialed directly).
    pub inbound_accepted: AtomicU64,
    /// ...of which started with a TLS ClientHello.
    pub inbound_tls: AtomicU64,
    /// ...of which were plaintext and served (PERMISSIVE).
    pub inbound_plaintext: AtomicU64,
    /// ...of which ended before their first byte: under STRICT, the kernel's reset of a
    /// plaintext client. The terminator read nothing from these.
    pub inbound_no_data: AtomicU64,
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
        // A mesh node reports as its workload; an ingress gateway as itself.
        let workload = match &snapshot.mesh {
            Some(mesh) => Workload {
                name: mesh.workload_name.clone(),
                namespace: mesh.workload_namespace.clone(),
            },
            None => Workload {
                name: "portcullis".to_owned(),
                namespace: snapshot.settings.gateway_namespace.clone(),
            },
        };
        let metrics = Metrics::new(workload);
        Arc::new(Self {
            config: ArcSwap::from_pointee(snapshot),
            upstream: upstream::UpstreamClient::new(),
            stats: Stats::default(),
            metrics,
            access_log,
            kernel_pins: std::sync::OnceLock::new(),
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
