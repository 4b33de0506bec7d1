//! Per-request work: route, authorize, forward, log.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::conn::ConnInfo;
use super::headers::{
    drop_untrusted_headers, has_padded_value, outbound_request, set_forwarding_headers,
    strip_hop_by_hop,
};
use super::limits::LimitReason;
use super::target::{raw_authority, request_authority, RequestTarget};
use super::telemetry::access_log::AccessEntry;
use super::telemetry::metrics::{RequestProtocol, RequestRecord};
use super::telemetry::ResponseFlags;
use super::Gateway;
use crate::config::hosts::{authority_host, best_match};
use crate::config::model::GatewayRef;
use crate::policy::authz::{Decision, RequestAttrs};
use crate::snapshot::model::{MeshInbound, ServerTls};
use crate::snapshot::Snapshot;
use crate::tls::ServerTlsMode;

/// Response bodies: streamed from upstream, or made here.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Envoy's body for an RBAC denial; clients and tests match it exactly.
pub const RBAC_DENIED: &str = "RBAC: access denied";

fn local(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Handles one request on a connection. Never fails: every problem becomes a response.
pub async fn handle(
    gateway: Arc<Gateway>,
    snapshot: Arc<Snapshot>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    // Before anything reads the headers: policies must not match what the upstream never sees.
    drop_untrusted_headers(req.headers_mut(), &gateway.metrics, &conn);
    let method = req.method().clone();
    // Routes, policies, the access log and the upstream's Host all get this one canonical
    // authority; a refused one is logged as received.
    let checked_authority = request_authority(&req);
    let authority = match &checked_authority {
        Ok(a) => a.to_string(),
        Err(_) => raw_authority(&req),
    };

    let protocol = match req.headers().get(http::header::CONTENT_TYPE) {
        Some(ct) if ct.as_bytes().starts_with(b"application/grpc") => RequestProtocol::grpc,
        _ => RequestProtocol::http,
    };
    let request_bytes = body_len(req.body());
    let record = Record {
        gateway: &gateway,
        conn: &conn,
        started,
        method: method.as_str(),
        authority: &authority,
        protocol,
        request_bytes,
    };

    // The one normalization: routes, policies, metrics, the access log and the upstream all
    // get this path, and the query string as received.
    let mode = snapshot.settings.path_normalization;
    let target = RequestTarget::of(req.uri(), mode);
    let (out, logged_path) = match (checked_authority, target) {
        (Err(e), _) => {
            tracing::info!(
                peer = %conn.peer,
                principal = conn.principal.as_deref().unwrap_or("-"),
                authority = ?authority,
                reason = e.reason(),
                "host refused: {e}"
            );
            gateway.metrics.record_refused(e.reason());
            let out = Outcome::refused(StatusCode::BAD_REQUEST, "bad request: host refused");
            (out, req.uri().path().to_owned())
        }
        (Ok(_), _) if has_padded_value(req.headers()) => {
            tracing::info!(
                peer = %conn.peer,
                principal = conn.principal.as_deref().unwrap_or("-"),
                "request refused: a header value starts or ends with whitespace"
            );
            gateway.metrics.record_refused("header_value_whitespace");
            let out = Outcome::refused(StatusCode::BAD_REQUEST, "bad request: header refused");
            (out, req.uri().path().to_owned())
        }
        (Ok(_), _) if crate::policy::method_refused(method.as_str()) => {
            tracing::info!(
                peer = %conn.peer,
                principal = conn.principal.as_deref().unwrap_or("-"),
                method = %method,
                "method refused: lowercase letters"
            );
            gateway.metrics.record_refused("lowercase_method");
            let out = Outcome::refused(StatusCode::BAD_REQUEST, "bad request: method refused");
            (out, req.uri().path().to_owned())
        }
        // Fail closed rather than forward a verified client without its XFCC (set_peer_cert
        // logged why, once per connection).
        (Ok(_), _) if conn.xfcc_unencodable() => {
            gateway.metrics.record_refused("unencodable_client_cert");
            let out = Outcome::refused(
                StatusCode::BAD_REQUEST,
                "bad request: client certificate cannot be forwarded",
            );
            (out, req.uri().path().to_owned())
        }
        (Ok(_), Ok(target)) => {
            let progress = Progress::default();
            let guard = LogIfAbandoned {
                record: &record,
                path: &target.path_and_query,
                progress: &progress,
                armed: true,
            };
            let out = route_and_forward(
                &gateway, &snapshot, &conn, req, &authority, &target, &progress,
            )
            .await;
            guard.disarm();
            (out, target.path_and_query)
        }
        (Ok(_), Err(e)) => {
            let received = req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_owned());
            tracing::info!(
                peer = %conn.peer,
                principal = conn.principal.as_deref().unwrap_or("-"),
                path = %received,
                mode = %mode,
                reason = e.reason(),
                "path refused: {e}"
            );
            gateway.metrics.record_refused(e.reason());
            let out = Outcome::refused(StatusCode::BAD_REQUEST, "bad request: path refused");
            (out, received)
        }
    };
    record.write(&Ending {
        path: &logged_path,
        status: out.resp.status().as_u16(),
        response_bytes: body_len(out.resp.body()),
        flags: out.flags,
        decision: out.decision.as_ref(),
        upstream: out.upstream.as_deref(),
        service: out.service,
    });
    Ok(out.resp)
}

/// What the access log and the request metrics say of one request, whatever became of it.
struct Record<'a> {
    gateway: &'a Gateway,
    conn: &'a ConnInfo,
    started: Instant,
    method: &'a str,
    authority: &'a str,
    protocol: RequestProtocol,
    request_bytes: u64,
}

/// How a request ended, for [`Record::write`].
struct Ending<'a, 's> {
    path: &'a str,
    /// 0 when no response was sent (the client went away first).
    status: u16,
    response_bytes: u64,
    flags: ResponseFlags,
    decision: Option<&'a Decision>,
    upstream: Option<&'a str>,
    service: Option<&'s str>,
}

impl Record<'_> {
    fn write(&self, e: &Ending<'_, '_>) {
        let duration = self.started.elapsed();
        self.gateway.metrics.record_request(&RequestRecord {
            conn: self.conn,
            service: e.service,
            protocol: self.protocol,
            status: e.status,
            flags: e.flags,
            duration,
            request_bytes: self.request_bytes,
            response_bytes: e.response_bytes,
        });
        self.gateway.access_log.write(&AccessEntry {
            kind: "http",
            peer: Some(self.conn.peer),
            sni: self.conn.sni.as_deref(),
            principal: self.conn.principal.as_deref(),
            method: Some(self.method),
            authority: Some(self.authority),
            path: Some(e.path),
            status: Some(e.status),
            duration_ms: duration.as_millis() as u64,
            bytes_received: self.request_bytes,
            bytes_sent: e.response_bytes,
            authz: e.decision.map(ToString::to_string),
            policy: e
                .decision
                .and_then(|d| d.decided_by())
                .map(|p| format!("{}/{}", p.namespace, p.name)),
            upstream: e.upstream,
            response_flags: e.flags,
        });
    }
}

/// How far a request got on its way upstream: what a request the client abandons is logged
/// with.
#[derive(Default)]
struct Progress<'s> {
    /// Set once the request is authorized and about to go to the upstream.
    forwarded: std::sync::OnceLock<(Decision, String, Option<&'s str>)>,
}

/// Writes the access-log line and the metrics of a request whose client went away before
/// the answer (HTTP/2 RST_STREAM, a closed connection): hyper then drops the request's
/// future, and without this the upstream could have served it with no trace (Envoy logs
/// such requests with status 0 and flag `DC`).
struct LogIfAbandoned<'a, 's> {
    record: &'a Record<'a>,
    path: &'a str,
    progress: &'a Progress<'s>,
    armed: bool,
}

impl LogIfAbandoned<'_, '_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for LogIfAbandoned<'_, '_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (decision, upstream, service) = match self.progress.forwarded.get() {
            Some((d, u, s)) => (Some(d), Some(u.as_str()), *s),
            None => (None, None, None),
        };
        self.record.write(&Ending {
            path: self.path,
            status: 0,
            response_bytes: 0,
            flags: ResponseFlags::DownstreamConnectionTermination,
            decision,
            upstream,
            service,
        });
    }
}

/// A body's length when it is known up front (`Content-Length`, local bodies); the lower
/// bound otherwise, so a streamed body counts as 0 rather than being buffered to measure it.
fn body_len(body: &impl hyper::body::Body) -> u64 {
    let hint = body.size_hint();
    hint.exact().unwrap_or(hint.lower())
}

/// What became of one request, for the metrics and the access log.
struct Outcome<'s> {
    resp: Response<Body>,
    decision: Option<Decision>,
    /// The endpoint the request went to.
    upstream: Option<String>,
    /// The destination service of the gateway route taken.
    service: Option<&'s str>,
    /// Envoy's response flag for what went wrong in the proxy, `-` for nothing.
    flags: ResponseFlags,
}

impl Outcome<'_> {
    /// An answer the gateway gives itself: the request goes nowhere.
    fn refused(status: StatusCode, body: &'static str) -> Self {
        Self {
            resp: local(status, body),
            decision: None,
            upstream: None,
            service: None,
            flags: ResponseFlags::DownstreamProtocolError,
        }
    }

    /// 421 for a request this connection may not carry. With `close` (the newest
    /// configuration no longer serves the connection at all) HTTP/1 closes after it; an
    /// HTTP/2 connection, which has no Connection header, is closed by the reload's re-check
    /// (`listener::recheck_client`).
    fn misdirected(version: Version, close: bool) -> Self {
        let mut resp = local(StatusCode::MISDIRECTED_REQUEST, "misdirected request");
        if close && version < Version::HTTP_2 {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        Self {
            resp,
            decision: None,
            upstream: None,
            service: None,
            flags: ResponseFlags::NoRouteFound,
        }
    }
}

async fn route_and_forward<'s>(
    gateway: &Gateway,
    snapshot: &'s Snapshot,
    conn: &'s ConnInfo,
    mut req: Request<Incoming>,
    authority: &str,
    target: &RequestTarget,
    progress: &Progress<'s>,
) -> Outcome<'s> {
    let path = target.path.as_str();
    let no_route = || Outcome {
        resp: local(StatusCode::NOT_FOUND, ""),
        decision: None,
        upstream: None,
        service: None,
        flags: ResponseFlags::NoRouteFound,
    };
    // Inbound mesh connections go to the local app on their original port; gateway
    // connections are routed by their VirtualServices.
    let (authz, endpoint, timeout, service) = if let Some(inbound) = &conn.inbound {
        // The newest snapshot's policies, not the ones the connection was accepted under.
        let Some(mesh) = snapshot.mesh.as_ref() else {
            return Outcome {
                resp: local(StatusCode::SERVICE_UNAVAILABLE, "no mesh configuration"),
                decision: None,
                upstream: None,
                service: None,
                flags: ResponseFlags::NoRouteFound,
            };
        };
        if !mesh_peer_passes(snapshot, mesh, conn) {
            gateway.metrics.record_refused("misdirected");
            return Outcome::misdirected(req.version(), true);
        }
        (&*mesh.authz, inbound.app.to_string(), None, "inbound")
    } else {
        let host = authority_host(authority);
        let gateway_ref = match server_gateway(snapshot, conn, &host) {
            Ok(g) => g,
            Err(NoServer::NoRoute) => return no_route(),
            Err(why @ (NoServer::Misdirected | NoServer::Stale)) => {
                let stale = why == NoServer::Stale;
                if stale {
                    tracing::info!(peer = %conn.peer, sni = conn.sni.as_deref().unwrap_or("-"), authority, "misdirected request: the newest configuration no longer serves this connection (its server for this SNI is gone or now needs a client certificate); closing");
                } else {
                    tracing::debug!(peer = %conn.peer, sni = conn.sni.as_deref().unwrap_or("-"), authority, "misdirected request: the host is not served by this connection's TLS server");
                }
                gateway.metrics.record_refused("misdirected");
                return Outcome::misdirected(req.version(), stale);
            }
        };
        let Some(route) = snapshot
            .routes
            .http(&gateway_ref, authority, path, conn.port)
        else {
            return no_route();
        };
        let endpoint = gateway.upstream.pick(&route.upstream).to_owned();
        (
            &*snapshot.authz,
            endpoint,
            route.timeout,
            route.upstream.service.as_str(),
        )
    };
    // Inbound requests report the workload's service as unknown, as Istio does without
    // peer metadata.
    let metric_service = conn.inbound.is_none().then_some(service);
    let routed = |resp, decision, upstream, flags| Outcome {
        resp,
        decision: Some(decision),
        upstream,
        service: metric_service,
        flags,
    };
    // The headers the upstream will get, set before authorization reads them: a policy on
    // `x-forwarded-proto`, XFCC, `host` or a field named in `Connection` decides what the
    // upstream sees, not what the client claimed (Envoy's connection manager does the same
    // before its filters run).
    set_forwarding_headers(req.headers_mut(), conn, authority);
    let decision = authz.evaluate(&RequestAttrs {
        principal: conn.principal.as_deref(),
        source_namespace: conn
            .peer_cert
            .as_ref()
            .and_then(|c| c.identity.as_ref())
            .and_then(|i| i.namespace()),
        source_ip: conn.peer.ip(),
        remote_ip: conn.peer.ip(),
        host: authority,
        port: conn.port,
        method: req.method().as_str(),
        path,
        headers: req.headers(),
        sni: conn.sni.as_deref(),
    });
    if !decision.is_allowed() {
        gateway.metrics.record_denied(&decision);
        return routed(
            local(StatusCode::FORBIDDEN, RBAC_DENIED),
            decision,
            None,
            ResponseFlags::None,
        );
    }
    let _ = progress
        .forwarded
        .set((decision.clone(), endpoint.clone(), metric_service));
    let outbound = match outbound_request(req, conn, &gateway.metrics, &target.path_and_query) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the upstream request");
            return routed(
                local(StatusCode::BAD_REQUEST, "bad request"),
                decision,
                Some(endpoint),
                ResponseFlags::None,
            );
        }
    };
    let Some(permit) = gateway.upstream.admit(&endpoint) else {
        LimitReason::upstream_overflow.fire(&gateway.metrics, Some(conn.peer));
        return routed(
            local(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ),
            decision,
            Some(endpoint),
            ResponseFlags::UpstreamOverflow,
        );
    };
    let call = gateway.upstream.send(permit, outbound);
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, call).await {
            Ok(r) => r,
            Err(_) => {
                LimitReason::upstream_request_timeout.fire(&gateway.metrics, Some(conn.peer));
                return routed(
                    local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                    decision,
                    Some(endpoint),
                    ResponseFlags::UpstreamRequestTimeout,
                );
            }
        },
        None => call.await,
    };
    match result {
        Ok(mut resp) => {
            strip_hop_by_hop(resp.headers_mut());
            routed(
                resp.map(BodyExt::boxed),
                decision,
                Some(endpoint),
                ResponseFlags::None,
            )
        }
        Err(e) => {
            tracing::warn!(upstream = %endpoint, service = %service, error = %e, "upstream request failed");
            if e.is_connect_timeout() {
                LimitReason::upstream_connect_timeout.fire(&gateway.metrics, Some(conn.peer));
            }
            let (resp, flag) = if e.is_connect() {
                (local(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error or disconnect/reset before headers. reset reason: connection failure"), ResponseFlags::UpstreamConnectionFailure)
            } else {
                (
                    local(
                        StatusCode::BAD_GATEWAY,
                        "upstream reset before response headers",
                    ),
                    ResponseFlags::UpstreamConnectionTermination,
                )
            };
            routed(resp, decision, Some(endpoint), flag)
        }
    }
}

/// Why a request has no Gateway server.
#[derive(Debug, PartialEq, Eq)]
enum NoServer {
    /// Plain HTTP, and no server on the port serves the host.
    NoRoute,
    /// TLS, and the host is not one of the hosts of the connection's server.
    Misdirected,
    /// TLS, and the newest configuration's server for this connection's SNI is gone or asks
    /// for a client certificate this connection never presented: it cannot be served again.
    /// Answered 421 with `Connection: close`, so the client retries on a new connection, whose
    /// handshake the new server then decides.
    Stale,
}

/// The Gateway this request belongs to: the TLS server chosen by SNI, or for plain HTTP the
/// server on this port whose hosts match the Host header best.
///
/// A TLS connection routes only the hosts of its own server, as Envoy builds one route table
/// per HTTPS server: otherwise a client completes a SIMPLE handshake for one host and sends
/// the `Host` of a MUTUAL server on the same port, reaching its backend with no client
/// certificate. The answer is `421 Misdirected Request` (RFC 9110 §15.5.20) rather than
/// Envoy's `404`: an HTTP/2 client that reused a connection for another origin its certificate
/// also covers (RFC 9113 §9.1.1) retries a 421 on a new connection (§9.1.2), with the right
/// SNI and handshake, where a 404 would be shown to the user as a missing page.
///
/// "Its own server" is looked up again in `snapshot` (the newest) by port and SNI on every
/// request, not kept from the handshake: a reload may move a host to another server or switch
/// a server to MUTUAL, and a connection accepted before must not keep the old server's hosts
/// or its lack of a client-certificate requirement.
fn server_gateway(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    host: &str,
) -> Result<GatewayRef, NoServer> {
    let listener = snapshot.listeners.iter().find(|l| l.port == conn.port);
    // Only TLS terminated by a Gateway server gets here with `tls` set: the mesh terminator's
    // connections take the inbound path.
    if conn.tls {
        let server = listener
            .and_then(|l| l.server_for_sni(conn.sni.as_deref()))
            .ok_or(NoServer::Stale)?;
        if !serves_connection(snapshot, server, conn) {
            return Err(NoServer::Stale);
        }
        if !server.hosts.iter().any(|h| h.matches(host)) {
            return Err(NoServer::Misdirected);
        }
        // The host must pick this same server as an SNI would: a wildcard SIMPLE server
        // (`*.test`) matches `mutual.test` too, but on a port where a MUTUAL server owns
        // `mutual.test` its connection must not reach that host's routes without the
        // certificate the MUTUAL handshake asks for.
        let owner = listener.and_then(|l| l.server_for_sni(Some(host)));
        if !owner.is_some_and(|o| std::ptr::eq(o, server)) {
            return Err(NoServer::Misdirected);
        }
        return Ok(server.gateway.clone());
    }
    best_match(
        listener
            .ok_or(NoServer::NoRoute)?
            .servers
            .iter()
            .flat_map(|s| s.hosts.iter().map(move |h| (h, s))),
        host,
    )
    .map(|s| s.gateway.clone())
    .ok_or(NoServer::NoRoute)
}

/// Whether the peer of an inbound mesh connection may still send requests under `snapshot`,
/// whose mesh settings are `mesh`. As [`serves_connection`] for Gateway servers: a chain last
/// verified under an older snapshot is verified again against the newest mesh CA and client
/// checks, once per connection per reload, so a request that slips in between a reload and
/// the reload's re-check of open connections is decided by the new settings. A connection
/// without a chain (PERMISSIVE plaintext) has nothing to verify.
pub(super) fn mesh_peer_passes(snapshot: &Snapshot, mesh: &MeshInbound, conn: &ConnInfo) -> bool {
    if conn.peer_chain.is_empty() || conn.verified_generation.get() == snapshot.generation {
        return true;
    }
    match crate::tls::verify_client_chain(&mesh.credential, &mesh.client_checks, &conn.peer_chain) {
        Ok(()) => {
            conn.verified_generation.set(snapshot.generation);
            true
        }
        Err(why) => {
            tracing::warn!(peer = %conn.peer, reason = %why, "peer certificate no longer passes the newest mesh configuration: request refused");
            false
        }
    }
}

/// Whether `server` (the newest for a TLS connection's port and SNI) may serve requests on
/// `conn`: it terminates TLS, and if it is MUTUAL the connection presented a chain that passes
/// this snapshot's settings (CA, CRL, subjectAltNames). The chain is verified again only when
/// the snapshot is newer than the one it last passed under — once per connection per reload —
/// so a request that slips in between a reload and the reload's own re-check of the open
/// connections (`listener::recheck_client`) is still decided under the new settings.
pub(super) fn serves_connection(
    snapshot: &Snapshot,
    server: &crate::snapshot::model::GatewayServer,
    conn: &ConnInfo,
) -> bool {
    match &server.tls {
        Some(ServerTls::Terminate { mode, .. }) if *mode != ServerTlsMode::Mutual => true,
        Some(ServerTls::Terminate { .. }) if conn.peer_chain.is_empty() => false,
        Some(tls @ ServerTls::Terminate { .. }) => {
            if conn.verified_generation.get() == snapshot.generation {
                return true;
            }
            match super::listener::recheck_verdict(snapshot, Some(tls), &conn.peer_chain) {
                Ok(()) => {
                    conn.verified_generation.set(snapshot.generation);
                    true
                }
                Err(why) => {
                    tracing::warn!(peer = %conn.peer, reason = %why, "client certificate no longer passes the newest configuration: request refused");
                    false
                }
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod reverify_tests {
    use super::*;
    use crate::config::{load_paths, Settings};
    use crate::identity::certs::{issue_demo_set, IssueRequest};

    /// The walkthrough's MUTUAL server with `tls_extra` added to its `tls`.
    fn mutual(dir: &std::path::Path, tls_extra: &str) -> Snapshot {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - hosts: [test.com]\n    port: {{number: 443, name: https, protocol: HTTPS}}\n    tls: {{mode: MUTUAL, credentialName: test.com{tls_extra}}}\n"
        );
        let file = dir.join(format!("gw-{}.yaml", tls_extra.len()));
        std::fs::write(&file, yaml).expect("write");
        let settings = Settings {
            credential_dirs: vec![dir.join("certs")],
            ..Settings::default()
        };
        crate::snapshot::compile(load_paths(&[file]).expect("loads"), settings).expect("compiles")
    }

    /// A request under a newer snapshot than the one its connection's certificate was last
    /// verified under verifies it again — so one slipping in between a reload and the
    /// reload's re-check of open connections is decided by the new subjectAltNames — and only
    /// once per snapshot.
    #[test]
    fn a_request_under_a_newer_snapshot_verifies_the_client_again() {
        let dir = tempfile::tempdir().expect("tmp");
        issue_demo_set(&IssueRequest {
            out_dir: dir.path().join("certs"),
            ..IssueRequest::default()
        })
        .expect("certs");
        let pem = std::fs::read(dir.path().join("certs/clientcert.pem")).expect("client cert");
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .expect("pem");
        let accepted = mutual(dir.path(), "");
        let mut conn = ConnInfo::new(
            "127.0.0.1:40000".parse().expect("addr"),
            "127.0.0.1:443".parse().expect("addr"),
            443,
        );
        conn.tls = true;
        conn.peer_chain = chain.into();
        conn.verified_generation.set(accepted.generation);
        let server = |s: &Snapshot| s.listeners[0].servers[0].clone();
        assert!(serves_connection(&accepted, &server(&accepted), &conn));

        let narrowed = mutual(dir.path(), ", subjectAltNames: [spiffe://someone.else]");
        assert!(narrowed.generation > accepted.generation);
        assert!(
            !serves_connection(&narrowed, &server(&narrowed), &conn),
            "the certificate no longer passes the newest subjectAltNames"
        );
        assert_eq!(conn.verified_generation.get(), accepted.generation);

        let widened = mutual(dir.path(), ", subjectAltNames: [spiffe://test.client]");
        assert!(serves_connection(&widened, &server(&widened), &conn));
        assert_eq!(conn.verified_generation.get(), widened.generation);
    }

    /// A snapshot whose mesh terminator trusts `ca` (and presents a certificate from it).
    fn mesh_trusting(ca: &crate::identity::certs::Ca) -> Snapshot {
        use crate::snapshot::testing::{mesh_inbound, snapshot_with};
        let id = "spiffe://cluster.local/ns/default/sa/server";
        snapshot_with(mesh_inbound(
            ca,
            id,
            "server",
            Default::default(),
            Default::default(),
        ))
    }

    /// The mesh terminator's side of the same window: a peer whose chain the newest mesh CA
    /// no longer accepts (the root was rotated away from its issuer) is refused on its next
    /// request, though its connection was accepted, and a peer that passes is verified once.
    #[test]
    fn a_mesh_peer_under_a_newer_snapshot_is_verified_again() {
        use crate::identity::certs::{issue_workload_cert, Ca, KeyType};
        let old_ca = Ca::generate("old mesh CA", KeyType::EcdsaP256, 1).expect("ca");
        let new_ca = Ca::generate("new mesh CA", KeyType::EcdsaP256, 1).expect("ca");
        let peer = issue_workload_cert(
            &old_ca,
            "spiffe://cluster.local/ns/default/sa/sleep",
            &[],
            KeyType::EcdsaP256,
            1,
        )
        .expect("peer cert");
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls_pemfile::certs(&mut peer.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("pem");
        let mut conn = ConnInfo::new(
            "10.0.0.2:40000".parse().expect("addr"),
            "10.0.0.1:15006".parse().expect("addr"),
            80,
        );
        conn.tls = true;
        conn.peer_chain = chain.into();
        let accepted = mesh_trusting(&old_ca);
        conn.verified_generation.set(accepted.generation);
        let mesh = |s: &Snapshot| s.mesh.clone().expect("mesh");
        assert!(mesh_peer_passes(&accepted, &mesh(&accepted), &conn));

        let same_ca_again = mesh_trusting(&old_ca);
        assert!(same_ca_again.generation > accepted.generation);
        assert!(mesh_peer_passes(
            &same_ca_again,
            &mesh(&same_ca_again),
            &conn
        ));
        assert_eq!(conn.verified_generation.get(), same_ca_again.generation);

        let rotated = mesh_trusting(&new_ca);
        assert!(
            !mesh_peer_passes(&rotated, &mesh(&rotated), &conn),
            "a chain from a CA the newest mesh settings no longer trust"
        );
        assert_eq!(conn.verified_generation.get(), same_ca_again.generation);

        // Plaintext (PERMISSIVE) connections carry no chain and have nothing to verify.
        let plaintext = ConnInfo::new(
            "10.0.0.2:40001".parse().expect("addr"),
            "10.0.0.1:15006".parse().expect("addr"),
            80,
        );
        assert!(mesh_peer_passes(&rotated, &mesh(&rotated), &plaintext));
    }
}
