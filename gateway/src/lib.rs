//! Portcullis: a service-mesh security gateway that enforces mutual TLS with help from the
//! Linux kernel.
//!
//! The layers, in the order a connection meets them: [`config`] turns Istio YAML into typed,
//! validated resources; [`identity`] reads SPIFFE identities from certificates; [`policy`]
//! compiles AuthorizationPolicy and PeerAuthentication; [`tls`] builds rustls configurations;
//! [`snapshot`] assembles those three into one immutable [`snapshot::Snapshot`];
//! [`proxy`] runs the listeners and forwards requests; [`kernel`] loads the eBPF programs that
//! steer mesh traffic and reset plaintext under STRICT.
//!
//! Imports point one way: `snapshot` → `policy` → `config`, `snapshot` → `tls`; `config`
//! imports neither `tls` nor `policy`, and `tls` imports neither of them.

pub mod admin;
pub mod backend;
pub mod config;
pub mod identity;
pub mod kernel;
pub mod mesh;
pub mod policy;
pub mod proxy;
pub mod reconcile;
pub mod snapshot;
pub mod tls;
