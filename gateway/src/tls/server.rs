//! Server-side rustls configurations for Gateway servers and the mesh terminator.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
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

/// The MUTUAL client verifier of a credential (its `ca.crt`, its `ca.crl`) and `checks`:
/// what [`server_config_with`] builds in, and what re-checks an open connection's client
/// after a reload ([`verify_client_chain`]).
pub fn client_verifier(
    cred: &Credential,
    checks: &ClientCertChecks,
) -> Result<Arc<dyn ClientCertVerifier>, CredentialError> {
    let roots = cred
        .roots
        .clone()
        .ok_or(CredentialError::NoCertificate { field: "ca.crt" })?;
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::new(provider()));
    let mut checks = checks.clone();
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
    // Always wrapped, even with no configured check: the SPIFFE ID check runs for every
    // client certificate.
    Ok(Arc::new(CheckedClientVerifier::new(verifier, checks)))
}

/// Whether a client chain (leaf first, as the client presented it) passes `cred` and
/// `checks` now: an open connection's certificate, re-checked after the server's CA, CRL or
/// subjectAltNames changed.
pub fn verify_client_chain(
    cred: &Credential,
    checks: &ClientCertChecks,
    chain: &[CertificateDer<'static>],
) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("no client certificate")?;
    let verifier = client_verifier(cred, checks).map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
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
            builder.with_client_cert_verifier(client_verifier(cred, &options.client_checks)?)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(FixedCert(cred.certified_key.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
