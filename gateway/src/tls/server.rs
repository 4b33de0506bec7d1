//! Server-side rustls configurations for Gateway servers and the mesh terminator.

use std::sync::Arc;

use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::{provider, Credential, CredentialError};

/// How a TLS server authenticates its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerTlsMode {
    /// Server certificate only (Istio `SIMPLE`).
    Simple,
    /// The client must present a certificate chaining to the credential's `ca.crt`
    /// (Istio `MUTUAL`).
    Mutual,
}

/// Protocol versions a server accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsVersions {
    pub min_tls13: bool,
    pub max_tls12: bool,
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Builds a server configuration offering `h2` and `http/1.1` (unless `alpn` is empty, as for
/// opaque TCP).
pub fn server_config(
    cred: &Credential,
    mode: ServerTlsMode,
    versions: TlsVersions,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, CredentialError> {
    let protocol_versions: &[&rustls::SupportedProtocolVersion] =
        match (versions.min_tls13, versions.max_tls12) {
            (true, _) => &[&rustls::version::TLS13],
            (false, true) => &[&rustls::version::TLS12],
            (false, false) => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
    let builder = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(protocol_versions)
        .map_err(|e| CredentialError::BadTrustAnchor {
            reason: e.to_string(),
        })?;
    let builder = match mode {
        ServerTlsMode::Simple => builder.with_no_client_auth(),
        ServerTlsMode::Mutual => {
            let roots = cred
                .roots
                .clone()
                .ok_or(CredentialError::NoCertificate { field: "ca.crt" })?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::new(provider()))
                .build()
                .map_err(|e| CredentialError::BadTrustAnchor {
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(FixedCert(cred.certified_key.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
