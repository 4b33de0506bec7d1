//! Accept loops: one per Gateway port; TLS first-bytes inspection, termination and
//! passthrough.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use super::conn::ConnInfo;
use super::io::Prefixed;
use super::{Gateway, Stats};
use crate::admin::access_log::AccessEntry;
use crate::admin::metrics::{flags, HandshakeFailure, RequestProtocol};
use crate::config::model::ServerTls;
use crate::identity::PeerCertificate;
use crate::tls::sniff::{classify, FirstBytes, MAX_HELLO};

/// What [`read_first_bytes`] says when the peer closed without sending anything.
pub(super) const CLOSED_BEFORE_HELLO: &str = "client closed before sending anything";
/// What [`read_first_bytes`] says when the connection was reset before any byte arrived
/// (under STRICT: the kernel's reset of a plaintext client).
pub(super) const RESET_BEFORE_HELLO: &str = "connection reset before any byte arrived";

/// How long a client may take to send its ClientHello before we hang up.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound listening socket for one Gateway port.
pub struct BoundListener {
    pub port: u16,
    pub listener: TcpListener,
}

/// Errors binding listeners, with the address that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}{hint}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
    hint: &'static str,
}

/// Binds every listener port of the current snapshot on `bind`, plus `port_offset` (so an
/// unprivileged user can run a config that names 80/443).
pub fn bind_listeners(
    gateway: &Gateway,
    bind: IpAddr,
    port_offset: u16,
) -> Result<Vec<BoundListener>, BindError> {
    let snapshot = gateway.snapshot();
    let mut out = Vec::new();
    for l in &snapshot.listeners {
        let addr = SocketAddr::new(bind, l.port.saturating_add(port_offset));
        let listener = bind_one(addr).map_err(|source| {
            let hint = match source.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    " (ports below 1024 need root or CAP_NET_BIND_SERVICE; try --port-offset)"
                }
                std::io::ErrorKind::AddrInUse => " (another process is listening there)",
                _ => "",
            };
            BindError { addr, source, hint }
        })?;
        out.push(BoundListener {
            port: l.port,
            listener,
        });
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves the listeners until `shutdown` resolves, then drains open connections.
pub async fn serve(
    gateway: Arc<Gateway>,
    listeners: Vec<BoundListener>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let active = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for bound in listeners {
        let addr = bound.listener.local_addr().ok();
        tracing::info!(port = bound.port, ?addr, "listening");
        loops.push(tokio::spawn(accept_loop(
            gateway.clone(),
            bound,
            stop_rx.clone(),
            active.clone(),
        )));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections");
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while active.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(open = active.load(Ordering::Relaxed), "stopped");
}

async fn accept_loop(
    gateway: Arc<Gateway>,
    bound: BoundListener,
    mut stop: watch::Receiver<bool>,
    active: Arc<AtomicUsize>,
) {
    loop {
        let accepted = tokio::select! {
            r = bound.listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(port = bound.port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        Stats::bump(&gateway.stats.connections_accepted);
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let span = tracing::info_span!("conn", %peer, port = bound.port, sni = tracing::field::Empty, principal = tracing::field::Empty);
        let gateway = gateway.clone();
        let active = active.clone();
        active.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(
            async move {
                handle_connection(gateway, bound.port, stream, peer, local).await;
                active.fetch_sub(1, Ordering::Relaxed);
            }
            .instrument(span),
        );
    }
}

async fn handle_connection(
    gateway: Arc<Gateway>,
    port: u16,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let snapshot = gateway.snapshot();
    let Some(listener) = snapshot.listeners.iter().find(|l| l.port == port) else {
        tracing::debug!("port no longer configured; closing");
        return;
    };
    let mut conn = ConnInfo::new(peer, local, port);
    if !listener.tls {
        serve_http(gateway, snapshot.clone(), conn, stream).await;
        return;
    }
    let (prefix, hello) = match read_client_hello(&mut stream).await {
        Ok(h) => h,
        // A client that connects and leaves without a byte is a TCP health check, not a
        // failed handshake.
        Err((_, CLOSED_BEFORE_HELLO)) => {
            tracing::debug!("connection closed before a ClientHello");
            return;
        }
        Err((failure, why)) => {
            Stats::bump(&gateway.stats.tls_handshake_failures);
            gateway.metrics.record_handshake_failure(failure);
            tracing::warn!(reason = why, "TLS handshake failed: no valid ClientHello");
            return;
        }
    };
    let sni = hello.server_name.clone();
    tracing::Span::current().record("sni", sni.as_deref().unwrap_or("-"));
    let Some(server) = listener.server_for_sni(sni.as_deref()) else {
        Stats::bump(&gateway.stats.tls_handshake_failures);
        gateway
            .metrics
            .record_handshake_failure(HandshakeFailure::no_sni_match);
        tracing::warn!(
            sni = sni.as_deref().unwrap_or("-"),
            "TLS handshake refused: no server on this port for this SNI"
        );
        return;
    };
    conn.sni = sni;
    conn.server = Some(server.clone());
    match &server.tls {
        None => {}
        Some(ServerTls::Passthrough) => {
            passthrough(&gateway, &snapshot, &server.gateway, conn, prefix, stream).await
        }
        Some(ServerTls::Terminate { config, .. }) => {
            if let Some(tls) = terminate(&gateway, config, prefix, stream, &mut conn).await {
                serve_http(gateway, snapshot.clone(), conn, tls).await;
            }
        }
    }
}

/// Completes the TLS handshake and records the verified client identity in `conn`.
pub(super) async fn terminate(
    gateway: &Gateway,
    config: &Arc<rustls::ServerConfig>,
    prefix: Bytes,
    stream: TcpStream,
    conn: &mut ConnInfo,
) -> Option<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
    let tls = match acceptor.accept(Prefixed::new(prefix, stream)).await {
        Ok(tls) => tls,
        Err(e) => {
            Stats::bump(&gateway.stats.tls_handshake_failures);
            gateway
                .metrics
                .record_handshake_failure(HandshakeFailure::from_io_error(&e));
            tracing::warn!(reason = %e, "TLS handshake failed");
            return None;
        }
    };
    let (_, session) = tls.get_ref();
    if let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) {
        match PeerCertificate::from_der(leaf) {
            Ok(cert) => conn.set_peer_cert(cert),
            Err(e) => {
                tracing::warn!(error = %e, "verified client certificate cannot be read; closing");
                return None;
            }
        }
    }
    tracing::Span::current().record("principal", conn.principal.as_deref().unwrap_or("-"));
    tracing::debug!(alpn = ?session.alpn_protocol().map(String::from_utf8_lossy), "TLS established");
    conn.tls = true;
    Some(tls)
}

/// Reads until the first TLS record (the ClientHello) is complete.
async fn read_client_hello(
    stream: &mut TcpStream,
) -> Result<(Bytes, crate::tls::sniff::ClientHelloInfo), (HandshakeFailure, &'static str)> {
    match read_first_bytes(stream).await {
        Ok((prefix, Some(hello))) => Ok((prefix, hello)),
        Ok((_, None)) => Err((
            HandshakeFailure::not_tls,
            "client spoke plaintext to a TLS port",
        )),
        Err(why) => Err((HandshakeFailure::other, why)),
    }
}

/// Reads until the connection's first bytes say plaintext (`None`) or a whole ClientHello.
pub(super) async fn read_first_bytes(
    stream: &mut TcpStream,
) -> Result<(Bytes, Option<crate::tls::sniff::ClientHelloInfo>), &'static str> {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            match classify(&buf) {
                FirstBytes::ClientHello(info) => return Ok(Some(info)),
                FirstBytes::Plaintext => return Ok(None),
                FirstBytes::BadTls(why) => return Err(why),
                FirstBytes::NeedMore if buf.len() >= MAX_HELLO => {
                    return Err("ClientHello too large")
                }
                FirstBytes::NeedMore => {}
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) if buf.is_empty() => return Err(CLOSED_BEFORE_HELLO),
                Ok(0) => return Err("client closed in the middle of its ClientHello"),
                Ok(_) => {}
                Err(e) if buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(RESET_BEFORE_HELLO)
                }
                Err(_) => return Err("connection error before the ClientHello"),
            }
        }
    };
    match tokio::time::timeout(HELLO_TIMEOUT, read).await {
        Ok(Ok(info)) => Ok((buf.freeze(), info)),
        Ok(Err(why)) => Err(why),
        Err(_) => Err("no ClientHello within 10s"),
    }
}

pub(super) async fn serve_http<S>(
    gateway: Arc<Gateway>,
    snapshot: Arc<crate::config::Snapshot>,
    conn: ConnInfo,
    stream: S,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let service = service_fn(move |req| {
        super::http::handle(gateway.clone(), snapshot.clone(), conn.clone(), req)
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Forwards a TLS connection, ClientHello included, to the upstream its SNI routes to.
async fn passthrough(
    gw: &Gateway,
    snapshot: &crate::config::Snapshot,
    gateway: &crate::config::model::GatewayRef,
    conn: ConnInfo,
    prefix: Bytes,
    mut stream: TcpStream,
) {
    let started = std::time::Instant::now();
    let sni = conn.sni.clone().unwrap_or_default();
    let Some(route) = snapshot.routes.tls(gateway, &sni, conn.port) else {
        tracing::warn!(sni = %sni, "passthrough: no tls route for this SNI; closing");
        return;
    };
    let Some(endpoint) = route.upstream.endpoints.first() else {
        return;
    };
    // One access line and one opened/closed pair per connection, failed or not.
    let finish = |flags: &'static str, received: u64, sent: u64| {
        let labels = gw.metrics.tcp_labels(
            &conn,
            Some(&route.upstream.service),
            RequestProtocol::tcp,
            flags,
        );
        gw.metrics.tcp_opened(&labels);
        gw.metrics.tcp_closed(&labels, sent, received);
        gw.access_log.write(&AccessEntry {
            kind: "passthrough",
            peer: Some(conn.peer),
            sni: Some(&sni),
            duration_ms: started.elapsed().as_millis() as u64,
            bytes_received: received,
            bytes_sent: sent,
            upstream: Some(endpoint),
            response_flags: flags,
            ..AccessEntry::default()
        });
    };
    let mut upstream = match TcpStream::connect(endpoint.as_str()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(upstream = %endpoint, error = %e, "passthrough: upstream connect failed");
            finish(flags::UPSTREAM_FAILURE, 0, 0);
            return;
        }
    };
    if upstream.write_all(&prefix).await.is_err() {
        finish(flags::UPSTREAM_RESET, 0, 0);
        return;
    }
    match tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
        Ok((up, down)) => finish(flags::NONE, up + prefix.len() as u64, down),
        Err(e) => {
            tracing::debug!(error = %e, "passthrough ended");
            finish(flags::NONE, prefix.len() as u64, 0);
        }
    }
}
