//! Per-request work: route, authorize, forward, log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::conn::ConnInfo;
use super::limits::LimitReason;
use super::telemetry::access_log::AccessEntry;
use super::telemetry::metrics::{DroppedHeader, Metrics, RequestProtocol, RequestRecord};
use super::telemetry::ResponseFlags;
use super::trailers::RequestBody;
use super::upstream::{is_connect_timeout, WithPermit};
use super::Gateway;
use crate::config::hosts::{authority_host, best_match, Authority, AuthorityError};
use crate::config::model::GatewayRef;
use crate::policy::authz::{Decision, RequestAttrs};
use crate::policy::path::{self, PathError, PathNormalization};
use crate::snapshot::model::ServerTls;
use crate::snapshot::Snapshot;
use crate::tls::ServerTlsMode;

/// Response bodies: streamed from upstream, or made here.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Envoy's body for an RBAC denial; clients and tests match it exactly.
pub const RBAC_DENIED: &str = "RBAC: access denied";

const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one hop and never travel through a proxy (RFC 9110 §7.6.1).
/// As `HeaderName`s, so removing them hashes a known name instead of parsing a string.
const HOP_BY_HOP: [HeaderName; 8] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// Headers that make some upstreams serve another path or method than the request line's:
/// IIS/ASP.NET and Symfony read `X-Original-URL`/`X-Rewrite-URL` as the path, many frameworks
/// take the method from the `X-HTTP-Method(-Override)`/`X-Method-Override` family, and Envoy's
/// `x-envoy-original-path` is trusted by apps behind Envoy. Authorization decided the request
/// line's path and method, so nothing else may name them to the upstream.
const OVERRIDE_HEADERS: [HeaderName; 6] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-envoy-original-path"),
];

/// RFC 9440's `Client-Cert` and `Client-Cert-Chain`: this gateway does not set them (it
/// sends Envoy's XFCC), so one that arrives was written by the client, and an upstream that
/// trusts RFC 9440 would take it as a verified identity.
const CLIENT_CERT_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("client-cert"),
    HeaderName::from_static("client-cert-chain"),
];

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
        Ok(Some(a)) => a.to_string(),
        Ok(None) => String::new(),
        Err(_) => raw_authority(&req),
    };

    let protocol = match req.headers().get(http::header::CONTENT_TYPE) {
        Some(ct) if ct.as_bytes().starts_with(b"application/grpc") => RequestProtocol::grpc,
        _ => RequestProtocol::http,
    };
    let request_bytes = body_len(req.body());

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
        // Policies match methods exactly, as Istio does, but Werkzeug (and other upstreams
        // that accept non-uppercase tokens) uppercases them: `get` would slip past a
        // `methods: [GET]` DENY and be served as GET. No registered method has a lowercase
        // letter; gunicorn 22+ refuses them too.
        (Ok(_), _) if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) => {
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
            let out = route_and_forward(&gateway, &snapshot, &conn, req, &authority, &target).await;
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
    let status = out.resp.status().as_u16();
    let response_bytes = body_len(out.resp.body());
    let duration = started.elapsed();
    gateway.metrics.record_request(&RequestRecord {
        conn: &conn,
        service: out.service,
        protocol,
        status,
        flags: out.flags,
        duration,
        request_bytes,
        response_bytes,
    });
    gateway.access_log.write(&AccessEntry {
        kind: "http",
        peer: Some(conn.peer),
        sni: conn.sni.as_deref(),
        principal: conn.principal.as_deref(),
        method: Some(method.as_str()),
        authority: Some(&authority),
        path: Some(&logged_path),
        status: Some(status),
        duration_ms: duration.as_millis() as u64,
        bytes_received: request_bytes,
        bytes_sent: response_bytes,
        authz: out.decision.as_ref().map(ToString::to_string),
        policy: out
            .decision
            .as_ref()
            .and_then(|d| d.decided_by())
            .map(|p| format!("{}/{}", p.namespace, p.name)),
        upstream: out.upstream.as_deref(),
        response_flags: out.flags,
    });
    Ok(out.resp)
}

/// The request's authority, checked ([`Authority::parse`]): the absolute-form target's or
/// HTTP/2's `:authority`, and `Host`. RFC 9112 §3.2.2 lets the target's win over Host and
/// RFC 9113 §8.3.1 only says a differing Host SHOULD make the request malformed; here both
/// must name the same origin, or the request is refused, so no component downstream can pick
/// the other one. None only for an HTTP/1.0 request with neither (Host came with 1.1).
fn request_authority<B>(req: &Request<B>) -> Result<Option<Authority>, AuthorityError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(AuthorityError::Duplicate);
    }
    // Lossy: a byte that is not UTF-8 becomes U+FFFD, which `parse` refuses like any other
    // character a host cannot hold.
    let host = host
        .map(|v| Authority::parse(&String::from_utf8_lossy(v.as_bytes())))
        .transpose()?;
    let target = req
        .uri()
        .authority()
        .map(|a| Authority::parse(a.as_str()))
        .transpose()?;
    let default_port = if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    match (target, host) {
        (Some(t), Some(h)) if !t.same_origin(&h, default_port) => Err(AuthorityError::Mismatch),
        (Some(a), _) | (None, Some(a)) => Ok(Some(a)),
        (None, None) if req.version() <= Version::HTTP_10 => Ok(None),
        (None, None) => Err(AuthorityError::Missing),
    }
}

/// The authority as received, for the log line of a refused one.
fn raw_authority<B>(req: &Request<B>) -> String {
    req.uri().authority().map_or_else(
        || {
            req.headers()
                .get_all(HOST)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        },
        |a| a.as_str().to_owned(),
    )
}

/// A request's target after normalization.
struct RequestTarget {
    /// What routes and policies match.
    path: String,
    /// What the upstream receives and the access log shows: the path, then the query string
    /// exactly as received.
    path_and_query: String,
}

impl RequestTarget {
    fn of(uri: &Uri, mode: PathNormalization) -> Result<Self, PathError> {
        // `Uri::path` is `*` for asterisk-form, empty for authority-form (both refused as not
        // origin-form) and `/` for an absolute-form target with an empty path (RFC 9110
        // §4.2.3: the same resource as `/`).
        let path = path::normalize(uri.path(), mode)?.into_owned();
        let path_and_query = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        Ok(Self {
            path,
            path_and_query,
        })
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
    req: Request<Incoming>,
    authority: &str,
    target: &RequestTarget,
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
        // A request that slips in between a reload and the reload's re-check of open
        // connections verifies the peer's chain itself (once per connection per reload).
        if !conn.peer_chain.is_empty() && conn.verified_generation.get() != snapshot.generation {
            match crate::tls::verify_client_chain(
                &mesh.credential,
                &mesh.client_checks,
                &conn.peer_chain,
            ) {
                Ok(()) => conn.verified_generation.set(snapshot.generation),
                Err(why) => {
                    tracing::warn!(peer = %conn.peer, reason = %why, "peer certificate no longer passes the newest mesh configuration: request refused");
                    gateway.metrics.record_refused("misdirected");
                    return Outcome::misdirected(req.version(), true);
                }
            }
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
    let outbound = match outbound_request(
        req,
        conn,
        &gateway.metrics,
        authority,
        &target.path_and_query,
        &endpoint,
    ) {
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
    let call = gateway.upstream.client().request(outbound);
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
                resp.map(|body| WithPermit::new(body, permit).boxed()),
                decision,
                Some(endpoint),
                ResponseFlags::None,
            )
        }
        Err(e) => {
            tracing::warn!(upstream = %endpoint, service = %service, error = %e, "upstream request failed");
            if is_connect_timeout(&e) {
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

/// Why a request field the client sent must not reach the upstream, `None` to keep it:
///
/// - every name holding `_`: CGI, WSGI (wsgiref, gunicorn before 22) and PHP fold `_` and `-`
///   into one `HTTP_X_FORWARDED_CLIENT_CERT`, so `x_forwarded_client_cert` would reach the app
///   as the client-certificate header this gateway sanitizes. Envoy's
///   `headers_with_underscores_action: DROP_HEADER`; no standard header has an `_`.
/// - [`OVERRIDE_HEADERS`].
/// - every other name with a character outside `a-z 0-9 -` (`x.forwarded.client.cert`,
///   `x~…`, `x!…`): CGI mappers that turn every non-alphanumeric into `_` (lighttpd's
///   environment) fold those into the same variable. `HeaderName`s are lowercase already.
/// - [`CLIENT_CERT_HEADERS`].
fn untrusted_field(name: &HeaderName) -> Option<DroppedHeader> {
    let name_str = name.as_str();
    if name_str.contains('_') {
        Some(DroppedHeader::underscore_in_name)
    } else if !name_str
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some(DroppedHeader::punctuation_in_name)
    } else if OVERRIDE_HEADERS.contains(name) {
        Some(DroppedHeader::path_or_method_override)
    } else if CLIENT_CERT_HEADERS.contains(name) {
        Some(DroppedHeader::client_cert_header)
    } else {
        None
    }
}

/// Fields this gateway sets, replaces or frames itself: the header section's are rewritten in
/// [`outbound_request`], but a trailer section is forwarded after them, where an upstream that
/// merges trailers into headers (Apache `MergeTrailers`, Tomcat, Go's `r.Trailer`) would read a
/// forged `x-forwarded-client-cert` as if the gateway had set it. Framing and hop-by-hop
/// fields are not allowed in trailers at all (RFC 9110 §6.5.1).
fn gateway_managed(name: &HeaderName) -> bool {
    name == X_FORWARDED_CLIENT_CERT
        || name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
        || name == HOST
        || name == http::header::CONTENT_LENGTH
        || name == http::header::TRAILER
        || HOP_BY_HOP.contains(name)
}

/// Drops request header fields the upstream could read as something authorization never saw
/// ([`untrusted_field`]), counting and debug-logging each one.
fn drop_untrusted_headers(headers: &mut HeaderMap, metrics: &Metrics, conn: &ConnInfo) {
    drop_fields(headers, metrics, conn.peer, untrusted_field);
}

/// Filters a request's trailer section: what the header section drops, and the fields the
/// gateway manages ([`gateway_managed`]).
pub(super) fn drop_untrusted_trailers(
    trailers: &mut HeaderMap,
    metrics: &Metrics,
    peer: SocketAddr,
) {
    drop_fields(trailers, metrics, peer, |name| {
        untrusted_field(name)
            .or_else(|| gateway_managed(name).then_some(DroppedHeader::gateway_managed_trailer))
    });
}

fn drop_fields(
    headers: &mut HeaderMap,
    metrics: &Metrics,
    peer: SocketAddr,
    classify: impl Fn(&HeaderName) -> Option<DroppedHeader>,
) {
    // `keys` yields each name once; nothing is allocated unless a name is dropped.
    let mut dropped: Vec<(HeaderName, DroppedHeader)> = Vec::new();
    for name in headers.keys() {
        if let Some(reason) = classify(name) {
            dropped.push((name.clone(), reason));
        }
    }
    for (name, reason) in dropped {
        if let http::header::Entry::Occupied(entry) = headers.entry(&name) {
            for _ in entry.remove_entry_mult().1 {
                metrics.record_header_dropped(reason);
            }
        }
        tracing::debug!(peer = %peer, header = %name, reason = ?reason, "request field dropped");
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present, comparing `HeaderName`s (a byte for the standard ones),
    // then a `remove` only for what is there: a `remove` hashes and probes even for an absent
    // name, and eight of them per message were ~3 k instructions per request under callgrind.
    // Most requests carry none of these; most upstream responses carry only `Connection`.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Headers named in Connection are hop-by-hop too; the standard ones are removed below
    // only when present, the others are rare enough to remove by name.
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| {
            !HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(n))
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Joins several `cookie` fields into one with `"; "`, as RFC 9113 §8.2.3 requires before an
/// HTTP/2 request goes on as HTTP/1.1 (HTTP/2 clients split cookies to compress them better).
/// Sent as separate lines, HTTP/1.1 servers join them with `,` (RFC 9110 §5.3), which is not
/// the cookie separator: Werkzeug reads `a=1` and `b=2` as `a="1,b=2"`. HTTP/1.1 clients must
/// send one Cookie line (RFC 6265 §5.4), so joining theirs changes nothing for a valid one.
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(http::header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Every part was a valid value and "; " is too, so this cannot fail; if it somehow did,
    // the fields stay as they were rather than being dropped.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(http::header::COOKIE, v);
    }
}

/// Rewrites a downstream request for the upstream: absolute URI to the endpoint with the
/// normalized path and the query as received, Host kept,
/// hop-by-hop headers dropped, x-forwarded-* and XFCC set.
fn outbound_request(
    req: Request<Incoming>,
    conn: &ConnInfo,
    metrics: &Arc<Metrics>,
    authority: &str,
    path_and_query: &str,
    endpoint: &str,
) -> Result<Request<RequestBody>, http::Error> {
    let (mut parts, body) = req.into_parts();
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(endpoint)
        .path_and_query(path_and_query)
        .build()?;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    // hyper's HTTP/1 client writes the trailer fields this header names; without it, none.
    // The trailers that still pass are filtered by `RequestBody` all the same.
    headers.remove(http::header::TRAILER);
    join_cookies(headers);
    if let Ok(v) = HeaderValue::from_str(authority) {
        headers.insert(HOST, v);
    }
    // Append the peer to any x-forwarded-for the client sent, as Envoy does.
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => {
            let peer_ip = conn.peer_ip.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prev}, {peer_ip}")).ok()
        }
        _ => Some(conn.peer_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme()));
    // Never trust a client's own XFCC: replace it with what we verified (Envoy's SANITIZE_SET).
    headers.remove(&X_FORWARDED_CLIENT_CERT);
    if let Some(v) = &conn.xfcc {
        headers.insert(X_FORWARDED_CLIENT_CERT, v.clone());
    }
    let body = RequestBody::new(body, Arc::clone(metrics), conn.peer);
    Ok(Request::from_parts(parts, body))
}

/// Envoy's x-forwarded-client-cert element: `Hash=…;Subject="…";URI=…;DNS=…`.
///
/// Envoy's grammar: `,` separates elements, `;` pairs, `=` key from value; a value holding
/// any of them is double-quoted, with `\"` for a quote. A backslash is escaped too (`\\`),
/// or a value ending in one would escape its own closing quote. Certificate fields are
/// whatever the CA signed, so every value is quoted when it needs to be: a DNS SAN
/// `x;URI=spiffe://admin` must not add a second URI.
pub fn xfcc(cert: &crate::identity::PeerCertificate) -> String {
    let mut out = format!("Hash={}", cert.sha256_hex);
    out.push_str(";Subject=");
    // Envoy always quotes the subject.
    push_xfcc_value(&mut out, &cert.subject, true);
    if let Some(uri) = cert.uris.first() {
        out.push_str(";URI=");
        push_xfcc_value(&mut out, uri, false);
    }
    for dns in &cert.dns_names {
        out.push_str(";DNS=");
        push_xfcc_value(&mut out, dns, false);
    }
    out
}

fn push_xfcc_value(out: &mut String, value: &str, always_quote: bool) {
    if !always_quote && !value.contains([',', ';', '=', '"', '\\']) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PeerCertificate;

    fn cert(subject: &str, uri: &str, dns: &[&str]) -> PeerCertificate {
        PeerCertificate {
            identity: None,
            uris: vec![uri.to_owned()],
            dns_names: dns.iter().map(|d| (*d).to_owned()).collect(),
            subject: subject.to_owned(),
            sha256_hex: "ab".repeat(32),
        }
    }

    #[test]
    fn xfcc_is_envoys_format() {
        let got = xfcc(&cert(
            "CN=test.client,O=Portcullis",
            "spiffe://cluster.local/ns/default/sa/sleep",
            &["test.client"],
        ));
        assert_eq!(
            got,
            format!(
                "Hash={};Subject=\"CN=test.client,O=Portcullis\";\
                 URI=spiffe://cluster.local/ns/default/sa/sleep;DNS=test.client",
                "ab".repeat(32)
            )
        );
    }

    /// Found by the `xfcc` fuzz target: a subject ending in `\` escaped its closing quote,
    /// and a SAN holding `;`, `,` or `=` was written bare, so a certificate's DNS name
    /// `x;URI=spiffe://evil` added a URI of its own choosing to the header.
    #[test]
    fn certificate_fields_cannot_add_xfcc_fields() {
        let got = xfcc(&cert(
            "CN=x\\",
            "spiffe://td/ns/a;b/sa/c",
            &["x;URI=spiffe://evil", "a,Hash=00", "q\"z"],
        ));
        assert_eq!(
            got,
            format!(
                "Hash={};Subject=\"CN=x\\\\\";URI=\"spiffe://td/ns/a;b/sa/c\";\
                 DNS=\"x;URI=spiffe://evil\";DNS=\"a,Hash=00\";DNS=\"q\\\"z\"",
                "ab".repeat(32)
            )
        );
    }

    fn target(uri: &str) -> Result<(String, String), PathError> {
        let uri: Uri = uri.parse().expect("a URI hyper would hand us");
        RequestTarget::of(&uri, PathNormalization::MergeSlashes).map(|t| (t.path, t.path_and_query))
    }

    /// Spellings an attacker would try to get a header past the XFCC/x-forwarded-* handling or
    /// to re-route the upstream; each field is counted, legit headers stay.
    #[test]
    fn underscore_and_override_headers_are_dropped_and_counted() {
        use crate::proxy::telemetry::metrics::Workload;
        let metrics = Metrics::new(Workload {
            name: "portcullis".to_owned(),
            namespace: "istio-system".to_owned(),
        });
        let conn = ConnInfo::new(
            "127.0.0.1:40000".parse().expect("addr"),
            "127.0.0.1:443".parse().expect("addr"),
            443,
        );
        let mut h = HeaderMap::new();
        for (name, value) in [
            (
                "x_forwarded_client_cert",
                "URI=spiffe://cluster.local/ns/prod/sa/admin",
            ),
            ("x-forwarded_client-cert", "URI=spiffe://evil"),
            ("x_forwarded_for", "10.0.0.1"),
            ("_", "x"),
            ("host_", "evil.example"),
            ("x_original_url", "/admin"),
            ("x-original-url", "/status/418"),
            ("x-rewrite-url", "/status/418"),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-envoy-original-path", "/status/418"),
            ("x.forwarded.client.cert", "URI=spiffe://evil"),
            ("x~forwarded~client~cert", "URI=spiffe://evil"),
            ("x!forwarded!client!cert", "URI=spiffe://evil"),
            ("x'forwarded'client'cert", "URI=spiffe://evil"),
            ("client-cert", ":MIIB:"),
            ("client-cert-chain", ":MIIB:"),
            ("accept", "*/*"),
            (
                "x-forwarded-client-cert",
                "kept here; replaced in outbound_request",
            ),
            ("x-request-id", "abc"),
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static(value),
            );
        }
        // A repeated field is counted once per line.
        h.append("x-http-method-override", HeaderValue::from_static("PUT"));
        drop_untrusted_headers(&mut h, &metrics, &conn);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-forwarded-client-cert", "x-request-id"]);
        let text = metrics.encode().expect("encode");
        for want in [
            r#"portcullis_request_headers_dropped_total{reason="underscore_in_name"} 6"#,
            r#"portcullis_request_headers_dropped_total{reason="path_or_method_override"} 7"#,
            r#"portcullis_request_headers_dropped_total{reason="punctuation_in_name"} 4"#,
            r#"portcullis_request_headers_dropped_total{reason="client_cert_header"} 2"#,
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    #[test]
    fn the_request_authority_is_checked_and_both_sources_must_agree() {
        let req = |version: Version, uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().version(version).uri(uri);
            for h in hosts {
                b = b.header(HOST, *h);
            }
            b.body(()).expect("request")
        };
        let got = |r: Request<()>| request_authority(&r).map(|a| a.map(|a| a.to_string()));
        let ok = |s: &str| Ok(Some(s.to_owned()));
        use AuthorityError as E;
        let h1 = Version::HTTP_11;
        assert_eq!(got(req(h1, "/x", &["Test.COM:0443"])), ok("test.com:443"));
        assert_eq!(
            got(req(h1, "/x", &["test.com:1@other.example"])),
            Err(E::UserInfo)
        );
        assert_eq!(got(req(h1, "/x", &["test.com:x"])), Err(E::Port));
        assert_eq!(
            got(req(h1, "/x", &["test.com:30443 garbage"])),
            Err(E::Character(' '))
        );
        assert_eq!(got(req(h1, "/x", &["a.test", "b.test"])), Err(E::Duplicate));
        assert_eq!(got(req(h1, "/x", &["a.test", "a.test"])), Err(E::Duplicate));
        assert_eq!(got(req(h1, "/x", &[])), Err(E::Missing));
        assert_eq!(got(req(Version::HTTP_10, "/x", &[])), Ok(None));
        assert_eq!(got(req(Version::HTTP_10, "/x", &[""])), Err(E::Empty));
        // Absolute-form: the target's authority, which Host must agree with.
        assert_eq!(
            got(req(
                h1,
                "https://simple.test:1@mutual.test/",
                &["simple.test"]
            )),
            Err(E::UserInfo)
        );
        assert_eq!(
            got(req(h1, "https://Test.com/", &["test.com:443"])),
            ok("test.com")
        );
        assert_eq!(
            got(req(h1, "http://test.com/", &["test.com:443"])),
            Err(E::Mismatch)
        );
        assert_eq!(
            got(req(h1, "https://test.com/", &["other.test"])),
            Err(E::Mismatch)
        );
        assert_eq!(
            got(req(h1, "https://test.com:8443/", &[])),
            ok("test.com:8443")
        );
        // HTTP/2: `:authority` is the URI's, `host` a plain header.
        let h2 = Version::HTTP_2;
        assert_eq!(got(req(h2, "https://test.com/x", &[])), ok("test.com"));
        assert_eq!(
            got(req(h2, "https://test.com/x", &["evil.test"])),
            Err(E::Mismatch)
        );
        assert_eq!(
            got(req(h2, "https://[::1]:443/x", &["[0::1]"])),
            ok("[::1]:443")
        );
        assert_eq!(got(req(h2, "/x", &[])), Err(E::Missing));
    }

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut h = HeaderMap::new();
        for c in ["a=1", "b=2", "c=3; d=4"] {
            h.append(http::header::COOKIE, HeaderValue::from_static(c));
        }
        h.insert("accept", HeaderValue::from_static("*/*"));
        join_cookies(&mut h);
        let got: Vec<&HeaderValue> = h.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(got, ["a=1; b=2; c=3; d=4"]);
        assert_eq!(h.len(), 2);
        // One cookie field, or none: untouched.
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, HeaderValue::from_static("a=1,b=2"));
        join_cookies(&mut h);
        assert_eq!(h[http::header::COOKIE], "a=1,b=2");
        let mut h = HeaderMap::new();
        join_cookies(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("x-secret, Keep-Alive"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic eA=="),
        );
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["accept"]
        );

        // Without a Connection header a lone hop-by-hop header still goes.
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["accept"]
        );

        // Nothing to strip: nothing changes.
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("content-length", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn request_targets_as_hyper_hands_them_over() {
        let ok = |p: &str, pq: &str| Ok((p.to_owned(), pq.to_owned()));
        assert_eq!(
            target("/status/%34%31%38"),
            ok("/status/418", "/status/418")
        );
        // The query string is kept byte for byte and never normalized.
        assert_eq!(
            target("//a/./%62?x=%2F&y=/../"),
            ok("/a/b", "/a/b?x=%2F&y=/../")
        );
        assert_eq!(target("/a?"), ok("/a", "/a?"));
        // HTTP/1.1 absolute-form: the path is normalized like any other.
        assert_eq!(
            target("https://test.com//status/%34%31%38?q"),
            ok("/status/418", "/status/418?q")
        );
        assert_eq!(target("http://test.com"), ok("/", "/"));
        assert_eq!(target("*"), Err(PathError::AsteriskForm));
        assert_eq!(target("test.com:443"), Err(PathError::NotOriginForm));
        assert_eq!(target("/status%2F418"), Err(PathError::EncodedSlash));
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
}
