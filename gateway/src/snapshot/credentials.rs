//! Credentials by name, found as Istio's gateway finds them: a Kubernetes Secret **in the
//! gateway's own namespace** (`--namespace`), or a directory `<dir>/<name>/` holding
//! `tls.crt`, `tls.key`, `ca.crt` and `ca.crl`.
//!
//! The client CA comes from where Istio takes it: a companion `<name>-cacert` (Secret in the
//! same namespace, or directory) wins over `ca.crt` in the main one; its `ca.crl` goes with
//! it. A Secret of the right name in another namespace is never used (Istio's gateway cannot
//! read it either), and `check` says so with a warning.

use std::path::{Path, PathBuf};

use base64::Engine;

use crate::config::resources::SecretBody;
use crate::config::{ConfigError, ConfigWarning, Doc, Resources, Settings};
use crate::tls::Credential;

/// The suffix of Istio's companion CA secret.
const CACERT_SUFFIX: &str = "-cacert";
/// The keys read from a credential Secret, and from its `-cacert` companion.
const MAIN_KEYS: [&str; 4] = ["tls.crt", "tls.key", "ca.crt", "ca.crl"];
const CACERT_KEYS: [&str; 2] = ["ca.crt", "ca.crl"];

/// Finds `name` as a Secret in the gateway's namespace or as a directory `<dir>/<name>/`,
/// and parses it. `referrer` makes the error at the place that named the credential (a
/// Gateway server's `credentialName`, or the mesh credential flag).
pub(super) fn load_credential(
    referrer: &dyn Fn(String) -> ConfigError,
    name: &str,
    settings: &Settings,
    resources: &Resources,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Credential, ConfigError> {
    let main = own_secret(name, settings, resources, warnings);
    let companion_name = format!("{name}{CACERT_SUFFIX}");
    if let Some(secret) = main {
        let companion = own_secret(&companion_name, settings, resources, warnings);
        return from_secrets(name, secret, companion, warnings);
    }
    for dir in &settings.credential_dirs {
        let base = dir.join(name);
        if base.is_dir() {
            let companion = Some(dir.join(&companion_name)).filter(|p| p.is_dir());
            return from_dir(referrer, name, &base, companion.as_deref(), warnings);
        }
    }
    let dirs: Vec<String> = settings
        .credential_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    let elsewhere: Vec<String> = resources
        .secrets
        .iter()
        .filter(|s| s.metadata.name == name)
        .map(|s| s.namespace().to_owned())
        .collect();
    let hint = if elsewhere.is_empty() {
        String::new()
    } else {
        format!(
            "; a Secret {name:?} exists in namespace(s) [{}], but the gateway reads Secrets only from its own namespace {:?} (--namespace)",
            elsewhere.join(", "),
            settings.gateway_namespace
        )
    };
    Err(referrer(format!(
        "credential {name:?} not found: no Secret named {name:?} in namespace {:?} and no directory {name}/ under the credential dirs [{}]{hint}",
        settings.gateway_namespace,
        dirs.join(", ")
    )))
}

/// The Secret `name` in the gateway's namespace; same-named Secrets elsewhere get a warning.
fn own_secret<'a>(
    name: &str,
    settings: &Settings,
    resources: &'a Resources,
    warnings: &mut Vec<ConfigWarning>,
) -> Option<&'a Doc<SecretBody>> {
    let mut own = None;
    for s in resources.secrets.iter().filter(|s| s.metadata.name == name) {
        if s.namespace() == settings.gateway_namespace {
            own = own.or(Some(s));
        } else {
            warnings.push(ConfigWarning(s.error(
                "metadata.namespace",
                "namespace",
                format!(
                    "not used: the gateway reads Secrets only from its own namespace {:?} (--namespace), as Istio's gateway does",
                    settings.gateway_namespace
                ),
            )));
        }
    }
    own
}

/// One key of a Secret, from `stringData` or base64 `data`.
fn secret_key(secret: &Doc<SecretBody>, key: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    if let Some(v) = secret.spec.string_data.get(key) {
        return Ok(Some(v.as_bytes().to_vec()));
    }
    match secret.spec.data.get(key) {
        None => Ok(None),
        Some(b64) => {
            let compact: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map(Some)
                .map_err(|e| {
                    secret.error(
                        &format!("data.{key}"),
                        key,
                        format!("not valid base64: {e}"),
                    )
                })
        }
    }
}

fn from_secrets(
    name: &str,
    secret: &Doc<SecretBody>,
    companion: Option<&Doc<SecretBody>>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Credential, ConfigError> {
    // A key that is not read is most likely a typo (`ca.clr`) or another tool's spelling
    // (Istio's generic `cert`/`key`/`cacert`): say so rather than drop it quietly.
    for (doc, known) in [
        (Some(secret), &MAIN_KEYS[..]),
        (companion, &CACERT_KEYS[..]),
    ] {
        let Some(doc) = doc else { continue };
        for key in doc.spec.data.keys().chain(doc.spec.string_data.keys()) {
            if !known.contains(&key.as_str()) {
                warnings.push(ConfigWarning(doc.error(
                    &format!("data.{key}"),
                    key,
                    format!(
                        "key {key:?} is not read (a credential Secret holds {})",
                        known.join(", ")
                    ),
                )));
            }
        }
    }
    let cert = secret_key(secret, "tls.crt")?
        .ok_or_else(|| secret.error("data", "data", "the secret has no `tls.crt`"))?;
    let key = secret_key(secret, "tls.key")?
        .ok_or_else(|| secret.error("data", "data", "the secret has no `tls.key`"))?;
    let (ca, crl, ca_doc) = match companion {
        Some(c) => {
            let ca = secret_key(c, "ca.crt")?.ok_or_else(|| {
                c.error(
                    "data",
                    "data",
                    format!("the CA secret of credential {name:?} has no `ca.crt`"),
                )
            })?;
            for shadowed in ["ca.crt", "ca.crl"] {
                if secret_key(secret, shadowed)?.is_some() {
                    warnings.push(ConfigWarning(secret.error(
                        &format!("data.{shadowed}"),
                        shadowed,
                        format!(
                            "not used: Secret {} supplies the client CA (and its ca.crl), as in Istio",
                            c.display_name()
                        ),
                    )));
                }
            }
            (Some(ca), secret_key(c, "ca.crl")?, c)
        }
        None => (
            secret_key(secret, "ca.crt")?,
            secret_key(secret, "ca.crl")?,
            secret,
        ),
    };
    let cred = Credential::from_pem(&cert, &key, ca.as_deref()).map_err(|e| {
        let doc = if e.field_hint().starts_with("ca.") {
            ca_doc
        } else {
            secret
        };
        doc.error(
            &format!("data.{}", e.field_hint()),
            e.field_hint(),
            format!("credential {name:?}: {e}"),
        )
    })?;
    match crl {
        None => Ok(cred),
        Some(crl) => cred.with_crl(&crl).map_err(|e| {
            ca_doc.error("data.ca.crl", "ca.crl", format!("credential {name:?}: {e}"))
        }),
    }
}

fn from_dir(
    referrer: &dyn Fn(String) -> ConfigError,
    name: &str,
    base: &Path,
    companion: Option<&Path>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Credential, ConfigError> {
    let read = |path: PathBuf| -> Result<Option<Vec<u8>>, ConfigError> {
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(referrer(format!("{}: {e}", path.display()))),
        }
    };
    let required = |file: &str| -> Result<Vec<u8>, ConfigError> {
        let path = base.join(file);
        read(path.clone())?.ok_or_else(|| {
            referrer(format!(
                "credential {name:?}: {} does not exist",
                path.display()
            ))
        })
    };
    let cert = required("tls.crt")?;
    let key = required("tls.key")?;
    let ca_dir = match companion {
        Some(c) => {
            for shadowed in ["ca.crt", "ca.crl"] {
                if base.join(shadowed).exists() {
                    warnings.push(ConfigWarning(referrer(format!(
                        "{} is not used: {} supplies the client CA (and its ca.crl), as in Istio",
                        base.join(shadowed).display(),
                        c.display()
                    ))));
                }
            }
            c
        }
        None => base,
    };
    let ca_path = ca_dir.join("ca.crt");
    let ca = read(ca_path.clone())?;
    if companion.is_some() && ca.is_none() {
        return Err(referrer(format!(
            "credential {name:?}: {} does not exist",
            ca_path.display()
        )));
    }
    let cred = Credential::from_pem(&cert, &key, ca.as_deref()).map_err(|e| {
        let file = if e.field_hint().starts_with("ca.") {
            ca_dir.join(e.field_hint())
        } else {
            base.join(e.field_hint())
        };
        referrer(format!("credential {name:?}: {}: {e}", file.display()))
    })?;
    let crl_path = ca_dir.join("ca.crl");
    match read(crl_path.clone())? {
        None => Ok(cred),
        Some(crl) => cred
            .with_crl(&crl)
            .map_err(|e| referrer(format!("credential {name:?}: {}: {e}", crl_path.display()))),
    }
}
