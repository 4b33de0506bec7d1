//! Client-certificate checks beyond "chains to `ca.crt`": what Istio's MUTUAL
//! `ServerTLSSettings` asks of a client (`subjectAltNames`, `verifyCertificateSpki`,
//! `verifyCertificateHash`, `ca.crl`), and on the mesh side the SPIFFE trust domain.
//!
//! [`CheckedClientVerifier`] runs rustls' `WebPkiClientVerifier` first (chain, validity,
//! key usage, v2 CRLs) and then these checks on the verified leaf; any failure aborts the
//! handshake with an error that says which check refused the certificate. One check always
//! runs, whatever the configuration: a `spiffe` URI SAN must be a valid SPIFFE ID and the only
//! one ([`crate::identity::spiffe::spiffe_id`]), so a malformed id is refused at the handshake
//! instead of leaving an authenticated client with no principal for DENY rules to match. For
//! the same reason a subjectAltName that does not parse strictly is refused
//! ([`crate::identity::spiffe::subject_alt_names`]).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::crl::{RevocationError, RevocationLists};
use crate::identity::spiffe::{subject_alt_names, SanError, SubjectAltNames};

/// What a client certificate must satisfy once its chain is verified.
#[derive(Clone, Debug, Default)]
pub struct ClientCertChecks {
    /// `tls.subjectAltNames`: one of these must be a URI or DNS SAN of the certificate,
    /// compared exactly (Envoy's `match_typed_subject_alt_names` with `exact` matchers, as
    /// Istio generates them). Empty: any.
    pub subject_alt_names: Vec<String>,
    /// `tls.verifyCertificateSpki`: SHA-256 digests of the SubjectPublicKeyInfo.
    pub spki_sha256: Vec<[u8; 32]>,
    /// `tls.verifyCertificateHash`: SHA-256 digests of the DER certificate.
    pub cert_sha256: Vec<[u8; 32]>,
    /// `ca.crl`: the certificate must not be revoked, and its issuer must have a CRL.
    pub revocation: Option<Arc<RevocationLists>>,
    /// Mesh side: the certificate's SPIFFE id must be in one of these trust domains. Empty:
    /// no trust-domain check (Gateway servers, where clients need not carry SPIFFE ids).
    pub trust_domains: Vec<String>,
}

/// Why a verified chain was still refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientCertRejected {
    #[error(
        "client certificate carries none of the subjectAltNames [{wanted}] (it has [{found}])"
    )]
    SubjectAltName { wanted: String, found: String },
    #[error("client certificate matches neither verifyCertificateSpki nor verifyCertificateHash")]
    NotPinned,
    #[error("client certificate rejected by ca.crl: {0}")]
    Revocation(RevocationError),
    #[error("client SPIFFE id {id:?} is not in the trust domain(s) [{wanted}]")]
    ForeignTrustDomain { id: String, wanted: String },
    #[error("client certificate has no SPIFFE id, required by the mesh")]
    NoSpiffeId,
    #[error("{0}")]
    SpiffeId(crate::identity::spiffe::PeerCertError),
    #[error("client certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// The subjectAltName is not read the same way by every parser: refused rather than read
    /// as "no names", which would leave the client without a principal.
    #[error("{0}")]
    MalformedSan(SanError),
}

impl ClientCertChecks {
    /// True when nothing beyond the chain is checked.
    pub fn is_empty(&self) -> bool {
        self.subject_alt_names.is_empty()
            && self.spki_sha256.is_empty()
            && self.cert_sha256.is_empty()
            && self.revocation.is_none()
            && self.trust_domains.is_empty()
    }

    /// A short description for `check`: `subjectAltNames [..], 1 SPKI pin, CRL`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.subject_alt_names.is_empty() {
            parts.push(format!(
                "subjectAltNames [{}]",
                self.subject_alt_names.join(", ")
            ));
        }
        if !self.spki_sha256.is_empty() {
            parts.push(format!("{} SPKI pin(s)", self.spki_sha256.len()));
        }
        if !self.cert_sha256.is_empty() {
            parts.push(format!(
                "{} certificate hash pin(s)",
                self.cert_sha256.len()
            ));
        }
        if self.revocation.is_some() {
            parts.push("ca.crl".to_owned());
        }
        if !self.trust_domains.is_empty() {
            parts.push(format!("trust domains [{}]", self.trust_domains.join(", ")));
        }
        parts.join(", ")
    }

    /// Runs every check on a DER leaf certificate whose chain is already verified.
    pub fn check(&self, der: &[u8], now: UnixTime) -> Result<(), ClientCertRejected> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| ClientCertRejected::Unparsable(e.to_string()))?;
        let SubjectAltNames {
            uris,
            dns_names: dns,
        } = subject_alt_names(&cert).map_err(ClientCertRejected::MalformedSan)?;
        let identity =
            crate::identity::spiffe::spiffe_id(&uris).map_err(ClientCertRejected::SpiffeId)?;
        if !self.subject_alt_names.is_empty()
            && !self
                .subject_alt_names
                .iter()
                .any(|want| uris.contains(want) || dns.contains(want))
        {
            return Err(ClientCertRejected::SubjectAltName {
                wanted: self.subject_alt_names.join(", "),
                found: uris
                    .iter()
                    .chain(&dns)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        // Envoy: with both lists set, matching either one is enough.
        if !self.spki_sha256.is_empty() || !self.cert_sha256.is_empty() {
            let spki = sha256(cert.public_key().raw);
            let whole = sha256(der);
            if !self.spki_sha256.contains(&spki) && !self.cert_sha256.contains(&whole) {
                return Err(ClientCertRejected::NotPinned);
            }
        }
        if let Some(crl) = &self.revocation {
            let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
            crl.check(&cert, now)
                .map_err(ClientCertRejected::Revocation)?;
        }
        if !self.trust_domains.is_empty() {
            let id = identity.ok_or(ClientCertRejected::NoSpiffeId)?;
            if !self.trust_domains.iter().any(|d| d == id.trust_domain()) {
                return Err(ClientCertRejected::ForeignTrustDomain {
                    id: id.uri(),
                    wanted: self.trust_domains.join(", "),
                });
            }
        }
        Ok(())
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// rustls' WebPKI verifier followed by [`ClientCertChecks`].
#[derive(Debug)]
pub struct CheckedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    checks: ClientCertChecks,
}

impl CheckedClientVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, checks: ClientCertChecks) -> Self {
        Self { inner, checks }
    }
}

impl ClientCertVerifier for CheckedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let outcome = self.checks.check(end_entity.as_ref(), now);
        if let Err(e) = &outcome {
            // The TLS alert tells the client little; the operator reads why here.
            tracing::warn!(reason = %e, "client certificate refused");
        }
        match outcome {
            Ok(()) => Ok(verified),
            Err(ClientCertRejected::Revocation(RevocationError::Revoked { .. })) => {
                Err(Error::InvalidCertificate(CertificateError::Revoked))
            }
            Err(ClientCertRejected::Revocation(
                RevocationError::UnknownStatus { .. } | RevocationError::Expired { .. },
            )) => Err(Error::InvalidCertificate(
                CertificateError::UnknownRevocationStatus,
            )),
            Err(other) => Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(other)),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::{
        handshake, leaf, leaf_with_raw_sans, mutual_server, raw_sans, test_ca,
    };

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn the_mesh_refuses_other_trust_domains_unless_aliased() {
        let ca = test_ca("Mesh CA");
        let checks = |domains: &[&str]| ClientCertChecks {
            trust_domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            ..ClientCertChecks::default()
        };
        let ours = leaf(&ca, &[], &["spiffe://cluster.local/ns/default/sa/sleep"], 1);
        let theirs = leaf(&ca, &[], &["spiffe://evil.example/ns/default/sa/sleep"], 2);
        let none = leaf(&ca, &["sleep.default"], &[], 3);
        // Two SPIFFE ids are refused whatever their domains: an X509-SVID has one.
        let mixed = leaf(
            &ca,
            &[],
            &[
                "spiffe://evil.example/ns/default/sa/sleep",
                "spiffe://cluster.local/ns/default/sa/sleep",
            ],
            4,
        );
        let c = checks(&["cluster.local"]);
        assert_eq!(c.check(&ours.der, now()), Ok(()));
        assert!(matches!(
            c.check(&theirs.der, now()),
            Err(ClientCertRejected::ForeignTrustDomain { .. })
        ));
        assert!(matches!(
            c.check(&mixed.der, now()),
            Err(ClientCertRejected::SpiffeId(_))
        ));
        assert_eq!(
            c.check(&none.der, now()),
            Err(ClientCertRejected::NoSpiffeId)
        );
        let aliased = checks(&["cluster.local", "evil.example"]);
        assert_eq!(aliased.check(&theirs.der, now()), Ok(()));
        assert_eq!(
            ClientCertChecks::default().check(&theirs.der, now()),
            Ok(()),
            "Gateway servers do not check trust domains"
        );

        // And in a real handshake against the mesh terminator's kind of config.
        let server = leaf(
            &ca,
            &["test.com"],
            &["spiffe://cluster.local/ns/default/sa/hello"],
            9,
        );
        let cfg = mutual_server(&ca, &server, c);
        assert_eq!(handshake(cfg.clone(), &ca, Some(&ours), false), Ok(()));
        let err = handshake(cfg, &ca, Some(&theirs), false).expect_err("foreign");
        assert!(err.contains("ForeignTrustDomain"), "{err}");
    }

    /// A Gateway MUTUAL server with no option set still refuses, at the handshake, a client
    /// whose SPIFFE id is malformed or not alone, and serves one without any SPIFFE id.
    #[test]
    fn malformed_spiffe_ids_fail_the_handshake_of_every_mutual_server() {
        let ca = test_ca("Gateway CA");
        let server = leaf(&ca, &["test.com"], &[], 1);
        let cfg = mutual_server(&ca, &server, ClientCertChecks::default());
        let refused: &[&[&str]] = &[
            &["SPIFFE://test.client"],
            &["spiffe://TEST.CLIENT"],
            &["spiffe://test.client:443"],
            &["spiffe://a@test.client"],
            &["spiffe://test.client/."],
            &["spiffe:///x", "spiffe://test.client"],
            &["spiffe://test.client", "spiffe://other"],
        ];
        for (i, uris) in refused.iter().enumerate() {
            let client = leaf(&ca, &[], uris, 10 + i as u64);
            let err = handshake(cfg.clone(), &ca, Some(&client), false)
                .expect_err("a malformed SPIFFE id must fail the handshake");
            assert!(err.contains("SpiffeId"), "{uris:?}: {err}");
        }
        // SANs OpenSSL reads as spiffe://test.client and x509-parser does not (issue 12).
        let raw: &[&[&[u8]]] = &[
            &[raw_sans::BER_INDEFINITE],
            &[raw_sans::NOT_UTF8],
            &[raw_sans::SECOND_NOT_UTF8],
        ];
        // Two SAN extensions are refused by webpki itself (rustls will not even load such a
        // client certificate); `check` refuses them too, tested in `identity::spiffe`.
        for (i, sans) in raw.iter().enumerate() {
            let client = leaf_with_raw_sans(&ca, sans, 20 + i as u64);
            let err = handshake(cfg.clone(), &ca, Some(&client), false)
                .expect_err("a SAN that does not parse strictly must fail the handshake");
            assert!(err.contains("MalformedSan"), "case {i}: {err}");
        }
        let der = leaf_with_raw_sans(&ca, &[raw_sans::DER], 29);
        assert_eq!(handshake(cfg.clone(), &ca, Some(&der), false), Ok(()));
        let plain = leaf(&ca, &["client.test"], &[], 30);
        assert_eq!(handshake(cfg.clone(), &ca, Some(&plain), false), Ok(()));
        let good = leaf(&ca, &[], &["https://x", "spiffe://test.client"], 31);
        assert_eq!(handshake(cfg, &ca, Some(&good), false), Ok(()));
    }
}
