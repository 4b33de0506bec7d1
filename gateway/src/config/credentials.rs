//! Credentials by name: a Kubernetes Secret in the configuration, or a directory
//! `<dir>/<name>/{tls.crt,tls.key,ca.crt}`.

use base64::Engine;

use super::compile::Settings;
use super::{ConfigError, Resources};
use crate::tls::Credential;

/// Finds `name` as a Secret (preferring the gateway's namespace, then the root namespace,
/// then any) or as a directory `<dir>/<name>/`, and parses it.
/// `referrer` makes the error at the place that named the credential (a Gateway server's
/// `credentialName`, or the mesh credential flag).
pub(super) fn load_credential(
    referrer: &dyn Fn(String) -> ConfigError,
    name: &str,
    settings: &Settings,
    resources: &Resources,
) -> Result<Credential, ConfigError> {
    let rank = |ns: &str| {
        if ns == settings.gateway_namespace {
            0
        } else if ns == settings.root_namespace {
            1
        } else {
            2
        }
    };
    let secret = resources
        .secrets
        .iter()
        .filter(|s| s.metadata.name == name)
        .min_by_key(|s| rank(s.namespace()));
    if let Some(secret) = secret {
        let get = |key: &str| -> Result<Option<Vec<u8>>, ConfigError> {
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
        };
        let cert = get("tls.crt")?
            .ok_or_else(|| secret.error("data", "data", "the secret has no `tls.crt`"))?;
        let key = get("tls.key")?
            .ok_or_else(|| secret.error("data", "data", "the secret has no `tls.key`"))?;
        let mut ca = get("ca.crt")?;
        if ca.is_none() {
            // Istio also reads the CA from a companion secret `<name>-cacert`.
            let companion = format!("{name}-cacert");
            if let Some(c) = resources
                .secrets
                .iter()
                .find(|s| s.metadata.name == companion)
            {
                ca = c
                    .spec
                    .string_data
                    .get("ca.crt")
                    .map(|v| v.as_bytes().to_vec())
                    .or_else(|| {
                        c.spec.data.get("ca.crt").and_then(|b| {
                            let compact: String =
                                b.chars().filter(|c| !c.is_whitespace()).collect();
                            base64::engine::general_purpose::STANDARD
                                .decode(compact)
                                .ok()
                        })
                    });
            }
        }
        return Credential::from_pem(&cert, &key, ca.as_deref()).map_err(|e| {
            secret.error("data", e.field_hint(), format!("credential {name:?}: {e}"))
        });
    }
    for dir in &settings.credential_dirs {
        let base = dir.join(name);
        if !base.is_dir() {
            continue;
        }
        let read = |file: &str| std::fs::read(base.join(file));
        let cert = read("tls.crt")
            .map_err(|e| referrer(format!("{}: {e}", base.join("tls.crt").display())))?;
        let key = read("tls.key")
            .map_err(|e| referrer(format!("{}: {e}", base.join("tls.key").display())))?;
        let ca = read("ca.crt").ok();
        return Credential::from_pem(&cert, &key, ca.as_deref())
            .map_err(|e| referrer(format!("credential {name:?} in {}: {e}", base.display())));
    }
    let dirs: Vec<String> = settings
        .credential_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    Err(referrer(format!(
            "credential {name:?} not found: no Secret named {name:?} in the configuration and no directory {name}/ under the credential dirs [{}]",
            dirs.join(", ")
        ),
    ))
}
