//! What a connection knows about itself once accepted and (maybe) TLS-terminated.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::identity::PeerCertificate;

/// Facts about one downstream connection, shared by every request on it.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as x-forwarded-for writes it, formatted once per connection
    /// (formatting an `IpAddr` was ~1.5 k instructions per request under callgrind).
    pub peer_ip: http::HeaderValue,
    pub local: SocketAddr,
    /// The Gateway port this connection arrived on.
    pub port: u16,
    /// The SNI of a TLS connection: each request looks its server up again by it in the
    /// newest snapshot (plain HTTP chooses per request by Host).
    pub sni: Option<String>,
    /// The verified client certificate (MUTUAL).
    pub peer_cert: Option<PeerCertificate>,
    /// The chain the client presented, as verified: a reload re-verifies it against the new
    /// server settings (CA, CRL, subjectAltNames) and closes the connection if it fails.
    /// Shared with the re-check closure rather than copied (rustls holds a third copy).
    pub peer_chain: Arc<[rustls::pki_types::CertificateDer<'static>]>,
    pub tls: bool,
    /// The principal (`test.client`) read once from the certificate.
    pub principal: Option<String>,
    /// Set on connections the mesh terminator accepted: requests go to the local app.
    pub inbound: Option<Arc<InboundTarget>>,
    /// The x-forwarded-client-cert value, made once from the verified certificate. None with
    /// a `peer_cert` means the certificate's fields cannot be written as a header value: see
    /// [`ConnInfo::xfcc_unencodable`].
    pub xfcc: Option<http::HeaderValue>,
    /// Metric handles already resolved for this connection's label sets.
    pub metric_handles: super::telemetry::metrics::HandleCache,
    /// The [`Snapshot::generation`](crate::snapshot::Snapshot) `peer_chain` was last verified
    /// under: a request under a newer one verifies it again first.
    pub verified_generation: Generation,
}

/// A snapshot generation one connection shares between its requests (a clone starts from
/// the value, then goes its own way).
#[derive(Debug, Default)]
pub struct Generation(std::sync::atomic::AtomicU64);

impl Generation {
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set(&self, generation: u64) {
        self.0
            .store(generation, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clone for Generation {
    fn clone(&self) -> Self {
        Self(self.get().into())
    }
}

/// Where an inbound mesh connection's requests go, and the policies that guard them.
#[derive(Clone, Debug)]
pub struct InboundTarget {
    /// The local application: loopback on the connection's original destination port.
    /// (Its AuthorizationPolicies are read from the newest snapshot on each request.)
    pub app: SocketAddr,
    /// This node's workload, reported as the destination in metrics.
    pub workload_name: String,
    pub workload_namespace: String,
}

impl ConnInfo {
    /// A plaintext connection from `peer` to `local`, on Gateway port `port`.
    pub fn new(peer: SocketAddr, local: SocketAddr, port: u16) -> Self {
        let peer_ip = http::HeaderValue::try_from(peer.ip().to_canonical().to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        Self {
            peer,
            peer_ip,
            local,
            port,
            sni: None,
            peer_cert: None,
            peer_chain: Arc::default(),
            tls: false,
            principal: None,
            inbound: None,
            xfcc: None,
            metric_handles: Default::default(),
            verified_generation: Default::default(),
        }
    }

    /// Records the verified client certificate: principal and XFCC are derived once here.
    pub fn set_peer_cert(&mut self, cert: PeerCertificate) {
        self.principal = cert.principal();
        // `from_bytes`, not `from_str`: a UTF-8 subject is valid field content (obs-text), as
        // Envoy sends it; only control characters make the value impossible to send.
        self.xfcc = http::HeaderValue::from_bytes(super::headers::xfcc(&cert).as_bytes()).ok();
        if self.xfcc.is_none() {
            tracing::warn!(peer = %self.peer, subject = ?cert.subject, uris = ?cert.uris, dns = ?cert.dns_names, "the client certificate cannot be written as x-forwarded-client-cert (control characters); its requests are refused");
        }
        self.peer_cert = Some(cert);
    }

    /// An authenticated client whose XFCC cannot be encoded. Its requests are refused: sending
    /// them without XFCC would let the upstream take a verified client for an anonymous one,
    /// and a client-sent XFCC is never forwarded either.
    pub fn xfcc_unencodable(&self) -> bool {
        self.peer_cert.is_some() && self.xfcc.is_none()
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(subject: &str, uris: &[&str], dns: &[&str]) -> PeerCertificate {
        PeerCertificate {
            identity: None,
            uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            dns_names: dns.iter().map(|d| (*d).to_owned()).collect(),
            subject: subject.to_owned(),
            sha256_hex: "ab".repeat(32),
        }
    }

    #[test]
    fn a_certificate_xfcc_cannot_carry_is_flagged_not_dropped() {
        let conn = || {
            ConnInfo::new(
                "127.0.0.1:40000".parse().expect("addr"),
                "127.0.0.1:443".parse().expect("addr"),
                443,
            )
        };
        for (subject, uris, dns) in [
            ("CN=x", &["https://a\u{0}b"][..], &[][..]),
            ("CN=x", &[], &["a\nb"]),
            ("CN=x\r\nX-Evil: 1", &[], &[]),
            ("CN=x\u{7f}", &[], &[]),
        ] {
            let mut c = conn();
            c.set_peer_cert(peer(subject, uris, dns));
            assert!(c.xfcc_unencodable(), "{subject:?} {uris:?} {dns:?}");
        }
        // A UTF-8 subject is sent as it is, as Envoy does.
        let mut c = conn();
        c.set_peer_cert(peer("CN=J\u{fc}rgen", &["spiffe://td/x"], &["a.test"]));
        assert!(!c.xfcc_unencodable());
        assert!(c.xfcc.is_some());
        // No certificate: nothing to forward, nothing refused.
        assert!(!conn().xfcc_unencodable());
    }
}
