//! Configuration errors that name the file, the line, the document, the resource and the field.

use std::fmt;
use std::path::PathBuf;

/// One problem in the configuration.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub document: Option<usize>,
    /// `Kind namespace/name` when known.
    pub resource: Option<String>,
    /// The field path, e.g. `spec.servers[1].tls.mode`.
    pub field: Option<String>,
    pub message: String,
}

impl ConfigError {
    /// An error about a whole file (unreadable, not YAML).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            document: None,
            resource: None,
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        match (self.document, &self.resource) {
            (Some(doc), Some(res)) => write!(f, " (document {doc}, {res})")?,
            (Some(doc), None) => write!(f, " (document {doc})")?,
            (None, Some(res)) => write!(f, " ({res})")?,
            (None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one load, so an operator fixes them in one pass.
#[derive(Clone, Debug, Default, PartialEq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// Something that loads but cannot do what it seems to say: a rule that can never match, a
/// Secret that is not read. `check` prints these; they never stop the daemon.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigWarning(pub ConfigError);

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}", self.0)
    }
}
