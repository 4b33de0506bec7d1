//! The mesh side of a node: the terminator's listener that the kernel steers workload ports
//! to, the kernel programs kept in step with the configuration, and configuration reloads.
//!
//! The same [`Snapshot`] drives both halves: its
//! [`MeshInbound::modes`] go to the terminator and, as [`PortSetting`]s, to the kernel maps, so
//! user space and the kernel never disagree for longer than one reload.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::snapshot::model::MeshInbound;
use crate::snapshot::model::DEFAULT_PORT;
use crate::snapshot::Snapshot;
use std::sync::Mutex;

use crate::kernel::{
    install, install_capture, Capture, CaptureOptions, InstallOptions, KernelMaps, PortSetting,
};
use crate::policy::peer_auth::PeerAuthMode;
use crate::proxy::outbound::OriginalDestination;

/// How the node's mesh side runs.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// The terminator's listening address; `[::]:15006` serves IPv4 and IPv6 (the steering
    /// program needs a socket of the connection's family, and a dual-stack one is both).
    pub terminator: SocketAddr,
    /// Load the kernel programs (root). Without them the terminator only serves clients that
    /// dial it directly.
    pub kernel: bool,
    /// Interfaces whose ingress gets the STRICT reset; empty means every interface that
    /// exists in the namespace (loopback included).
    pub interfaces: Vec<String>,
    /// The bpffs pin directory.
    pub pin_dir: PathBuf,
    /// The local workload's cgroup v2 directory: its connections to mesh destinations are
    /// captured by the kernel and upgraded to mutual TLS by the originator.
    pub capture_cgroup: Option<PathBuf>,
    /// The originator's listener (where captured connections land).
    pub outbound: std::net::SocketAddrV4,
    /// Load the kernel programs with their debug lines on, and forward them to the log.
    pub kernel_log: bool,
    /// The ports this daemon binds on addresses other than loopback (the terminator; admin or
    /// outbound when moved off loopback): exceptions to a workload-wide default (see
    /// [`DAEMON_PORTS`]).
    pub own_ports: Vec<u16>,
}

/// The mesh side once started: the listeners to serve and the kernel handles to keep in
/// step with reloads.
pub struct Started {
    pub terminator: tokio::net::TcpListener,
    pub maps: Option<KernelMaps>,
    /// The originator's listener and the capture that feeds it.
    pub outbound: Option<(tokio::net::TcpListener, Arc<Mutex<Capture>>)>,
}

/// The kernel's capture map as the originator's source of original destinations.
pub struct KernelLookup(pub Arc<Mutex<Capture>>);

impl OriginalDestination for KernelLookup {
    fn original_destination(&self, client: SocketAddr) -> Option<SocketAddr> {
        let capture = self.0.lock().ok()?;
        match capture.original_destination(client) {
            Ok(found) => found.map(SocketAddr::V4),
            Err(e) => {
                tracing::warn!(error = %e, "reading the capture map failed");
                None
            }
        }
    }
}

/// The IPv4 mesh destinations the kernel captures (connect4 only, for now).
pub fn capture_destinations(mesh: &MeshInbound) -> Vec<std::net::SocketAddrV4> {
    mesh.destinations
        .keys()
        .filter_map(|a| match a {
            SocketAddr::V4(v4) => Some(*v4),
            SocketAddr::V6(_) => None,
        })
        .collect()
}

/// Errors starting the mesh side.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot listen on the terminator address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the configuration has no mesh section: pass --mesh-credential NAME")]
    NotConfigured,
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
}

/// The exceptions (DISABLE, not steered) to a workload-wide default when nothing says which
/// ports the daemon binds (`kernel run --steer`, whose steering points at a terminator on
/// 15006): the terminator is never steered to itself, as in Istio's sidecar. A plaintext
/// client dialing it directly is still refused: the terminator closes connections addressed
/// to its own port.
///
/// Only this one: Istio reserves more (15000, 15001, 15004, 15008, 15020, 15021, 15053,
/// 15090), but an exception is plaintext-open under STRICT on every address, so a workload app
/// binding one of them would take plaintext; ours listen on loopback (admin, outbound), which
/// is never judged on `lo`. `run` passes the ports it binds on reachable addresses
/// ([`KernelSync::with_own_ports`]), so a moved `--admin` or `--terminator` moves the
/// exception with it.
pub const DAEMON_PORTS: [u16; 1] = [15006];

/// Binds a listener for the mesh side (dual-stack for `[::]`).
pub fn bind_listener(addr: SocketAddr) -> Result<std::net::TcpListener, MeshError> {
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    bind().map_err(|source| MeshError::Bind { addr, source })
}

/// Starts the mesh side: binds the terminator, loads (or adopts) the kernel programs, puts
/// the listener in the steering map and writes the port modes. Returns the listener and the
/// maps for later reloads.
pub fn start(snapshot: &Snapshot, opts: &MeshOptions) -> Result<Started, MeshError> {
    let mesh = snapshot.mesh.as_ref().ok_or(MeshError::NotConfigured)?;
    let listener = bind_listener(opts.terminator)?;
    let maps = if opts.kernel {
        let installed = install(&InstallOptions {
            pin_dir: opts.pin_dir.clone(),
            interfaces: opts.interfaces.clone(),
            kernel_log: opts.kernel_log,
        })?;
        if opts.kernel_log {
            let readers = crate::kernel::log::spawn_readers(&opts.pin_dir);
            tracing::info!(readers, "forwarding the kernel programs' log lines");
        }
        tracing::info!(
            origin = ?installed.origin,
            pins = %installed.pins.root().display(),
            attached = ?installed.newly_attached,
            "kernel programs ready"
        );
        crate::kernel::interfaces::spawn_watcher(installed.pins.clone(), opts.interfaces.clone())
            .map_err(|e| crate::kernel::KernelError::during("starting the interface watcher", e))?;
        let mut maps = installed.maps;
        maps.set_terminator(&listener)?;
        maps.sync_ports(
            &KernelSync::new(None, None, true)
                .with_own_ports(opts.own_ports.clone())
                .desired(snapshot),
        )?;
        Some(maps)
    } else {
        None
    };
    tracing::info!(
        terminator = %opts.terminator,
        workload = %mesh.workload,
        modes = ?mesh.modes,
        kernel = opts.kernel,
        "mesh terminator listening"
    );
    let terminator =
        tokio::net::TcpListener::from_std(listener).map_err(|source| MeshError::Bind {
            addr: opts.terminator,
            source,
        })?;
    let outbound = match &opts.capture_cgroup {
        None => None,
        Some(cgroup) => {
            let addr = SocketAddr::V4(opts.outbound);
            let listener = bind_listener(addr)?;
            let mut capture = install_capture(&CaptureOptions {
                pin_dir: opts.pin_dir.clone(),
                cgroup: cgroup.clone(),
                outbound: opts.outbound,
            })?;
            let dests = capture_destinations(mesh);
            capture.set_destinations(&dests)?;
            tracing::info!(
                cgroup = %cgroup.display(),
                outbound = %addr,
                destinations = ?dests,
                "outbound capture installed"
            );
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|source| MeshError::Bind { addr, source })?;
            Some((listener, Arc::new(Mutex::new(capture))))
        }
    };
    Ok(Started {
        terminator,
        maps,
        outbound,
    })
}

/// The kernel's subscriber to the reconciler: brings the port modes and the capture's
/// destinations in line with each snapshot. `portcullis run --mesh-credential` and
/// `portcullis kernel run` both use it, so one YAML gives one set of maps.
pub struct KernelSync {
    maps: Option<KernelMaps>,
    capture: Option<Arc<Mutex<Capture>>>,
    /// Steer the workload ports to the terminator (not for DISABLE ports).
    steer: bool,
    /// `kernel run --port PORT=MODE`: these win over the configuration.
    overrides: BTreeMap<u16, PortSetting>,
    /// The daemon's own ports, exceptions to a workload-wide default.
    own_ports: Vec<u16>,
}

impl KernelSync {
    pub fn new(
        maps: Option<KernelMaps>,
        capture: Option<Arc<Mutex<Capture>>>,
        steer: bool,
    ) -> Self {
        Self {
            maps,
            capture,
            steer,
            overrides: BTreeMap::new(),
            own_ports: DAEMON_PORTS.to_vec(),
        }
    }

    /// The ports this daemon really binds, in place of [`DAEMON_PORTS`].
    pub fn with_own_ports(mut self, ports: Vec<u16>) -> Self {
        self.own_ports = ports;
        self
    }

    /// Port settings that win over the configuration's.
    pub fn with_overrides(mut self, overrides: BTreeMap<u16, PortSetting>) -> Self {
        self.overrides = overrides;
        self
    }

    /// The port settings a snapshot asks for. Ports are steered unless DISABLE; the
    /// workload-wide default ([`DEFAULT_PORT`]) only under STRICT, since steering every port
    /// under PERMISSIVE would put server-speaks-first protocols (SSH) behind a terminator that
    /// waits for the client's first bytes. Under a default, the proxy's own ports are
    /// exceptions, as in Istio's sidecar: the admin listener is never steered to the
    /// terminator, nor the terminator to itself.
    pub fn desired(&self, snapshot: &Snapshot) -> BTreeMap<u16, PortSetting> {
        let modes = match &snapshot.mesh {
            Some(mesh) => mesh.modes.clone(),
            // The reconciler only publishes snapshots for which this succeeded.
            None => {
                crate::snapshot::mesh::workload_port_modes(&snapshot.resources, &snapshot.settings)
                    .unwrap_or_default()
            }
        };
        let mut desired: BTreeMap<u16, PortSetting> = modes
            .iter()
            .map(|(&port, &mode)| {
                let steer = match port {
                    DEFAULT_PORT => mode == PeerAuthMode::Strict,
                    _ => mode != PeerAuthMode::Disable,
                };
                (
                    port,
                    PortSetting {
                        mode,
                        steer: self.steer && steer,
                    },
                )
            })
            .collect();
        desired.extend(self.overrides.iter().map(|(p, s)| (*p, *s)));
        if desired.contains_key(&DEFAULT_PORT) {
            for &port in &self.own_ports {
                desired.entry(port).or_insert(PortSetting::NONE);
            }
        }
        desired
    }

    /// Writes what `snapshot` asks for into the maps; returns how many ports changed.
    pub fn apply(&mut self, snapshot: &Snapshot) -> Result<usize, crate::kernel::KernelError> {
        let desired = self.desired(snapshot);
        let changed = match self.maps.as_mut() {
            Some(maps) => maps.sync_ports(&desired)?,
            None => 0,
        };
        if changed > 0 {
            tracing::info!(ports = ?desired, "kernel port modes updated");
        }
        if let (Some(capture), Some(mesh)) = (self.capture.as_ref(), snapshot.mesh.as_ref()) {
            let mut c = capture
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            c.set_destinations(&capture_destinations(mesh))?;
        }
        Ok(changed)
    }

    /// Follows the bus until it closes.
    pub async fn run(mut self, mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>) {
        while snapshots.changed().await.is_ok() {
            let snapshot = snapshots.borrow_and_update().clone();
            if let Err(e) = self.apply(&snapshot) {
                tracing::error!(error = %e, "kernel maps not updated");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    const STRICT_WORKLOAD: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: hello, namespace: default}\nspec: {address: 10.0.0.1, labels: {app: hello}, serviceAccount: hello, ports: {http: 80}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";

    fn strict_snapshot() -> Snapshot {
        let resources = crate::config::load_str(std::path::Path::new("mesh.yaml"), STRICT_WORKLOAD)
            .expect("loads");
        let settings = Settings {
            local_workload: Some("hello".into()),
            ..Settings::default()
        };
        crate::snapshot::compile(resources, settings).expect("compiles")
    }

    #[test]
    fn the_ports_really_bound_are_the_exceptions_not_the_defaults() {
        let snapshot = strict_snapshot();
        let defaults = KernelSync::new(None, None, true).desired(&snapshot);
        for port in DAEMON_PORTS {
            assert_eq!(defaults[&port], PortSetting::NONE, "port {port}");
        }
        // `run --terminator [::]:16006 --admin 127.0.0.1:16000`: the exceptions move along,
        // and 15006, no longer ours, follows the workload's STRICT like any other port.
        let moved = KernelSync::new(None, None, true)
            .with_own_ports(vec![16006, 15001, 16000])
            .desired(&snapshot);
        assert_eq!(moved[&16006], PortSetting::NONE);
        assert_eq!(moved[&16000], PortSetting::NONE);
        assert!(!moved.contains_key(&15006), "{moved:?}");
        assert!(!moved.contains_key(&15000), "{moved:?}");
        assert_eq!(moved[&DEFAULT_PORT].mode, PeerAuthMode::Strict);
    }
}
