//! Istio YAML → typed, validated resources: data plus validation, nothing built from it.
//!
//! [`load`] splits files into documents and deserializes each into its typed resource
//! ([`resources`]), remembering where it came from ([`Origin`]) so every error names file,
//! line, document, resource and field. [`routes`] checks VirtualServices against
//! ServiceEntries into the routing [`model`]; [`Settings`] are what the command line adds.
//!
//! This module imports neither `tls` nor `policy`: turning the resources into what the running
//! proxy uses (rustls configurations, compiled policies) is the job of `snapshot`, one layer
//! up. `policy` may read config's types, never the reverse.

// Config errors are built only while loading, never on the request path; keeping them flat
// (file, line, document, resource, field) reads better than boxing them.
#![allow(clippy::result_large_err)]

pub mod error;
pub mod hosts;
pub mod load;
pub mod model;
pub mod path_normalization;
pub mod resources;
pub mod routes;
pub mod settings;
pub mod watch;

pub use error::{ConfigError, ConfigErrors, ConfigWarning};
pub use load::{load_paths, load_str, Resources};
pub use path_normalization::PathNormalization;
pub use settings::Settings;

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

    /// The line of `needle` within the list items that `field` names: for
    /// `spec.servers[1].tls.caCertificates`, the first line containing `needle` inside the
    /// second item of `servers:` (so two servers with the same key are told apart). Block
    /// lists are followed; a flow list (`[{…}, {…}]`) or a path that cannot be followed falls
    /// back to the narrowest range found, then to the whole document.
    pub fn line_in(&self, field: &str, needle: &str) -> usize {
        let lines: Vec<&str> = self.text.lines().collect();
        let (mut start, mut end) = (0, lines.len());
        for segment in field.split('.') {
            let Some((key, index)) = segment
                .strip_suffix(']')
                .and_then(|s| s.split_once('['))
                .and_then(|(k, i)| Some((k, i.parse::<usize>().ok()?)))
            else {
                continue;
            };
            match list_item(&lines[start..end], key, index) {
                Some((s, e)) => (start, end) = (start + s, start + e),
                None => break,
            }
        }
        lines[start..end]
            .iter()
            .position(|l| l.contains(needle))
            .map_or_else(|| self.line_of(needle), |i| self.first_line + start + i)
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The line range of item `index` of the block list under `key:` in `lines`.
fn list_item(lines: &[&str], key: &str, index: usize) -> Option<(usize, usize)> {
    let key_colon = format!("{key}:");
    let key_line = lines.iter().position(|l| {
        let t = l.trim_start().trim_start_matches("- ");
        t.starts_with(&key_colon)
    })?;
    let after_colon = lines[key_line].split_once(&key_colon)?.1.trim();
    if !after_colon.is_empty() && !after_colon.starts_with('#') {
        return None; // flow style or a scalar: nothing to follow line by line
    }
    let body = |l: &&str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    let first = lines[key_line + 1..].iter().position(&body)? + key_line + 1;
    let marker_indent = indent(lines[first]);
    if !lines[first].trim_start().starts_with('-') {
        return None;
    }
    let mut items = Vec::new();
    let mut list_end = lines.len();
    for (i, l) in lines.iter().enumerate().skip(first) {
        if !body(l) {
            continue;
        }
        let ind = indent(l);
        let is_marker = ind == marker_indent && l.trim_start().starts_with('-');
        if ind < marker_indent || (ind == marker_indent && !is_marker) {
            list_end = i;
            break;
        }
        if is_marker {
            items.push(i);
        }
    }
    let start = *items.get(index)?;
    let end = items.get(index + 1).copied().unwrap_or(list_end);
    Some((start, end))
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
            line: Some(self.origin.line_in(field, needle)),
            document: Some(self.origin.document),
            resource: Some(self.display_name()),
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Origin;

    fn origin(text: &str) -> Origin {
        Origin {
            file: "f.yaml".into(),
            document: 1,
            first_line: 10,
            text: text.into(),
        }
    }

    #[test]
    fn fields_in_list_items_find_their_own_line() {
        let o = origin("spec:\n  servers:\n  - hosts: [a]\n    tls:\n      mode: MUTUAL\n  - hosts: [b]\n    tls:\n      mode: MUTUAL\n      caCertificates: x\n  selector: {}\n");
        assert_eq!(o.line_in("spec.servers[1].tls.mode", "mode"), 17);
        assert_eq!(o.line_in("spec.servers[0].tls.mode", "mode"), 14);
        assert_eq!(
            o.line_in("spec.servers[1].tls.caCertificates", "caCertificates"),
            18
        );
        // An index past the end, or a field without indices: the whole document.
        assert_eq!(o.line_in("spec.servers[5].tls.mode", "mode"), 14);
        assert_eq!(o.line_in("spec.selector", "selector"), 19);
        // Nested lists (policy rules) and lists at the key's own indentation.
        let p = origin("rules:\n- from: [{source: {principals: [a]}}]\n  to:\n  - operation: {paths: [/x]}\n  - operation: {paths: [/x]}\n- to:\n  - operation: {paths: [/x]}\n");
        assert_eq!(p.line_in("spec.rules[0].to[1].operation.paths", "/x"), 14);
        assert_eq!(p.line_in("spec.rules[1].to[0].operation.paths", "/x"), 16);
        // Flow lists are not followed: the first occurrence.
        let f = origin("servers: [{tls: {mode: A}}, {tls: {mode: B}}]\n");
        assert_eq!(f.line_in("spec.servers[1].tls.mode", "mode"), 10);
    }
}
