//! rustls server configurations built from credentials, and a look at the ClientHello before
//! the handshake (SNI for routing and passthrough, TLS-or-plaintext for PERMISSIVE).

pub mod client;
pub mod credential;
pub mod server;
pub mod sniff;

pub use credential::{Credential, CredentialError};
pub use server::{server_config, ServerTlsMode, TlsVersions};

/// The one crypto provider every configuration uses.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
