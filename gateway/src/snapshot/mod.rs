//! Validated resources → one immutable [`Snapshot`]: what the running proxy uses.
//!
//! The layer above [`crate::config`], [`crate::tls`] and [`crate::policy`]: [`compile()`] takes
//! the loaded resources and the command-line [`Settings`](crate::config::Settings), builds
//! each Gateway server's rustls configuration ([`server_tls`], from the credentials
//! [`credentials`] finds), compiles the AuthorizationPolicies, assembles this node's mesh side
//! ([`mesh`]) and lints what can never match ([`lint`]). A snapshot is never edited: a reload
//! builds a new one and swaps it in whole.

// Snapshot errors are config errors, built only while compiling, never on the request path.
#![allow(clippy::result_large_err)]

pub mod compile;
pub mod credentials;
pub mod lint;
pub mod listeners;
pub mod mesh;
pub mod model;
pub mod server_tls;

pub use compile::{compile, Snapshot};

#[cfg(test)]
mod server_tls_tests;
#[cfg(test)]
pub(crate) mod testing;
