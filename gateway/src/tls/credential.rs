//! A TLS credential: certificate chain, private key and the CA that verifies peers, checked
//! for consistency once when the configuration is loaded.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::provider;

/// What was wrong with a credential. `field` is the secret key (`tls.crt`, `tls.key`, `ca.crt`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CredentialError {
    #[error("{field}: no PEM certificate found")]
    NoCertificate { field: &'static str },
    #[error("{field}: not valid PEM: {reason}")]
    BadPem { field: &'static str, reason: String },
    #[error("{field}: no PEM private key found (expected PKCS#8, PKCS#1 or SEC1)")]
    NoKey { field: &'static str },
    #[error("tls.key: unsupported private key: {reason}")]
    UnsupportedKey { reason: String },
    #[error("tls.key does not match the certificate in tls.crt")]
    KeyMismatch,
    #[error("{field}: certificate {subject:?} cannot be parsed: {reason}")]
    BadCertificate {
        field: &'static str,
        subject: String,
        reason: String,
    },
    #[error("ca.crt: {subject:?} is not a CA certificate (basicConstraints CA:TRUE is missing)")]
    NotACa { subject: String },
    #[error("ca.crt: rejected as a trust anchor: {reason}")]
    BadTrustAnchor { reason: String },
    #[error("ca.crl given but the credential has no ca.crt to check it against")]
    CrlWithoutCa,
    #[error(transparent)]
    Crl(#[from] super::crl::CrlError),
    #[error("{reason}")]
    Settings { reason: String },
}

/// A parsed credential, ready to build rustls configurations from.
#[derive(Clone, Debug)]
pub struct Credential {
    /// The leaf and its chain, with the signing key.
    pub certified_key: Arc<CertifiedKey>,
    /// Trust anchors from `ca.crt`, when the credential has one.
    pub roots: Option<Arc<RootCertStore>>,
    /// The leaf's notAfter, seconds since the Unix epoch (for expiry metrics).
    pub not_after: i64,
    /// The certificates of `ca.crt`, DER (a CRL's signature is checked against them).
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// Revoked client certificates (`ca.crl`), checked when the credential verifies clients.
    pub crl: Option<Arc<super::crl::RevocationLists>>,
}

impl Credential {
    /// Parses PEM material (as found in a `kubernetes.io/tls` secret) and checks that the key
    /// matches the certificate and that `ca.crt` holds CA certificates.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, CredentialError> {
        let chain = certs_from_pem(cert_pem, "tls.crt")?;
        let leaf = parse(&chain[0], "tls.crt")?;
        let not_after = leaf.validity().not_after.timestamp();
        let key = key_from_pem(key_pem)?;
        let signing_key = provider().key_provider.load_private_key(key).map_err(|e| {
            CredentialError::UnsupportedKey {
                reason: e.to_string(),
            }
        })?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        certified_key
            .keys_match()
            .map_err(|_| CredentialError::KeyMismatch)?;
        let ca_certs = match ca_pem {
            Some(pem) => certs_from_pem(pem, "ca.crt")?,
            None => Vec::new(),
        };
        let roots = ca_pem.map(roots_from_pem).transpose()?.map(Arc::new);
        Ok(Self {
            certified_key: Arc::new(certified_key),
            roots,
            not_after,
            ca_certs,
            crl: None,
        })
    }

    /// Adds `ca.crl` (PEM or DER; several CRLs may be concatenated in PEM), each checked
    /// against `ca.crt`.
    pub fn with_crl(mut self, crl: &[u8]) -> Result<Self, CredentialError> {
        if self.roots.is_none() {
            return Err(CredentialError::CrlWithoutCa);
        }
        let lists = super::crl::RevocationLists::parse(crl, &self.ca_certs)?;
        // Let webpki parse the v2 CRLs now, so one it would refuse fails the load, not the
        // first handshake.
        if let Some(roots) = &self.roots {
            for (i, der) in lists.webpki_crls().into_iter().enumerate() {
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    Arc::new(provider()),
                )
                .with_crls([der])
                .build()
                .map_err(|e| super::crl::CrlError::Rejected {
                    index: i + 1,
                    reason: e.to_string(),
                })?;
            }
        }
        self.crl = Some(Arc::new(lists));
        Ok(self)
    }
}

fn certs_from_pem(
    pem: &[u8],
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CredentialError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CredentialError::BadPem {
            field,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CredentialError::NoCertificate { field });
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, CredentialError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| CredentialError::BadPem {
            field: "tls.key",
            reason: e.to_string(),
        })?
        .ok_or(CredentialError::NoKey { field: "tls.key" })
}

fn parse<'a>(
    der: &'a CertificateDer<'_>,
    field: &'static str,
) -> Result<X509Certificate<'a>, CredentialError> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, cert)| cert)
        .map_err(|e| CredentialError::BadCertificate {
            field,
            subject: String::new(),
            reason: e.to_string(),
        })
}

fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, CredentialError> {
    let mut roots = RootCertStore::empty();
    for der in certs_from_pem(pem, "ca.crt")? {
        let cert = parse(&der, "ca.crt")?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CredentialError::NotACa {
                subject: cert.subject().to_string(),
            });
        }
        roots
            .add(der.clone())
            .map_err(|e| CredentialError::BadTrustAnchor {
                reason: e.to_string(),
            })?;
    }
    Ok(roots)
}

impl CredentialError {
    /// The secret key the error is about, to point at its line.
    pub fn field_hint(&self) -> &'static str {
        match self {
            CredentialError::NoCertificate { field }
            | CredentialError::BadPem { field, .. }
            | CredentialError::NoKey { field }
            | CredentialError::BadCertificate { field, .. } => field,
            CredentialError::UnsupportedKey { .. } | CredentialError::KeyMismatch => "tls.key",
            CredentialError::NotACa { .. } | CredentialError::BadTrustAnchor { .. } => "ca.crt",
            CredentialError::CrlWithoutCa | CredentialError::Crl(_) => "ca.crl",
            CredentialError::Settings { .. } => "tls",
        }
    }
}
