//! A Gateway server's `tls` block (Istio `ServerTLSSettings`) → a terminating rustls
//! configuration, field by field.
//!
//! | field | here |
//! |---|---|
//! | `mode` | SIMPLE, MUTUAL, PASSTHROUGH; ISTIO_MUTUAL, AUTO_PASSTHROUGH, OPTIONAL_MUTUAL refused |
//! | `credentialName` | a Secret in the gateway's namespace or a credential directory |
//! | `subjectAltNames` | MUTUAL: the client certificate must carry one (URI or DNS SAN, exact) |
//! | `verifyCertificateSpki` | MUTUAL: base64 SHA-256 of the client's SubjectPublicKeyInfo |
//! | `verifyCertificateHash` | MUTUAL: hex SHA-256 of the client certificate (`:` allowed) |
//! | `minProtocolVersion`, `maxProtocolVersion` | TLS 1.2 and 1.3 |
//! | `cipherSuites` | OpenSSL or IANA names rustls implements; any other is an error |
//! | `httpsRedirect` | refused (plain HTTP servers only, and not supported yet) |
//! | `serverCertificate`, `privateKey`, `caCertificates`, `caCrl` | refused: file paths; the same material goes in the credential (`tls.crt`, `tls.key`, `ca.crt`, `ca.crl`) |
//! | `credentialNames`, `tlsCertificates` | refused: one certificate per server |
//!
//! A client-certificate field under SIMPLE or PASSTHROUGH is refused too: nothing would check
//! it, and a security setting that is silently inert is worse than one that is refused.

use std::sync::Arc;

use base64::Engine;

use super::credentials::load_credential;
use super::model::{Credentials, ServerTls};
use crate::config::resources::{GatewaySpec, ServerTlsSettings};
use crate::config::{ConfigError, ConfigWarning, Doc, Resources, Settings};
use crate::tls::ciphers::cipher_suites;
use crate::tls::{server_config_with, ClientCertChecks, ServerOptions, ServerTlsMode, TlsVersions};

type Gw = Doc<GatewaySpec>;

/// Builds what one server's `tls` block asks for, or the first field that cannot be honoured.
#[allow(clippy::too_many_arguments)]
pub(super) fn server_tls(
    gw: &Gw,
    field: &str,
    t: &ServerTlsSettings,
    settings: &Settings,
    resources: &Resources,
    credentials: &mut Credentials,
    protocol: &str,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<ServerTls, ConfigError> {
    let f = |name: &str| format!("{field}.{name}");
    let mode = t.mode.as_deref().unwrap_or("SIMPLE");
    let tls_mode = match mode {
        "SIMPLE" => ServerTlsMode::Simple,
        "MUTUAL" => ServerTlsMode::Mutual,
        "PASSTHROUGH" => {
            refuse_unsupported(gw, field, t)?;
            refuse_inert(gw, field, t, "PASSTHROUGH", true)?;
            return Ok(ServerTls::Passthrough);
        }
        "ISTIO_MUTUAL" | "AUTO_PASSTHROUGH" | "OPTIONAL_MUTUAL" => {
            return Err(gw.error(
                &f("mode"),
                mode,
                format!("tls mode {mode} is not supported yet (use SIMPLE, MUTUAL or PASSTHROUGH)"),
            ))
        }
        other => {
            return Err(gw.error(
                &f("mode"),
                other,
                format!("unknown tls mode {other:?} (expected SIMPLE, MUTUAL or PASSTHROUGH)"),
            ))
        }
    };
    if protocol == "TLS" {
        return Err(gw.error(
            &f("mode"),
            mode,
            "terminating TLS for opaque TCP (protocol TLS with SIMPLE/MUTUAL) is not supported yet; use HTTPS or PASSTHROUGH",
        ));
    }
    refuse_unsupported(gw, field, t)?;
    if tls_mode == ServerTlsMode::Simple {
        refuse_inert(gw, field, t, "SIMPLE", false)?;
    }
    let versions = tls_versions(gw, field, t)?;
    let suites = cipher_suites(&t.cipher_suites)
        .map_err(|e| gw.error(&f("cipherSuites"), &e.name, e.to_string()))?;
    let client_checks = ClientCertChecks {
        subject_alt_names: t.subject_alt_names.clone(),
        spki_sha256: pins(
            gw,
            &f("verifyCertificateSpki"),
            &t.verify_certificate_spki,
            spki_pin,
        )?,
        cert_sha256: pins(
            gw,
            &f("verifyCertificateHash"),
            &t.verify_certificate_hash,
            hash_pin,
        )?,
        ..ClientCertChecks::default()
    };
    let Some(name) = t.credential_name.clone() else {
        return Err(gw.error(
            &f("credentialName"),
            "tls",
            "set `credentialName` (a Secret in the gateway's namespace, or a credential directory)",
        ));
    };
    let cred = match credentials.get(&name) {
        Some(c) => c.clone(),
        None => {
            let referrer = |msg: String| gw.error(&f("credentialName"), "credentialName", msg);
            let cred = Arc::new(load_credential(
                &referrer, &name, settings, resources, warnings,
            )?);
            credentials.insert(name.clone(), cred.clone());
            cred
        }
    };
    if tls_mode == ServerTlsMode::Mutual && cred.roots.is_none() {
        return Err(gw.error(
            &f("credentialName"),
            "credentialName",
            format!("MUTUAL needs a CA to verify clients, but credential {name:?} has no ca.crt (nor a {name}-cacert)"),
        ));
    }
    let options = ServerOptions {
        mode: tls_mode,
        versions,
        cipher_suites: suites,
        client_checks: client_checks.clone(),
        alpn: &[b"h2", b"http/1.1"],
    };
    let config = server_config_with(&cred, &options).map_err(|e| {
        let key = if t.cipher_suites.is_empty() {
            "credentialName"
        } else {
            "cipherSuites"
        };
        gw.error(&f(key), key, format!("credential {name:?}: {e}"))
    })?;
    let mut client_checks = client_checks;
    client_checks.revocation = cred.crl.clone();
    Ok(ServerTls::Terminate {
        mode: tls_mode,
        credential_name: name,
        config,
        client_checks,
    })
}

/// Fields of `ServerTLSSettings` Portcullis does not implement: refused by name.
fn refuse_unsupported(gw: &Gw, field: &str, t: &ServerTlsSettings) -> Result<(), ConfigError> {
    let f = |name: &str| format!("{field}.{name}");
    if t.https_redirect {
        return Err(gw.error(
            &f("httpsRedirect"),
            "httpsRedirect",
            "httpsRedirect is not supported (it belongs on a plain HTTP server, and Portcullis does not redirect yet)",
        ));
    }
    let paths = [
        ("serverCertificate", &t.server_certificate, "tls.crt"),
        ("privateKey", &t.private_key, "tls.key"),
        ("caCertificates", &t.ca_certificates, "ca.crt"),
        ("caCrl", &t.ca_crl, "ca.crl"),
    ];
    for (key, value, file) in paths {
        if value.is_some() {
            return Err(gw.error(
                &f(key),
                key,
                format!("{key} (a file path) is not supported: put the file in the credential as `{file}` and name it with credentialName"),
            ));
        }
    }
    if !t.credential_names.is_empty() {
        return Err(gw.error(
            &f("credentialNames"),
            "credentialNames",
            "credentialNames (several certificates per server) is not supported: use one credentialName",
        ));
    }
    if !t.tls_certificates.is_empty() {
        return Err(gw.error(
            &f("tlsCertificates"),
            "tlsCertificates",
            "tlsCertificates (several certificates per server) is not supported: use one credentialName",
        ));
    }
    Ok(())
}

/// Fields a mode would ignore: refused, so an operator never believes a check is made.
fn refuse_inert(
    gw: &Gw,
    field: &str,
    t: &ServerTlsSettings,
    mode: &str,
    passthrough: bool,
) -> Result<(), ConfigError> {
    let mut inert: Vec<(&str, bool)> = vec![
        ("subjectAltNames", !t.subject_alt_names.is_empty()),
        (
            "verifyCertificateSpki",
            !t.verify_certificate_spki.is_empty(),
        ),
        (
            "verifyCertificateHash",
            !t.verify_certificate_hash.is_empty(),
        ),
    ];
    if passthrough {
        inert.extend([
            ("credentialName", t.credential_name.is_some()),
            ("minProtocolVersion", t.min_protocol_version.is_some()),
            ("maxProtocolVersion", t.max_protocol_version.is_some()),
            ("cipherSuites", !t.cipher_suites.is_empty()),
        ]);
    }
    match inert.into_iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(gw.error(
            &format!("{field}.{key}"),
            key,
            if passthrough {
                format!("{key} has no effect with mode PASSTHROUGH (the gateway does not terminate TLS); remove it")
            } else {
                format!("{key} checks client certificates, which mode {mode} does not ask for: use mode MUTUAL, or remove it")
            },
        )),
        None => Ok(()),
    }
}

fn pins(
    gw: &Gw,
    field: &str,
    values: &[String],
    parse: fn(&str) -> Option<[u8; 32]>,
) -> Result<Vec<[u8; 32]>, ConfigError> {
    values
        .iter()
        .map(|v| {
            parse(v).ok_or_else(|| {
                gw.error(
                    field,
                    v,
                    format!("{v:?} is not a SHA-256 digest (verifyCertificateSpki: base64 of 32 bytes; verifyCertificateHash: 64 hex digits, `:` allowed)"),
                )
            })
        })
        .collect()
}

/// `verifyCertificateSpki`: base64 (standard alphabet, as Envoy) of a SHA-256 digest.
fn spki_pin(value: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    bytes.try_into().ok()
}

/// `verifyCertificateHash`: hex SHA-256, upper or lower case, bytes optionally `:`-separated.
fn hash_pin(value: &str) -> Option<[u8; 32]> {
    let hex: String = value.trim().chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn tls_versions(gw: &Gw, field: &str, t: &ServerTlsSettings) -> Result<TlsVersions, ConfigError> {
    let mut v = TlsVersions::default();
    match t.min_protocol_version.as_deref() {
        None | Some("TLS_AUTO" | "TLSV1_0" | "TLSV1_1" | "TLSV1_2") => {}
        Some("TLSV1_3") => v.min_tls13 = true,
        Some(other) => {
            return Err(gw.error(
                &format!("{field}.minProtocolVersion"),
                other,
                format!("unknown TLS version {other:?}"),
            ))
        }
    }
    match t.max_protocol_version.as_deref() {
        None | Some("TLS_AUTO" | "TLSV1_3") => {}
        Some("TLSV1_2") => v.max_tls12 = true,
        Some(old @ ("TLSV1_0" | "TLSV1_1")) => {
            return Err(gw.error(
                &format!("{field}.maxProtocolVersion"),
                old,
                format!("{old} is not offered: Portcullis speaks TLS 1.2 and 1.3 only"),
            ))
        }
        Some(other) => {
            return Err(gw.error(
                &format!("{field}.maxProtocolVersion"),
                other,
                format!("unknown TLS version {other:?}"),
            ))
        }
    }
    if v.min_tls13 && v.max_tls12 {
        return Err(gw.error(
            &format!("{field}.minProtocolVersion"),
            "minProtocolVersion",
            "minProtocolVersion is above maxProtocolVersion",
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_accept_envoy_spellings() {
        let digest = [0xabu8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        assert_eq!(spki_pin(&b64), Some(digest));
        assert_eq!(hash_pin(&"AB".repeat(32)), Some(digest));
        assert_eq!(hash_pin(&vec!["ab"; 32].join(":")), Some(digest));
        assert_eq!(hash_pin("abcd"), None);
        assert_eq!(spki_pin("not base64!"), None);
        assert_eq!(
            spki_pin(&base64::engine::general_purpose::STANDARD.encode([1u8; 20])),
            None,
            "a SHA-1 sized pin is not a SHA-256 pin"
        );
    }
}
