//! Istio's standard metrics, and Portcullis' own, in one prometheus-client registry.
//!
//! The names, types and labels are Istio's (istio.io/latest/docs/reference/config/metrics), so
//! a Prometheus that scrapes the gateway feeds Kiali and Istio dashboards unchanged. The
//! gateway terminates the client's mutual TLS, which makes it the server side of that
//! connection: it reports as `reporter="destination"`, the only reporter for which Istio sets
//! `connection_security_policy` (`mutual_tls` when the client presented a verified
//! certificate, `none` otherwise).
//!
//! Every label value comes from a bounded set: configuration names, status codes and fixed
//! strings. Raw paths, client ports and client-sent hosts never become labels.

use std::fmt;
use std::io;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rustls::{AlertDescription, CertificateError};

use super::{Reporter, ResponseFlags, SecurityPolicy};
use crate::policy::authz::{Decision, DenyReason, Verdict};
use crate::proxy::conn::ConnInfo;
use crate::proxy::limits::LimitReason;
use crate::snapshot::model::Credentials;
use crate::tls::client_auth::ClientCertRejected;

/// What Istio writes for a label it cannot fill.
const UNKNOWN: &str = "unknown";

/// Istio's buckets for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

/// Istio's size buckets: powers of ten from 1 byte to 100 MB.
fn bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 10.0, 9))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The labels of Istio's HTTP metrics, in the order Istio's docs list them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: RequestProtocol,
    pub response_code: u16,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

impl TcpLabels {
    /// The request label set: these labels plus the response code.
    pub fn with_response_code(self, response_code: u16) -> RequestLabels {
        RequestLabels {
            reporter: self.reporter,
            source_workload: self.source_workload,
            source_workload_namespace: self.source_workload_namespace,
            source_principal: self.source_principal,
            source_app: self.source_app,
            destination_workload: self.destination_workload,
            destination_workload_namespace: self.destination_workload_namespace,
            destination_principal: self.destination_principal,
            destination_service: self.destination_service,
            destination_service_name: self.destination_service_name,
            destination_service_namespace: self.destination_service_namespace,
            request_protocol: self.request_protocol,
            response_code,
            response_flags: self.response_flags,
            connection_security_policy: self.connection_security_policy,
        }
    }
}

/// The labels of Istio's TCP metrics: the HTTP set without `response_code`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: RequestProtocol,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

/// `request_protocol`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RequestProtocol {
    http,
    grpc,
    tcp,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DroppedHeaderLabels {
    reason: DroppedHeader,
}

/// Why a request header was dropped before authorization and forwarding: the `reason` label
/// of `portcullis_request_headers_dropped_total`, a closed set.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DroppedHeader {
    /// The name holds `_`, which CGI/WSGI upstreams fold into `-` (Envoy's
    /// `headers_with_underscores_action: DROP_HEADER`).
    underscore_in_name,
    /// The name holds another character outside `a-z 0-9 -` (`x.forwarded.client.cert`), which
    /// CGI mappers that turn every non-alphanumeric into `_` fold like `_`.
    punctuation_in_name,
    /// A header that makes some upstreams serve another path or method than the authorized one.
    path_or_method_override,
    /// A client-certificate header of RFC 9440 or of another TLS terminator (`ssl-client-*`,
    /// `x-ssl-*`, `x-client-cert*`, `x-client-verify`, `x-client-dn`), which only a client
    /// could have written here.
    client_cert_header,
    /// A forwarding header the gateway does not set and a client may not (`x-forwarded-host`
    /// and the rest of the `x-forwarded-*` family but for/proto/client-cert, `forwarded`,
    /// `x-real-ip`, `x-original-forwarded-for`, `x-envoy-*`).
    forwarding_header,
    /// A request trailer naming a field the gateway sets or frames itself
    /// (`x-forwarded-client-cert`, `x-forwarded-for`, `host`, `content-length`, …).
    gateway_managed_trailer,
}

impl DroppedHeader {
    pub const ALL: [DroppedHeader; 6] = [
        Self::underscore_in_name,
        Self::punctuation_in_name,
        Self::path_or_method_override,
        Self::client_cert_header,
        Self::forwarding_header,
        Self::gateway_managed_trailer,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: HandshakeFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    reason: LimitReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KernelLabels {
    port: u16,
    /// `steered`, `reset` (plaintext under STRICT), `passed`, `dropped` (not judgeable).
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    credential: String,
}

/// Why a TLS handshake failed: the `reason` label of
/// `portcullis_tls_handshake_failures_total`, a closed set.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HandshakeFailure {
    /// MUTUAL server, and the client sent no certificate.
    no_client_cert,
    /// The client's certificate does not chain to the credential's CA (or the client did not
    /// trust ours).
    unknown_ca,
    /// A certificate is outside its validity period.
    expired,
    /// Any other certificate problem: bad signature, wrong usage, bad SAN, revoked.
    bad_certificate,
    /// The client certificate's `spiffe` URI SAN is not a valid SPIFFE ID, or it has several.
    invalid_spiffe_id,
    /// The client certificate's subjectAltName does not parse strictly (BER, a non-UTF-8 or
    /// non-ASCII name, two SAN extensions).
    malformed_san,
    /// No Gateway server on the port for the requested SNI.
    no_sni_match,
    /// The first bytes were not a TLS ClientHello.
    not_tls,
    other,
}

impl HandshakeFailure {
    /// Classifies what `tokio_rustls::TlsAcceptor::accept` failed with: rustls errors come
    /// wrapped in an `io::Error`.
    pub fn from_io_error(e: &io::Error) -> Self {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map_or(Self::other, Self::from_rustls)
    }

    pub fn from_rustls(e: &rustls::Error) -> Self {
        use rustls::Error as E;
        match e {
            E::NoCertificatesPresented => Self::no_client_cert,
            E::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => Self::unknown_ca,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Self::expired
                }
                CertificateError::Other(other) => {
                    match other.0.downcast_ref::<ClientCertRejected>() {
                        Some(ClientCertRejected::SpiffeId(_)) => Self::invalid_spiffe_id,
                        Some(ClientCertRejected::MalformedSan(_)) => Self::malformed_san,
                        _ => Self::bad_certificate,
                    }
                }
                _ => Self::bad_certificate,
            },
            // The client refused our certificate and told us why.
            E::AlertReceived(alert) => match alert {
                AlertDescription::UnknownCA => Self::unknown_ca,
                AlertDescription::CertificateExpired => Self::expired,
                AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked => Self::bad_certificate,
                AlertDescription::CertificateRequired => Self::no_client_cert,
                _ => Self::other,
            },
            _ => Self::other,
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One finished HTTP request, as the proxy knows it.
pub struct RequestRecord<'a> {
    pub conn: &'a ConnInfo,
    /// The destination host of the route taken (`httpbin.default.svc.cluster.local`); `None`
    /// when no route matched.
    pub service: Option<&'a str>,
    pub protocol: RequestProtocol,
    pub status: u16,
    pub flags: ResponseFlags,
    pub duration: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// The four request metrics of one label set, resolved.
#[derive(Clone, Debug)]
pub struct RequestHandles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestHandles {
    pub fn record(&self, duration: Duration, request_bytes: u64, response_bytes: u64) {
        self.requests.inc();
        self.duration.observe(duration.as_secs_f64() * 1000.0);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }
}

type HandleKey<'a> = (Option<&'a str>, u16, ResponseFlags, RequestProtocol);
type OwnedHandleKey = (Option<String>, u16, ResponseFlags, RequestProtocol);

/// A connection's resolved metric handles, by (service, status, flags, protocol). A
/// connection sees few distinct keys, so a short list beats a map; it is capped so a client
/// cycling through status codes cannot grow it without bound.
#[derive(Debug, Default)]
pub struct HandleCache(std::sync::Mutex<Vec<(OwnedHandleKey, RequestHandles)>>);

impl Clone for HandleCache {
    /// A copy of a connection starts with an empty cache (the handles are cheap to resolve).
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl HandleCache {
    const MAX: usize = 16;

    fn get(&self, (service, status, flags, protocol): HandleKey<'_>) -> Option<RequestHandles> {
        let entries = self.0.lock().ok()?;
        entries
            .iter()
            .find(|((s, st, f, p), _)| {
                s.as_deref() == service && *st == status && *f == flags && *p == protocol
            })
            .map(|(_, h)| h.clone())
    }

    fn insert(&self, (service, status, flags, protocol): HandleKey<'_>, handles: RequestHandles) {
        if let Ok(mut entries) = self.0.lock() {
            if entries.len() < Self::MAX {
                entries.push((
                    (service.map(str::to_owned), status, flags, protocol),
                    handles,
                ));
            }
        }
    }
}

/// The gateway's own identity in the `destination_*` labels.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
}

/// The process' metrics. Recording is lock-free once a label set has been seen.
pub struct Metrics {
    registry: Registry,
    workload: Workload,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RequestLabels>,
    request_bytes: HistogramFamily<RequestLabels>,
    response_bytes: HistogramFamily<RequestLabels>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    authz_denied: Family<PolicyLabels, Counter>,
    requests_refused: Family<RefusedLabels, Counter>,
    headers_dropped: Family<DroppedHeaderLabels, Counter>,
    tls_failures: Family<ReasonLabels, Counter>,
    certificate_expiry: Family<CredentialLabels, Gauge>,
    kernel: Family<KernelLabels, Counter>,
    limits: Family<LimitLabels, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("workload", &self.workload)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(workload: Workload) -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        let request_duration: HistogramFamily<_> = Family::new_with_constructor(duration_histogram);
        let request_bytes: HistogramFamily<_> = Family::new_with_constructor(bytes_histogram);
        let response_bytes: HistogramFamily<_> = Family::new_with_constructor(bytes_histogram);
        let (tcp_opened, tcp_closed, tcp_sent, tcp_received) = Default::default();
        let authz_denied = Family::default();
        let requests_refused = Family::default();
        let headers_dropped: Family<DroppedHeaderLabels, Counter> = Family::default();
        for reason in DroppedHeader::ALL {
            let _ = headers_dropped.get_or_create(&DroppedHeaderLabels { reason });
        }
        let tls_failures = Family::default();
        let certificate_expiry = Family::default();
        let kernel = Family::default();
        let limits: Family<LimitLabels, Counter> = Family::default();
        // Every reason from the start, so a scrape shows 0 rather than nothing.
        for reason in LimitReason::ALL {
            let _ = limits.get_or_create(&LimitLabels { reason });
        }
        registry.register(
            "portcullis_limits",
            "Deadlines and caps that fired, by reason (see README: deadlines and caps)",
            Family::clone(&limits),
        );
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "istio_requests",
            "Requests handled by the gateway",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds, until the response headers",
            request_duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "HTTP request body sizes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "HTTP response body sizes",
            response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP (passthrough) connections opened",
            Family::clone(&tcp_opened),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP (passthrough) connections closed",
            Family::clone(&tcp_closed),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the client on TCP (passthrough) connections",
            Family::clone(&tcp_sent),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client on TCP (passthrough) connections",
            Family::clone(&tcp_received),
        );
        registry.register(
            "portcullis_authz_denied",
            "Requests denied by AuthorizationPolicy, by the DENY policy that matched (\"-\": no ALLOW policy matched)",
            Family::clone(&authz_denied),
        );
        registry.register(
            "portcullis_requests_refused",
            "Requests refused before routing, by reason: a path the gateway will not forward (400: not_origin_form, bad_encoding, encoded_control, bad_character, encoded_slash, double_encoding, path_parameter, not_utf8), a Host/:authority that is malformed or disagrees with the other (400: authority_empty, authority_userinfo, authority_bad_character, authority_bad_port, authority_bad_ipv6, authority_missing, authority_duplicate_host, authority_mismatch, authority_trailing_dot), a method with a lowercase letter (400: lowercase_method), a header value with leading or trailing whitespace, malformed in HTTP/2 (400: header_value_whitespace), a host the connection's TLS server does not serve (421: misdirected), or a verified client certificate whose fields cannot be written as x-forwarded-client-cert (400: unencodable_client_cert)",
            Family::clone(&requests_refused),
        );
        registry.register(
            "portcullis_request_headers_dropped",
            "Request header fields dropped before authorization and forwarding, by reason: a name holding `_` (underscore_in_name) or a path/method override header such as x-original-url or x-http-method-override (path_or_method_override)",
            Family::clone(&headers_dropped),
        );
        registry.register(
            "portcullis_tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            Family::clone(&tls_failures),
        );
        registry.register(
            "portcullis_certificate_expiry_seconds",
            "Seconds until each credential's certificate expires (negative: expired)",
            Family::clone(&certificate_expiry),
        );
        registry.register(
            "portcullis_kernel_connections",
            "First segments judged by the kernel programs, by port and verdict (reset: plaintext under STRICT; dropped: could not be judged safely)",
            Family::clone(&kernel),
        );
        Self {
            registry,
            workload,
            requests,
            request_duration,
            request_bytes,
            response_bytes,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            authz_denied,
            requests_refused,
            headers_dropped,
            tls_failures,
            certificate_expiry,
            kernel,
            limits,
        }
    }

    /// Counts one firing of a deadline or cap (see [`LimitReason::fire`]).
    pub fn record_limit(&self, reason: LimitReason) {
        self.limits.get_or_create(&LimitLabels { reason }).inc();
    }

    /// The workload this process reports as (`destination_workload`).
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// Counts one HTTP request in the four Istio request metrics. The label set is built and
    /// hashed once per connection and (service, status, flags); later requests reuse the
    /// resolved handles from the connection's cache.
    pub fn record_request(&self, r: &RequestRecord<'_>) {
        let key = (r.service, r.status, r.flags, r.protocol);
        if let Some(handles) = r.conn.metric_handles.get(key) {
            handles.record(r.duration, r.request_bytes, r.response_bytes);
            return;
        }
        let t = self.tcp_labels(r.conn, r.service, r.protocol, r.flags);
        let handles = self.request_handles(&t.with_response_code(r.status));
        handles.record(r.duration, r.request_bytes, r.response_bytes);
        r.conn.metric_handles.insert(key, handles);
    }

    /// The four request metrics of one label set; clones share the registered state.
    pub fn request_handles(&self, labels: &RequestLabels) -> RequestHandles {
        RequestHandles {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.request_duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        }
    }

    /// Counts one HTTP request under labels the caller built: the outbound side reports as
    /// `reporter="source"` about a destination it verified.
    pub fn record_request_labels(
        &self,
        labels: &RequestLabels,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        self.request_handles(labels)
            .record(duration, request_bytes, response_bytes);
    }

    /// The label set of a connection to `service` (None: no route).
    pub fn tcp_labels(
        &self,
        conn: &ConnInfo,
        service: Option<&str>,
        protocol: RequestProtocol,
        flags: ResponseFlags,
    ) -> TcpLabels {
        let source_namespace = conn
            .peer_cert
            .as_ref()
            .and_then(|c| c.identity.as_ref())
            .and_then(|i| i.namespace());
        let (service_name, service_namespace) = service.map_or((UNKNOWN, UNKNOWN), split_service);
        // On the mesh terminator, the destination is this node's workload, and a mesh client's
        // service account stands in for its workload name (Istio learns it from a metadata
        // exchange Portcullis does not do; the SPIFFE id is what was verified).
        let (destination_workload, destination_namespace) = match &conn.inbound {
            Some(t) => (t.workload_name.clone(), t.workload_namespace.clone()),
            None => (self.workload.name.clone(), self.workload.namespace.clone()),
        };
        let source_workload = match (
            &conn.inbound,
            conn.peer_cert.as_ref().and_then(|c| c.identity.as_ref()),
        ) {
            (
                Some(_),
                Some(crate::identity::Identity::Workload {
                    service_account, ..
                }),
            ) => service_account.clone(),
            _ => UNKNOWN.to_owned(),
        };
        TcpLabels {
            reporter: Reporter::Destination,
            source_workload,
            source_workload_namespace: source_namespace.unwrap_or(UNKNOWN).to_owned(),
            source_principal: conn
                .principal
                .as_ref()
                .map_or_else(|| UNKNOWN.to_owned(), |p| format!("spiffe://{p}")),
            source_app: UNKNOWN.to_owned(),
            destination_workload,
            destination_workload_namespace: destination_namespace,
            destination_principal: UNKNOWN.to_owned(),
            destination_service: service.unwrap_or(UNKNOWN).to_owned(),
            destination_service_name: service_name.to_owned(),
            destination_service_namespace: service_namespace.to_owned(),
            request_protocol: protocol,
            response_flags: flags,
            connection_security_policy: if conn.peer_cert.is_some() {
                SecurityPolicy::MutualTls
            } else {
                SecurityPolicy::None
            },
        }
    }

    pub fn tcp_opened(&self, labels: &TcpLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// A TCP connection ended after `sent` bytes to the client and `received` from it.
    pub fn tcp_closed(&self, labels: &TcpLabels, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_sent.get_or_create(labels).inc_by(sent);
        self.tcp_received.get_or_create(labels).inc_by(received);
    }

    /// Counts a denial under the DENY policy that matched, or `-` for "no ALLOW matched".
    pub fn record_denied(&self, decision: &Decision) {
        let policy = match &decision.verdict {
            Verdict::Deny {
                reason: DenyReason::DenyPolicyMatched(p),
            } => format!("{}/{}", p.namespace, p.name),
            Verdict::Deny { .. } => "-".to_owned(),
            Verdict::Allow { .. } => return,
        };
        self.authz_denied
            .get_or_create(&PolicyLabels { policy })
            .inc();
    }

    /// Counts a request refused before routing (`reason` from a closed set: see the help text).
    pub fn record_refused(&self, reason: &'static str) {
        self.requests_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }

    /// Counts one request header field dropped for `reason`.
    pub fn record_header_dropped(&self, reason: DroppedHeader) {
        self.headers_dropped
            .get_or_create(&DroppedHeaderLabels { reason })
            .inc();
    }

    pub fn record_handshake_failure(&self, reason: HandshakeFailure) {
        self.tls_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Sets `portcullis_certificate_expiry_seconds` for every credential, as of `now` (unix
    /// seconds). Called at scrape time, so the gauge is always current.
    pub fn update_certificate_expiry(&self, credentials: &Credentials, now: i64) {
        for (name, cred) in credentials {
            self.certificate_expiry
                .get_or_create(&CredentialLabels {
                    credential: name.clone(),
                })
                .set(cred.not_after.saturating_sub(now));
        }
    }

    /// Brings the kernel counters in from a reading of the pinned per-CPU maps. They are
    /// monotonic in the kernel (and outlive this process), so each counter advances by the
    /// difference to what it last showed.
    pub fn update_kernel(&self, counters: &crate::kernel::CounterSnapshot) {
        for (&port, c) in &counters.per_port {
            for (verdict, value) in [
                ("steered", c.steered),
                ("reset", c.reset),
                ("passed", c.passed),
                ("dropped", c.dropped),
            ] {
                let counter = self.kernel.get_or_create(&KernelLabels { port, verdict });
                let seen = counter.get();
                if value > seen {
                    counter.inc_by(value - seen);
                }
            }
        }
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// `httpbin.default.svc.cluster.local` → (`httpbin`, `default`); any other host is its own
/// name in an unknown namespace.
pub fn split_service(host: &str) -> (&str, &str) {
    let mut parts = host.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(ns), Some(rest)) if rest.starts_with("svc") => (name, ns),
        _ => (host, UNKNOWN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(principal: Option<&str>) -> ConnInfo {
        let mut c = ConnInfo::new(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:443".parse().unwrap(),
            443,
        );
        c.sni = Some("test.com".to_owned());
        c.tls = true;
        c.principal = principal.map(str::to_owned);
        c
    }

    fn metrics() -> Metrics {
        Metrics::new(Workload {
            name: "portcullis".to_owned(),
            namespace: "istio-system".to_owned(),
        })
    }

    #[test]
    fn cached_handles_count_into_the_same_series() {
        let m = metrics();
        let c = conn(Some("test.client"));
        let record = |status| RequestRecord {
            conn: &c,
            service: Some("httpbin.default.svc.cluster.local"),
            protocol: RequestProtocol::http,
            status,
            flags: ResponseFlags::None,
            duration: Duration::from_millis(1),
            request_bytes: 0,
            response_bytes: 10,
        };
        for status in [200, 200, 200, 403] {
            m.record_request(&record(status));
        }
        let text = m.encode().expect("encode");
        let count = |code: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("istio_requests_total{")
                        && l.contains(&format!("response_code=\"{code}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(count("200").as_deref(), Some("3"), "{text}");
        assert_eq!(count("403").as_deref(), Some("1"), "{text}");
    }

    #[test]
    fn request_metrics_carry_istio_labels_and_no_client_port() {
        let m = metrics();
        m.record_request(&RequestRecord {
            conn: &conn(Some("test.client")),
            service: Some("httpbin.default.svc.cluster.local"),
            protocol: RequestProtocol::http,
            status: 403,
            flags: ResponseFlags::None,
            duration: Duration::from_millis(3),
            request_bytes: 0,
            response_bytes: 19,
        });
        let text = m.encode().unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .expect(&text);
        for want in [
            r#"reporter="destination""#,
            r#"source_principal="spiffe://test.client""#,
            r#"destination_service="httpbin.default.svc.cluster.local""#,
            r#"destination_service_name="httpbin""#,
            r#"destination_service_namespace="default""#,
            r#"destination_workload_namespace="istio-system""#,
            r#"request_protocol="http""#,
            r#"response_code="403""#,
            r#"response_flags="-""#,
            r#"connection_security_policy="none""#,
        ] {
            assert!(line.contains(want), "{want} missing in {line}");
        }
        assert!(line.ends_with("} 1"), "{line}");
        assert!(!text.contains("40000"), "client port leaked:\n{text}");
        assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram"));
        assert!(text.contains("istio_response_bytes_bucket{"));
    }

    #[test]
    fn handshake_failures_are_classified() {
        use HandshakeFailure as H;
        let cases = [
            (rustls::Error::NoCertificatesPresented, H::no_client_cert),
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                H::unknown_ca,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                H::expired,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                H::bad_certificate,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                H::unknown_ca,
            ),
            (rustls::Error::HandshakeNotComplete, H::other),
            (
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    std::sync::Arc::new(ClientCertRejected::SpiffeId(
                        crate::identity::spiffe::PeerCertError::SeveralSpiffeIds { count: 2 },
                    )),
                ))),
                H::invalid_spiffe_id,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    std::sync::Arc::new(ClientCertRejected::NotPinned),
                ))),
                H::bad_certificate,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    std::sync::Arc::new(ClientCertRejected::MalformedSan(
                        crate::identity::spiffe::SanError::Duplicate(2),
                    )),
                ))),
                H::malformed_san,
            ),
        ];
        for (err, want) in cases {
            let wrapped = io::Error::new(io::ErrorKind::InvalidData, err.clone());
            assert_eq!(HandshakeFailure::from_io_error(&wrapped), want, "{err}");
        }
        let m = metrics();
        m.record_handshake_failure(H::no_client_cert);
        let text = m.encode().unwrap();
        assert!(
            text.contains(r#"portcullis_tls_handshake_failures_total{reason="no_client_cert"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn service_hosts_split_into_name_and_namespace() {
        assert_eq!(
            split_service("httpbin.default.svc.cluster.local"),
            ("httpbin", "default")
        );
        assert_eq!(split_service("example.com"), ("example.com", UNKNOWN));
    }
}
