//! The mesh terminator: the listener the kernel's `steer` program delivers mesh connections
//! to. Each connection's local address is its original destination (sk_lookup keeps it), so
//! the port needs no lookup table: TLS clients are terminated with the workload's
//! certificate, must present a certificate from the mesh CA, pass AuthorizationPolicy and
//! reach the app on loopback at that port; plaintext clients are served only where the port
//! is not STRICT (PERMISSIVE), with no principal.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use super::conn::{ConnInfo, InboundTarget};
use super::io::Prefixed;
use super::listener::{read_first_bytes, serve_http, terminate};
use super::{Gateway, Stats};
use crate::policy::authz::Authorizer;
use crate::policy::peer_auth::PeerAuthMode;

/// What the terminator needs, swapped whole on reload like the snapshot.
pub struct InboundConfig {
    /// MUTUAL server config with the workload's credential and the mesh CA.
    pub tls: Arc<rustls::ServerConfig>,
    /// AuthorizationPolicies compiled for this workload.
    pub authz: Arc<Authorizer>,
    /// PeerAuthentication mode per workload port; ports not listed are DISABLE.
    pub modes: std::collections::BTreeMap<u16, PeerAuthMode>,
    /// Where the app listens (loopback; the steer program leaves loopback alone).
    pub app_ip: IpAddr,
}

impl InboundConfig {
    fn mode(&self, port: u16) -> PeerAuthMode {
        self.modes
            .get(&port)
            .copied()
            .unwrap_or(PeerAuthMode::Disable)
    }
}

/// Default app address: the workload's own loopback.
pub const APP_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Accepts steered connections until `shutdown` resolves.
pub async fn serve_inbound(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    config: Arc<ArcSwap<InboundConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, mut stop) = watch::channel(false);
    let accept = async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            Stats::bump(&gateway.stats.connections_accepted);
            let _ = stream.set_nodelay(true);
            // The steered socket's local address is the client's original destination.
            let Ok(original) = stream.local_addr() else {
                continue;
            };
            let span = tracing::info_span!("inbound", %peer, port = original.port(), principal = tracing::field::Empty);
            let cfg = config.load_full();
            tokio::spawn(handle(gateway.clone(), cfg, stream, peer, original).instrument(span));
        }
    };
    tokio::select! {
        _ = accept => {},
        _ = shutdown => { let _ = stop_tx.send(true); },
    }
}

async fn handle(
    gateway: Arc<Gateway>,
    cfg: Arc<InboundConfig>,
    mut stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
) {
    let port = original.port();
    let mode = cfg.mode(port);
    let (prefix, hello) = match read_first_bytes(&mut stream).await {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(
                reason = why,
                "inbound connection closed before its first request"
            );
            return;
        }
    };
    let target = Arc::new(InboundTarget {
        app: SocketAddr::new(cfg.app_ip, port),
        authz: cfg.authz.clone(),
    });
    let mut conn = ConnInfo {
        peer,
        local: original,
        port,
        server: None,
        sni: hello.as_ref().and_then(|h| h.server_name.clone()),
        peer_cert: None,
        tls: false,
        principal: None,
        inbound: Some(target),
    };
    let snapshot = gateway.snapshot();
    match hello {
        Some(_) => {
            if let Some(tls) = terminate(&gateway, &cfg.tls, prefix, stream, &mut conn).await {
                serve_http(gateway, snapshot, conn, tls).await;
            }
        }
        None if mode == PeerAuthMode::Strict => {
            // The kernel resets these before they reach us; this is the userspace backstop
            // for a window where the maps and this config disagree.
            tracing::warn!("plaintext on a STRICT port reached the terminator; closing");
        }
        None => serve_http(gateway, snapshot, conn, Prefixed::new(prefix, stream)).await,
    }
}
