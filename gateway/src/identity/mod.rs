//! Workload identity: SPIFFE ids read from X.509 certificates, and certificate issuing.

pub mod spiffe;

pub use spiffe::{Identity, PeerCertificate};
