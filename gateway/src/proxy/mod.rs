//! Listeners, the TLS terminator and HTTP forwarding.
//!
//! One [`Gateway`] follows the configuration on a [`SnapshotBus`]: each request is decided by
//! the newest snapshot (issue 12: a revoked principal loses access on its open connections
//! too), and a connection whose client certificate a new snapshot refuses is closed
//! ([`serve::serve_http`]). The listeners ([`listener::Ingress`], [`inbound::Inbound`],
//! [`outbound::Outbound`], the admin listener) share one accept loop, one set of deadlines
//! and caps ([`limits`]) and one drain ([`serve`]).

pub mod conn;
pub mod headers;
pub mod http;
pub mod inbound;
pub mod io;
pub mod limits;
pub mod listener;
pub mod outbound;
pub mod serve;
pub mod target;
pub mod telemetry;
pub mod trailers;
pub mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::reconcile::SnapshotBus;
use crate::snapshot::Snapshot;
use telemetry::access_log::AccessLog;
use telemetry::metrics::{Metrics, Workload};

pub use limits::{LimitReason, Limits};
pub use listener::{BindError, Ingress};
pub use serve::{Admission, ConnLimiter, Drain, DrainSignal};

/// The running gateway: its configuration and what its listeners share.
pub struct Gateway {
    config: SnapshotBus,
    upstream: upstream::UpstreamClient,
    /// Counters the admin endpoint and tests read.
    pub stats: Stats,
    /// Istio's standard metrics and Portcullis' own, served on the admin listener.
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    /// Deadlines and caps.
    pub limits: Arc<Limits>,
    /// The downstream connection caps, shared by every listener.
    pub conns: Arc<ConnLimiter>,
    /// The bpffs pin directory, once this process has loaded or adopted the kernel programs
    /// (the admin endpoint reads their counters from it).
    pub kernel_pins: std::sync::OnceLock<std::path::PathBuf>,
}

/// Process-wide counters (the Istio-standard metrics are separate, in [`telemetry`]).
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
    /// Connections to the terminator whose destination was one of the daemon's own ports:
    /// not steered, refused before a byte was read.
    pub inbound_refused_own_port: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Gateway {
    /// A gateway on its own bus with the default limits, writing its access log as text to
    /// stderr (tests).
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        Self::on_bus(
            SnapshotBus::new(snapshot),
            AccessLog::default(),
            Limits::default(),
        )
    }

    /// A gateway following `bus`.
    pub fn on_bus(bus: SnapshotBus, access_log: AccessLog, limits: Limits) -> Arc<Self> {
        let snapshot = bus.current();
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
        let metrics = Arc::new(Metrics::new(workload));
        Arc::new(Self {
            config: bus,
            upstream: upstream::UpstreamClient::new(&limits),
            stats: Stats::default(),
            metrics,
            access_log,
            conns: ConnLimiter::new(limits.max_connections, limits.max_connections_per_source),
            limits: Arc::new(limits),
            kernel_pins: std::sync::OnceLock::new(),
        })
    }

    /// The newest configuration.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.current()
    }

    /// The bus the gateway follows (subscribe to learn of reloads).
    pub fn bus(&self) -> &SnapshotBus {
        &self.config
    }

    /// Publishes a new configuration whole (what the reconciler does on a reload).
    pub fn replace_snapshot(&self, snapshot: Snapshot) {
        self.config.publish(snapshot);
    }

    /// What the accept loop needs: the caps and the metrics.
    pub fn admission(&self) -> Admission {
        Admission {
            limiter: self.conns.clone(),
            metrics: self.metrics.clone(),
        }
    }
}
