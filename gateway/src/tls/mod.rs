//! rustls server configurations built from credentials, and a look at the ClientHello before
//! the handshake (SNI for routing and passthrough, TLS-or-plaintext for PERMISSIVE).

pub mod ciphers;
pub mod client;
pub mod client_auth;
pub mod credential;
pub mod crl;
pub mod server;
pub mod sniff;
#[cfg(test)]
pub(crate) mod testing;

pub use client_auth::ClientCertChecks;
pub use credential::{Credential, CredentialError};
pub use server::{
    client_verifier, server_config, server_config_with, verify_client_chain, ServerOptions,
    ServerTlsMode, TlsVersions,
};

/// The one crypto provider every configuration uses.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
