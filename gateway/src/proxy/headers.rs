//! What of a client's request reaches the upstream: fields it could read as something
//! authorization never saw are dropped, hop-by-hop fields stripped, and the forwarding
//! fields (`x-forwarded-*`, Envoy's XFCC) set by the gateway alone.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Request, Uri, Version};
use hyper::body::Incoming;

use super::conn::ConnInfo;
use super::telemetry::metrics::{DroppedHeader, Metrics};
use super::trailers::RequestBody;

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
/// - [`CLIENT_CERT_HEADERS`] and other terminators' client-certificate headers
///   ([`CLIENT_CERT_PREFIXES`]).
/// - forwarding headers the gateway does not set ([`is_foreign_forwarding_header`]).
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
    } else if CLIENT_CERT_HEADERS.contains(name)
        || CLIENT_CERT_PREFIXES.iter().any(|p| name_str.starts_with(p))
    {
        Some(DroppedHeader::client_cert_header)
    } else if is_foreign_forwarding_header(name_str) {
        Some(DroppedHeader::forwarding_header)
    } else {
        None
    }
}

/// Client-certificate headers other TLS terminators set for their upstreams (nginx's
/// `ssl-client-cert`/`x-ssl-client-*`, HAProxy's `x-ssl-*`, Traefik's and others'
/// `x-client-cert*`, `x-client-verify`, `x-client-dn`): this gateway sets none of them, so one
/// that arrives is the client's own, and an upstream configured for such a terminator would
/// take it as verified.
const CLIENT_CERT_PREFIXES: [&str; 6] = [
    "ssl-client",
    "x-ssl-",
    "x-client-cert",
    "x-client-verify",
    "x-client-dn",
    "x-client-s-dn",
];

/// Forwarding headers describe the hops before the upstream, which only the gateway knows: it
/// sets `x-forwarded-for` (appended), `x-forwarded-proto` and XFCC itself, and drops the rest
/// of what a client could claim there — the `x-forwarded-*` family (`-host`, `-port`,
/// `-prefix`, … which frameworks use to build URLs and make redirects), RFC 7239 `forwarded`,
/// `x-real-ip`, `x-original-forwarded-for`, and `x-envoy-*` (Envoy strips those from external
/// requests too: upstreams behind Envoy trust them).
fn is_foreign_forwarding_header(name: &str) -> bool {
    match name.strip_prefix("x-forwarded-") {
        Some(rest) => !matches!(rest, "for" | "proto" | "client-cert"),
        None => {
            matches!(name, "forwarded" | "x-real-ip" | "x-original-forwarded-for")
                || name.starts_with("x-envoy-")
        }
    }
}

/// Whether a field value starts or ends with whitespace. HTTP/1 parsers strip it (it is not
/// part of the value, RFC 9110 §5.5); in HTTP/2 it is malformed (RFC 9113 §8.2.1) yet reaches
/// here as sent, so `x-user: " admin"` would slip past a policy on `admin` and be read as
/// `admin` by an upstream that trims. Such a request is refused.
pub(super) fn has_padded_value(headers: &HeaderMap) -> bool {
    headers.values().any(|v| {
        let b = v.as_bytes();
        matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
    })
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
pub(super) fn drop_untrusted_headers(headers: &mut HeaderMap, metrics: &Metrics, conn: &ConnInfo) {
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

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Makes a request's header section what the upstream will receive, before authorization
/// reads it: hop-by-hop fields (and those `Connection` names) stripped, HTTP/2 cookies joined,
/// `Host` the canonical `authority`, the peer appended to `x-forwarded-for`,
/// `x-forwarded-proto` set, and XFCC replaced by what the handshake verified (Envoy's
/// `SANITIZE_SET`) or removed.
pub(super) fn set_forwarding_headers(headers: &mut HeaderMap, conn: &ConnInfo, authority: &str) {
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
    headers.remove(&X_FORWARDED_CLIENT_CERT);
    if let Some(v) = &conn.xfcc {
        headers.insert(X_FORWARDED_CLIENT_CERT, v.clone());
    }
}

/// Readies a request, whose headers [`set_forwarding_headers`] made, for the upstream:
/// origin-form target (the normalized path, the query as received; the upstream pool writes
/// the request-target as it is, and the connection, not the URI, picks the endpoint),
/// HTTP/1.1, and a body whose trailers are filtered.
pub(super) fn outbound_request(
    req: Request<Incoming>,
    conn: &ConnInfo,
    metrics: &Arc<Metrics>,
    path_and_query: &str,
) -> Result<Request<RequestBody>, http::Error> {
    let (mut parts, body) = req.into_parts();
    parts.uri = Uri::builder().path_and_query(path_and_query).build()?;
    parts.version = Version::HTTP_11;
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
            ("ssl-client-cert", "-----BEGIN"),
            ("x-ssl-client-s-dn", "CN=admin"),
            ("x-client-cert", "-----BEGIN"),
            ("x-client-verify", "SUCCESS"),
            ("x-forwarded-host", "admin.internal"),
            ("x-forwarded-prefix", "/admin"),
            ("forwarded", "for=10.0.0.1;proto=https"),
            ("x-real-ip", "10.0.0.1"),
            ("x-envoy-internal", "true"),
            (
                "x-forwarded-proto",
                "kept here; set in set_forwarding_headers",
            ),
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
        assert_eq!(
            left,
            [
                "accept",
                "x-forwarded-client-cert",
                "x-forwarded-proto",
                "x-request-id"
            ]
        );
        let text = metrics.encode().expect("encode");
        for want in [
            r#"portcullis_request_headers_dropped_total{reason="underscore_in_name"} 6"#,
            r#"portcullis_request_headers_dropped_total{reason="path_or_method_override"} 7"#,
            r#"portcullis_request_headers_dropped_total{reason="punctuation_in_name"} 4"#,
            r#"portcullis_request_headers_dropped_total{reason="client_cert_header"} 6"#,
            r#"portcullis_request_headers_dropped_total{reason="forwarding_header"} 5"#,
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    #[test]
    fn values_with_leading_or_trailing_whitespace_are_found() {
        for (value, padded) in [
            ("admin", false),
            ("a b", false),
            (" admin", true),
            ("admin\t", true),
            ("\tadmin", true),
            ("admin ", true),
            ("", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert("accept", HeaderValue::from_static("*/*"));
            h.append("x-user", HeaderValue::from_str(value).expect("value"));
            assert_eq!(has_padded_value(&h), padded, "{value:?}");
        }
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
}
