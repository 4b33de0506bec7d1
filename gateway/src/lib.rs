//! Portcullis: a service-mesh security gateway that enforces mutual TLS with help from the
//! Linux kernel.
//!
//! The layers, in the order a connection meets them: [`config`] turns Istio YAML into one
//! validated [`config::Snapshot`]; [`identity`] reads SPIFFE identities from certificates;
//! [`policy`] compiles AuthorizationPolicy and PeerAuthentication; [`tls`] builds rustls
//! configurations; [`proxy`] runs the listeners and forwards requests; [`kernel`] loads the
//! eBPF programs that steer mesh traffic and reset plaintext under STRICT.

pub mod admin;
pub mod backend;
pub mod config;
pub mod identity;
pub mod kernel;
pub mod mesh;
pub mod policy;
pub mod proxy;
pub mod reconcile;
pub mod tls;
