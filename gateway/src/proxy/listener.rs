//! The ingress gateway: one listener per Gateway port, bound and unbound live as reloads add
//! and remove ports; TLS first-bytes inspection, termination and passthrough.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::conn::ConnInfo;
use super::io::Prefixed;
use super::limits::LimitReason;
use super::serve::{self, accept_loop, ConnPermit, Drain, DrainSignal, HttpConn, Revalidate};
use super::telemetry::access_log::AccessEntry;
use super::telemetry::metrics::{HandshakeFailure, RequestProtocol};
use super::telemetry::ResponseFlags;
use super::{Gateway, Stats};
use crate::identity::PeerCertificate;
use crate::snapshot::model::ServerTls;
use crate::tls::sniff::{classify, ClientHelloInfo, FirstBytes, MAX_HELLO};
use crate::tls::{verify_client_chain, ServerTlsMode};

/// Why no first bytes could be read: typed, because the callers treat "closed before
/// anything" (a health check, or the kernel's STRICT reset) differently from a bad client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FirstBytesError {
    #[error("client closed before sending anything")]
    ClosedBeforeHello,
    /// Under STRICT: the kernel's reset of a plaintext client.
    #[error("connection reset before any byte arrived")]
    ResetBeforeHello,
    #[error("{0}")]
    BadTls(&'static str),
    #[error("ClientHello too large")]
    TooLarge,
    #[error("client closed in the middle of its ClientHello")]
    ClosedMidHello,
    #[error("connection error before the ClientHello")]
    Io,
}

impl FirstBytesError {
    /// Nothing was ever sent: not a failed handshake.
    pub fn is_empty_connection(self) -> bool {
        matches!(self, Self::ClosedBeforeHello | Self::ResetBeforeHello)
    }
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

/// The ingress gateway's listeners: one per Gateway port of the newest snapshot.
pub struct Ingress {
    gateway: Arc<Gateway>,
    bind: IpAddr,
    port_offset: u16,
    bound: BTreeMap<u16, TcpListener>,
}

impl Ingress {
    /// Binds every Gateway port of the current snapshot on `bind`, plus `port_offset` (so an
    /// unprivileged user can run a config that names 80/443). A port that cannot be bound
    /// fails the start.
    pub fn new(gateway: Arc<Gateway>, bind: IpAddr, port_offset: u16) -> Result<Self, BindError> {
        let mut bound = BTreeMap::new();
        for port in gateway_ports(&gateway.snapshot()) {
            bound.insert(port, bind_port(bind, port, port_offset)?);
        }
        Ok(Self {
            gateway,
            bind,
            port_offset,
            bound,
        })
    }

    /// The Gateway ports bound now (before the offset).
    pub fn ports(&self) -> Vec<u16> {
        self.bound.keys().copied().collect()
    }

    /// The local address of each bound port.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.bound
            .values()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `drain` starts. Ports that a reload adds are bound (a port that cannot
    /// be bound is reported and tried again on the next reload); ports it removes stop
    /// accepting, while their open connections finish.
    pub async fn run(self, mut drain: DrainSignal) {
        let Self {
            gateway,
            bind,
            port_offset,
            bound,
        } = self;
        let mut reloads = gateway.bus().subscribe();
        let mut running: BTreeMap<u16, (Drain, JoinHandle<()>)> = BTreeMap::new();
        for (port, listener) in bound {
            running.insert(port, spawn_port(&gateway, port, listener, &drain));
        }
        loop {
            tokio::select! {
                _ = drain.draining() => break,
                changed = reloads.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let want = gateway_ports(&reloads.borrow_and_update());
                    running.retain(|port, (stop, _)| {
                        let keep = want.contains(port);
                        if !keep {
                            tracing::info!(port, "Gateway port removed: no longer listening");
                            stop.start();
                        }
                        keep
                    });
                    for port in want {
                        if running.contains_key(&port) {
                            continue;
                        }
                        match bind_port(bind, port, port_offset) {
                            Ok(listener) => {
                                running.insert(port, spawn_port(&gateway, port, listener, &drain));
                            }
                            Err(e) => tracing::error!(port, error = %e, "Gateway port added but not bound"),
                        }
                    }
                }
            }
        }
        for (stop, _) in running.values() {
            stop.start();
        }
        // The accept loops hand their queued connections over before the process counts
        // what is left open.
        for (_, task) in running.into_values() {
            let _ = task.await;
        }
    }
}

fn gateway_ports(snapshot: &crate::snapshot::Snapshot) -> Vec<u16> {
    snapshot.listeners.iter().map(|l| l.port).collect()
}

/// Starts one port's accept loop; the returned drain stops it (the task ends once the
/// listener is closed). Its connections follow the process `drain`.
fn spawn_port(
    gateway: &Arc<Gateway>,
    port: u16,
    listener: TcpListener,
    drain: &DrainSignal,
) -> (Drain, JoinHandle<()>) {
    let addr = listener.local_addr().ok();
    tracing::info!(port, ?addr, "listening");
    // Stopped by its removal, or by `Ingress::run` when the process drains.
    let stop = Drain::new();
    let (gw, conn_drain) = (gateway.clone(), drain.clone());
    let task = tokio::spawn(accept_loop(
        listener,
        "ingress",
        gateway.admission(),
        stop.signal(),
        move |stream: TcpStream, peer, permit| {
            let local = stream.local_addr().unwrap_or(peer);
            let span = tracing::info_span!("conn", %peer, port, sni = tracing::field::Empty, principal = tracing::field::Empty);
            handle_connection(
                gw.clone(),
                port,
                stream,
                peer,
                local,
                conn_drain.clone(),
                permit,
            )
            .instrument(span)
        },
    ));
    (stop, task)
}

fn bind_port(bind: IpAddr, port: u16, port_offset: u16) -> Result<TcpListener, BindError> {
    let addr = SocketAddr::new(bind, port.saturating_add(port_offset));
    bind_one(addr).map_err(|source| {
        let hint = match source.kind() {
            std::io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE; try --port-offset)"
            }
            std::io::ErrorKind::AddrInUse => " (another process is listening there)",
            _ => "",
        };
        BindError { addr, source, hint }
    })
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

async fn handle_connection(
    gateway: Arc<Gateway>,
    port: u16,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    drain: DrainSignal,
    permit: ConnPermit,
) {
    Stats::bump(&gateway.stats.connections_accepted);
    let _permit = permit;
    let snapshot = gateway.snapshot();
    let Some(listener) = snapshot.listeners.iter().find(|l| l.port == port) else {
        tracing::debug!("port no longer configured; closing");
        return;
    };
    let mut conn = ConnInfo::new(peer, local, port);
    if !listener.tls {
        Box::pin(serve_http(gateway, conn, stream, drain, None)).await;
        return;
    }
    // One deadline for the whole handshake: the ClientHello and everything after it.
    let deadline = gateway.limits.tls_handshake_timeout;
    let handshake = async {
        let (prefix, hello) = match read_client_hello(&mut stream).await {
            Ok(h) => h,
            // A client that connects and leaves without a byte is a TCP health check, not a
            // failed handshake.
            Err((_, why)) if why.is_empty_connection() => {
                tracing::debug!("connection closed before a ClientHello");
                return None;
            }
            Err((failure, why)) => {
                Stats::bump(&gateway.stats.tls_handshake_failures);
                gateway.metrics.record_handshake_failure(failure);
                tracing::warn!(reason = %why, "TLS handshake failed: no valid ClientHello");
                return None;
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
            return None;
        };
        conn.sni = sni;
        Some((prefix, server))
    };
    let (prefix, server) = match Box::pin(serve::within(deadline, handshake)).await {
        Ok(Some(found)) => found,
        Ok(None) => return,
        Err(()) => {
            LimitReason::tls_handshake_timeout.fire(&gateway.metrics, Some(peer));
            return;
        }
    };
    match &server.tls {
        None => {}
        Some(ServerTls::Passthrough) => {
            Box::pin(passthrough(
                &gateway,
                &snapshot,
                &server.gateway,
                conn,
                prefix,
                stream,
            ))
            .await
        }
        Some(ServerTls::Terminate { config, .. }) => {
            // Boxed, the handshake and the serving each take memory only while they run:
            // the task itself stays small, instead of holding room for both (and the copies
            // the state machine makes when one is moved into the other) on every idle
            // connection.
            // The handshake verifies the client under this snapshot's settings.
            conn.verified_generation.set(snapshot.generation);
            let tls = Box::pin(serve::within(
                deadline,
                terminate(&gateway, config, prefix, stream, &mut conn),
            ))
            .await;
            match tls {
                Ok(Some(tls)) => {
                    let revalidate = Some(recheck_client(&gateway, &conn));
                    Box::pin(serve_http(gateway, conn, tls, drain, revalidate)).await
                }
                Ok(None) => {}
                Err(()) => LimitReason::tls_handshake_timeout.fire(&gateway.metrics, Some(peer)),
            }
        }
    }
}

/// After a reload: may this connection stay open under the newest server for its port and
/// SNI? The server may be gone, may now be MUTUAL while the connection presented no client
/// certificate, or its CA, CRL or subjectAltNames may have changed (issue 12 part 4). Every
/// terminated connection is re-checked: one without a certificate too, or a server switched
/// from SIMPLE to MUTUAL would keep serving its open connections unauthenticated.
fn recheck_client(gateway: &Arc<Gateway>, conn: &ConnInfo) -> Revalidate {
    let (gateway, port, sni) = (gateway.clone(), conn.port, conn.sni.clone());
    let chain = conn.peer_chain.clone();
    Box::new(move || {
        let snapshot = gateway.snapshot();
        let server = snapshot
            .listeners
            .iter()
            .find(|l| l.port == port)
            .and_then(|l| l.server_for_sni(sni.as_deref()));
        match recheck_verdict(&snapshot, server.and_then(|s| s.tls.as_ref()), &chain) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(reason = %why, "connection re-checked after a reload: refused");
                false
            }
        }
    })
}

/// The reload re-check's decision for a connection that presented `chain` (maybe empty); also
/// what a request under a newer snapshot than its connection was verified under asks first.
pub(super) fn recheck_verdict(
    snapshot: &crate::snapshot::Snapshot,
    tls: Option<&ServerTls>,
    chain: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<(), String> {
    match tls {
        Some(ServerTls::Terminate {
            mode: ServerTlsMode::Mutual,
            ..
        }) if chain.is_empty() => {
            Err("the server now requires a client certificate and none was presented".to_owned())
        }
        Some(ServerTls::Terminate {
            mode: ServerTlsMode::Mutual,
            credential_name,
            client_checks,
            ..
        }) => match snapshot.credentials.get(credential_name) {
            Some(cred) => verify_client_chain(cred, client_checks, chain),
            None => Err(format!("credential {credential_name} is gone")),
        },
        // SIMPLE now: the server asks nothing of the client any more.
        Some(ServerTls::Terminate { .. }) => Ok(()),
        _ => Err("no server for this port and SNI any more".to_owned()),
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
    if let Some(chain) = session.peer_certificates() {
        conn.peer_chain = chain.iter().map(|c| c.clone().into_owned()).collect();
    }
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
) -> Result<(Bytes, ClientHelloInfo), (HandshakeFailure, FirstBytesError)> {
    match read_first_bytes(stream).await {
        Ok((prefix, Some(hello))) => Ok((prefix, hello)),
        Ok((_, None)) => Err((
            HandshakeFailure::not_tls,
            FirstBytesError::BadTls("client spoke plaintext to a TLS port"),
        )),
        Err(why) => Err((HandshakeFailure::other, why)),
    }
}

/// Reads until the connection's first bytes say plaintext (`None`) or a whole ClientHello.
/// No deadline of its own: callers run it under the TLS handshake deadline.
pub(super) async fn read_first_bytes(
    stream: &mut TcpStream,
) -> Result<(Bytes, Option<ClientHelloInfo>), FirstBytesError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match classify(&buf) {
            FirstBytes::ClientHello(info) => return Ok((buf.freeze(), Some(info))),
            FirstBytes::Plaintext => return Ok((buf.freeze(), None)),
            FirstBytes::BadTls(why) => return Err(FirstBytesError::BadTls(why)),
            FirstBytes::NeedMore if buf.len() >= MAX_HELLO => {
                return Err(FirstBytesError::TooLarge)
            }
            FirstBytes::NeedMore => {}
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return Err(FirstBytesError::ClosedBeforeHello),
            Ok(0) => return Err(FirstBytesError::ClosedMidHello),
            Ok(_) => {}
            Err(e) if buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(FirstBytesError::ResetBeforeHello)
            }
            Err(_) => return Err(FirstBytesError::Io),
        }
    }
}

/// Serves HTTP on an accepted (and maybe terminated) connection through the shared
/// deadlines and drain. Each request is decided by the newest snapshot; `revalidate` says,
/// after a reload, whether the connection's client may stay.
///
/// Not an `async fn`, for the reason given on [`serve::serve_http`].
pub(super) fn serve_http<S>(
    gateway: Arc<Gateway>,
    conn: ConnInfo,
    stream: S,
    drain: DrainSignal,
    revalidate: Option<Revalidate>,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let http = HttpConn {
        peer: conn.peer,
        limits: gateway.limits.clone(),
        metrics: gateway.metrics.clone(),
        drain,
        reloads: revalidate.map(|f| (gateway.bus().subscribe(), f)),
    };
    serve::serve_http(stream, http, move |req| {
        let (gateway, conn) = (gateway.clone(), conn.clone());
        // Boxed per request: hyper keeps one slot the size of this future for the whole
        // connection, so unboxed it cost every idle connection ~4 KB.
        Box::pin(async move {
            let snapshot = gateway.snapshot();
            match super::http::handle(gateway, snapshot, conn, req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        })
    })
}

/// Forwards a TLS connection, ClientHello included, to the upstream its SNI routes to.
async fn passthrough(
    gw: &Gateway,
    snapshot: &crate::snapshot::Snapshot,
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
    let finish = |flags: ResponseFlags, received: u64, sent: u64| {
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
    let connect = serve::within(
        gw.limits.upstream_connect_timeout,
        TcpStream::connect(endpoint.as_str()),
    );
    let mut upstream = match connect.await {
        Ok(Ok(s)) => s,
        Err(()) => {
            LimitReason::upstream_connect_timeout.fire(&gw.metrics, Some(conn.peer));
            finish(ResponseFlags::UpstreamConnectionFailure, 0, 0);
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(upstream = %endpoint, error = %e, "passthrough: upstream connect failed");
            finish(ResponseFlags::UpstreamConnectionFailure, 0, 0);
            return;
        }
    };
    if upstream.write_all(&prefix).await.is_err() {
        finish(ResponseFlags::UpstreamConnectionTermination, 0, 0);
        return;
    }
    match tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
        Ok((up, down)) => finish(ResponseFlags::None, up + prefix.len() as u64, down),
        Err(e) => {
            tracing::debug!(error = %e, "passthrough ended");
            finish(ResponseFlags::None, prefix.len() as u64, 0);
        }
    }
}
