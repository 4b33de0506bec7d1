//! SPIFFE identities read from X.509 certificates.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A peer's authenticated identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`: a Kubernetes-style
    /// workload identity, as Istio issues them.
    Workload {
        trust_domain: String,
        namespace: String,
        service_account: String,
    },
    /// Any other SPIFFE id, e.g. `spiffe://test.client`: `trust_domain` plus an optional path.
    Other { trust_domain: String, path: String },
}

impl Identity {
    /// Parses a `spiffe://` URI; None for any other URI.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if trust_domain.is_empty() {
            return None;
        }
        let parts: Vec<&str> = path.split('/').collect();
        Some(match parts.as_slice() {
            ["ns", ns, "sa", sa] if !ns.is_empty() && !sa.is_empty() => Identity::Workload {
                trust_domain: trust_domain.to_owned(),
                namespace: (*ns).to_owned(),
                service_account: (*sa).to_owned(),
            },
            _ => Identity::Other {
                trust_domain: trust_domain.to_owned(),
                path: path.to_owned(),
            },
        })
    }

    /// The principal as AuthorizationPolicy `source.principals` names it: the SPIFFE id
    /// without `spiffe://` (`test.client`, `cluster.local/ns/default/sa/sleep`).
    pub fn principal(&self) -> String {
        match self {
            Identity::Workload {
                trust_domain,
                namespace,
                service_account,
            } => {
                format!("{trust_domain}/ns/{namespace}/sa/{service_account}")
            }
            Identity::Other { trust_domain, path } if path.is_empty() => trust_domain.clone(),
            Identity::Other { trust_domain, path } => format!("{trust_domain}/{path}"),
        }
    }

    /// The SPIFFE trust domain (`cluster.local`, `test.client`).
    pub fn trust_domain(&self) -> &str {
        match self {
            Identity::Workload { trust_domain, .. } | Identity::Other { trust_domain, .. } => {
                trust_domain
            }
        }
    }

    /// The namespace, for workload identities.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Identity::Workload { namespace, .. } => Some(namespace),
            Identity::Other { .. } => None,
        }
    }

    /// The full URI.
    pub fn uri(&self) -> String {
        format!("spiffe://{}", self.principal())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

/// The URI SAN that names the peer when a certificate carries several: the **first one that
/// starts with `spiffe://`**, and no other even if that one is malformed.
///
/// This is what Istio matches `source.principals` against. Istio's authorization does not use
/// Envoy's `Authenticated` RBAC principal (which, since envoyproxy/envoy#9237, tries every URI
/// SAN, then every DNS SAN, then the subject — see
/// `source/extensions/filters/common/rbac/matchers.cc`, `AuthenticatedMatcher::matches`):
/// since istio/istio#42031 it matches a `FilterState` principal set by istio/proxy's
/// `io.istio.network.authn` filter (`source/extensions/filters/network/istio_authn/config.cc`,
/// `IstioAuthnFilter::populate`), which loops over `uriSanPeerCertificate()` and keeps the
/// first SAN with the `spiffe://` prefix. Envoy's XFCC `URI=` is the first URI SAN of any kind
/// (`uris[0]`), which is why [`PeerCertificate::uris`] keeps them all, in order.
pub fn principal_uri(uris: &[String]) -> Option<&str> {
    uris.iter()
        .map(String::as_str)
        .find(|u| u.starts_with("spiffe://"))
}

/// What a verified peer certificate says about the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The SPIFFE identity, when the certificate carries a `spiffe://` URI SAN. A certificate
    /// without one is authenticated (it chains to the CA) but has no principal.
    pub identity: Option<Identity>,
    /// All URI SANs, in order (Envoy's XFCC names the first).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// The subject DN, RFC 4514 style.
    pub subject: String,
    /// Lowercase hex SHA-256 of the DER certificate (Envoy's XFCC `Hash=`).
    pub sha256_hex: String,
}

/// The certificate could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("peer certificate cannot be parsed: {0}")]
pub struct ParseError(String);

impl PeerCertificate {
    /// Reads a DER certificate (the leaf of an already verified chain).
    pub fn from_der(der: &[u8]) -> Result<Self, ParseError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| ParseError(e.to_string()))?;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        let identity = principal_uri(&uris).and_then(Identity::from_uri);
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let sha256_hex = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            identity,
            uris,
            dns_names,
            subject: cert.subject().to_string(),
            sha256_hex,
        })
    }

    /// The principal for authorization, if the certificate names one.
    pub fn principal(&self) -> Option<String> {
        self.identity.as_ref().map(Identity::principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_follow_istio() {
        let cases = [
            ("spiffe://test.client", Some(("test.client", None))),
            (
                "spiffe://cluster.local/ns/default/sa/sleep",
                Some(("cluster.local/ns/default/sa/sleep", Some("default"))),
            ),
            (
                "spiffe://example.org/service/web",
                Some(("example.org/service/web", None)),
            ),
            ("spiffe:///ns/a/sa/b", None),
            ("https://test.client", None),
        ];
        for (uri, want) in cases {
            let got = Identity::from_uri(uri);
            match want {
                None => assert_eq!(got, None, "{uri}"),
                Some((principal, ns)) => {
                    let id = got.unwrap_or_else(|| panic!("{uri} should parse"));
                    assert_eq!(id.principal(), principal, "{uri}");
                    assert_eq!(id.namespace(), ns, "{uri}");
                    assert_eq!(id.uri(), uri);
                }
            }
        }
    }

    #[test]
    fn reads_uri_and_dns_sans_from_a_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["test.com".to_owned()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://cluster.local/ns/default/sa/sleep")
                .expect("ia5"),
        ));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let peer = PeerCertificate::from_der(cert.der()).expect("parse");
        assert_eq!(peer.dns_names, vec!["test.com"]);
        assert_eq!(
            peer.principal().as_deref(),
            Some("cluster.local/ns/default/sa/sleep")
        );
        assert_eq!(peer.sha256_hex.len(), 64);
    }

    fn cert_with_uris(uris: &[&str]) -> PeerCertificate {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        for u in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(*u).expect("ia5"),
            ));
        }
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        PeerCertificate::from_der(cert.der()).expect("parse")
    }

    #[test]
    fn the_principal_is_the_first_spiffe_uri_san_as_istio_authn_takes_it() {
        let peer = cert_with_uris(&[
            "https://not.an.identity/",
            "spiffe://cluster.local/ns/a/sa/first",
            "spiffe://cluster.local/ns/b/sa/second",
        ]);
        assert_eq!(
            peer.principal().as_deref(),
            Some("cluster.local/ns/a/sa/first"),
            "the first spiffe:// SAN, not the first URI and not any later one"
        );
        assert_eq!(
            peer.uris[0], "https://not.an.identity/",
            "XFCC keeps uris[0]"
        );
        // A malformed first SPIFFE id is not skipped in favour of a later one: istio_authn
        // takes the first `spiffe://` SAN whatever follows it, so the peer has no principal
        // an ALLOW rule could match.
        let peer = cert_with_uris(&["spiffe:///ns/x/sa/y", "spiffe://cluster.local/ns/a/sa/b"]);
        assert_eq!(peer.principal(), None);
    }

    #[test]
    fn a_certificate_without_spiffe_uri_has_no_principal() {
        let params = rcgen::CertificateParams::new(vec!["test.com".to_owned()]).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let peer = PeerCertificate::from_der(cert.der()).expect("parse");
        assert_eq!(peer.identity, None);
        assert_eq!(peer.principal(), None);
    }
}
