//! Server-side rustls configurations for Gateway servers and the mesh terminator.

use std::sync::Arc;

use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite};

use super::client_auth::{CheckedClientVerifier, ClientCertChecks};
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

/// Everything a Gateway server's `tls` block (or the mesh terminator) asks of the handshake.
#[derive(Clone, Debug)]
pub struct ServerOptions<'a> {
    pub mode: ServerTlsMode,
    pub versions: TlsVersions,
    /// From [`super::ciphers::cipher_suites`]; empty: rustls' defaults.
    pub cipher_suites: Vec<SupportedCipherSuite>,
    /// MUTUAL only. The credential's `ca.crl` is added to these by [`server_config_with`].
    pub client_checks: ClientCertChecks,
    /// ALPN protocols offered (`h2`, `http/1.1`); empty for opaque TCP.
    pub alpn: &'a [&'a [u8]],
}

/// Builds a server configuration offering `h2` and `http/1.1` (unless `alpn` is empty, as for
/// opaque TCP).
pub fn server_config(
    cred: &Credential,
    mode: ServerTlsMode,
    versions: TlsVersions,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, CredentialError> {
    server_config_with(
        cred,
        &ServerOptions {
            mode,
            versions,
            cipher_suites: Vec::new(),
            client_checks: ClientCertChecks::default(),
            alpn,
        },
    )
}

/// Builds a server configuration from a credential and every option of [`ServerOptions`].
pub fn server_config_with(
    cred: &Credential,
    options: &ServerOptions<'_>,
) -> Result<Arc<ServerConfig>, CredentialError> {
    let (mode, versions, alpn) = (options.mode, options.versions, options.alpn);
    let mut crypto = provider();
    if !options.cipher_suites.is_empty() {
        // A list that leaves no suite for this certificate's key at the allowed versions
        // would fail every handshake; say so at load time instead.
        let alg = cred.certified_key.key.algorithm();
        let usable = options.cipher_suites.iter().any(|s| {
            let version_on = match s {
                SupportedCipherSuite::Tls13(_) => !versions.max_tls12,
                SupportedCipherSuite::Tls12(_) => !versions.min_tls13,
            };
            version_on && s.usable_for_signature_algorithm(alg)
        });
        if !usable {
            return Err(CredentialError::Settings {
                reason: format!(
                    "no cipher suite of cipherSuites can be used with this {alg:?} certificate at the allowed protocol versions"
                ),
            });
        }
        crypto.cipher_suites = options.cipher_suites.clone();
    }
    let crypto = Arc::new(crypto);
    let protocol_versions: &[&rustls::SupportedProtocolVersion] =
        match (versions.min_tls13, versions.max_tls12) {
            (true, _) => &[&rustls::version::TLS13],
            (false, true) => &[&rustls::version::TLS12],
            (false, false) => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
    let builder = ServerConfig::builder_with_provider(crypto)
        .with_protocol_versions(protocol_versions)
        .map_err(|e| CredentialError::Settings {
            reason: format!("cipher suites and protocol versions do not fit together: {e}"),
        })?;
    let builder = match mode {
        ServerTlsMode::Simple => builder.with_no_client_auth(),
        ServerTlsMode::Mutual => {
            let roots = cred
                .roots
                .clone()
                .ok_or(CredentialError::NoCertificate { field: "ca.crt" })?;
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(roots, Arc::new(provider()));
            let mut checks = options.client_checks.clone();
            if let Some(crl) = &cred.crl {
                // webpki checks the v2 CRLs it can read; `checks` refuses an unknown status
                // and reads the v1 CRLs `openssl ca -gencrl` makes by default.
                verifier = verifier
                    .with_crls(crl.webpki_crls())
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status()
                    .enforce_revocation_expiration();
                checks.revocation = Some(crl.clone());
            }
            let verifier = verifier
                .build()
                .map_err(|e| CredentialError::BadTrustAnchor {
                    reason: e.to_string(),
                })?;
            if checks.is_empty() {
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_client_cert_verifier(Arc::new(CheckedClientVerifier::new(
                    verifier, checks,
                )))
            }
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(FixedCert(cred.certified_key.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
