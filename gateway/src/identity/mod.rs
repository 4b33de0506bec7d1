//! Workload identity: SPIFFE ids read from X.509 certificates, and certificate issuing.

pub mod certs;
pub mod spiffe;

pub use spiffe::{Identity, PeerCertificate};
