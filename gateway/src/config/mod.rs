//! Istio YAML → one validated, immutable configuration [`Snapshot`].
//!
//! Loading happens in two steps: [`load`] splits files into documents and deserializes each
//! into its typed resource ([`resources`]), remembering where it came from ([`Origin`]);
//! [`compile`] checks the resources against each other and builds the model the proxy reads.
//! A snapshot is never edited: a reload builds a new one and swaps it in whole.

// Config errors are built only while loading, never on the request path; keeping them flat
// (file, line, document, resource, field) reads better than boxing them.
#![allow(clippy::result_large_err)]

pub mod compile;
pub mod credentials;
pub mod error;
pub mod hosts;
pub mod listeners;
pub mod load;
pub mod mesh;
pub mod model;
pub mod resources;
pub mod routes;
pub mod server_tls;
pub mod watch;

pub use compile::{compile, Settings, Snapshot};
pub use error::{ConfigError, ConfigErrors, ConfigWarning};
pub use load::{load_paths, load_str, Resources};

use std::path::PathBuf;
use std::sync::Arc;

/// Where a document came from: the file, its 1-based index in the file, and the line its
/// first byte is on. Errors print it as `file:line (document N, Kind ns/name)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub file: PathBuf,
    pub document: usize,
    pub first_line: usize,
    /// The document's own text, to find the line of a field named in a later error.
    pub text: Arc<str>,
}

impl Origin {
    /// The 1-based file line of the first line in this document that contains `needle`,
    /// or the document's first line when it is not found.
    pub fn line_of(&self, needle: &str) -> usize {
        self.text
            .lines()
            .position(|l| l.contains(needle))
            .map_or(self.first_line, |i| self.first_line + i)
    }
}

/// One resource of a known kind: its metadata, its spec, and its origin.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc<S> {
    pub origin: Origin,
    pub kind: &'static str,
    pub metadata: resources::Metadata,
    pub spec: S,
}

impl<S> Doc<S> {
    /// The namespace, `default` when the document names none (as `kubectl apply` would).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// `Kind namespace/name`, for messages.
    pub fn display_name(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace(), self.metadata.name)
    }

    /// An error about `field` of this resource; the line is found from `needle` (the bad
    /// value or the field's key) in the document's text.
    pub fn error(&self, field: &str, needle: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.origin.file.clone(),
            line: Some(self.origin.line_of(needle)),
            document: Some(self.origin.document),
            resource: Some(self.display_name()),
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod server_tls_tests;
