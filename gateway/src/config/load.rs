//! Reading YAML files and directories into typed resources.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::resources::{
    AuthorizationPolicySpec, GatewaySpec, Metadata, PeerAuthenticationSpec, SecretBody,
    ServiceEntrySpec, VirtualServiceSpec, WorkloadEntrySpec,
};
use super::{ConfigError, ConfigErrors, Doc, Origin};

const NETWORKING: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];
const SECURITY: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];
const CORE: &[&str] = &["v1"];

/// Every resource of a known kind found in the configuration, in file order.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub gateways: Vec<Doc<GatewaySpec>>,
    pub virtual_services: Vec<Doc<VirtualServiceSpec>>,
    pub service_entries: Vec<Doc<ServiceEntrySpec>>,
    pub workload_entries: Vec<Doc<WorkloadEntrySpec>>,
    pub authorization_policies: Vec<Doc<AuthorizationPolicySpec>>,
    pub peer_authentications: Vec<Doc<PeerAuthenticationSpec>>,
    pub secrets: Vec<Doc<SecretBody>>,
    /// `(origin, apiVersion, kind)` of documents skipped because Portcullis does not know them.
    pub skipped: Vec<(Origin, String, String)>,
}

/// Loads every `.yaml`/`.yml` file named, or found (sorted, not recursively) in a named
/// directory. All problems are collected, so one run reports them all.
pub fn load_paths(paths: &[PathBuf]) -> Result<Resources, ConfigErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match yaml_files(path) {
            Ok(found) => files.extend(found),
            Err(e) => errors.push(e),
        }
    }
    let mut resources = Resources::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => resources.add_file(&file, &text, &mut errors),
            Err(e) => errors.push(ConfigError::file(&file, format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Loads one YAML text the way [`load_paths`] loads a file; `file` is only named in errors,
/// never opened. The YAML fuzzing entry point (`fuzz/fuzz_targets/config.rs`).
pub fn load_str(file: &Path, text: &str) -> Result<Resources, ConfigErrors> {
    let mut errors = Vec::new();
    let mut resources = Resources::default();
    resources.add_file(file, text, &mut errors);
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| ConfigError::file(path, format!("cannot list: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::file(
            path,
            "directory holds no .yaml or .yml files",
        ));
    }
    Ok(files)
}

/// Splits a multi-document YAML text on `---` lines, keeping each document's first line.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut first_line = 1;
    for (i, line) in text.lines().enumerate() {
        let is_separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_separator {
            docs.push((first_line, std::mem::take(&mut current)));
            first_line = i + 2;
            // Content after the marker on the same line (`--- {a: b}`) belongs to the next
            // doc, which then starts on the marker's line. An empty rest adds no line: the
            // document's text must start on `first_line`, or every line found in it is off
            // by one.
            let rest = line[3..].trim_start();
            if !rest.is_empty() {
                first_line = i + 1;
                current.push_str(rest);
                current.push('\n');
            }
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push((first_line, current));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Only the fields needed to decide how to read the rest.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    spec: S,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_norway::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecretEnvelope {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    #[serde(default, rename = "type")]
    secret_type: Option<String>,
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    string_data: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    immutable: Option<bool>,
}

impl Resources {
    fn add_file(&mut self, file: &Path, text: &str, errors: &mut Vec<ConfigError>) {
        for (index, (first_line, doc)) in split_documents(text).into_iter().enumerate() {
            let origin = Origin {
                file: file.to_owned(),
                document: index + 1,
                first_line,
                text: Arc::from(doc.as_str()),
            };
            if let Err(e) = self.add_document(origin) {
                errors.push(e);
            }
        }
    }

    fn add_document(&mut self, origin: Origin) -> Result<(), ConfigError> {
        let meta: TypeMeta =
            serde_norway::from_str(&origin.text).map_err(|e| yaml_error(&origin, None, &e))?;
        let (Some(api_version), Some(kind)) = (meta.api_version, meta.kind) else {
            return Err(ConfigError {
                line: Some(origin.first_line),
                ..located(
                    &origin,
                    None,
                    "a resource needs both `apiVersion` and `kind`",
                )
            });
        };
        let known: Option<(&[&str], &'static str)> = match kind.as_str() {
            "Gateway" => Some((NETWORKING, "Gateway")),
            "VirtualService" => Some((NETWORKING, "VirtualService")),
            "ServiceEntry" => Some((NETWORKING, "ServiceEntry")),
            "WorkloadEntry" => Some((NETWORKING, "WorkloadEntry")),
            "AuthorizationPolicy" => Some((SECURITY, "AuthorizationPolicy")),
            "PeerAuthentication" => Some((SECURITY, "PeerAuthentication")),
            "Secret" => Some((CORE, "Secret")),
            _ => None,
        };
        let Some((allowed, kind)) = known else {
            tracing::warn!(
                file = %origin.file.display(),
                document = origin.document,
                %api_version,
                %kind,
                "skipping a resource of a kind Portcullis does not use"
            );
            self.skipped.push((origin, api_version, kind));
            return Ok(());
        };
        if !allowed.contains(&api_version.as_str()) {
            return Err(ConfigError {
                field: Some("apiVersion".into()),
                line: Some(origin.line_of("apiVersion")),
                ..located(
                    &origin,
                    None,
                    format!(
                        "{kind} with apiVersion {api_version:?} is not supported (use one of {})",
                        allowed.join(", ")
                    ),
                )
            });
        }
        match kind {
            "Gateway" => self.gateways.push(typed(origin, kind)?),
            "VirtualService" => self.virtual_services.push(typed(origin, kind)?),
            "ServiceEntry" => self.service_entries.push(typed(origin, kind)?),
            "WorkloadEntry" => self.workload_entries.push(typed(origin, kind)?),
            "AuthorizationPolicy" => self.authorization_policies.push(typed(origin, kind)?),
            "PeerAuthentication" => self.peer_authentications.push(typed(origin, kind)?),
            _ => {
                let env: SecretEnvelope = deserialize(&origin, kind)?;
                self.secrets.push(Doc {
                    origin,
                    kind,
                    metadata: env.metadata,
                    spec: SecretBody {
                        secret_type: env.secret_type,
                        data: env.data,
                        string_data: env.string_data,
                        immutable: env.immutable,
                    },
                });
            }
        }
        Ok(())
    }
}

fn typed<S: DeserializeOwned>(origin: Origin, kind: &'static str) -> Result<Doc<S>, ConfigError> {
    let env: Envelope<S> = deserialize(&origin, kind)?;
    if env.metadata.name.is_empty() {
        return Err(ConfigError {
            field: Some("metadata.name".into()),
            line: Some(origin.line_of("metadata")),
            ..located(&origin, Some(kind), "metadata.name must not be empty")
        });
    }
    Ok(Doc {
        origin,
        kind,
        metadata: env.metadata,
        spec: env.spec,
    })
}

/// Deserializes a document, turning serde's error into one that names the field path and line.
fn deserialize<T: DeserializeOwned>(origin: &Origin, kind: &'static str) -> Result<T, ConfigError> {
    let de = serde_norway::Deserializer::from_str(&origin.text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let mut err = yaml_error(origin, Some(kind), e.inner());
        if path != "." {
            err.field = Some(path);
        }
        err
    })
}

fn yaml_error(origin: &Origin, kind: Option<&'static str>, e: &serde_norway::Error) -> ConfigError {
    // libyaml places an error at the end of the stream on the line after the last one: name
    // the document's last line instead, which exists.
    let last = origin.text.lines().count().max(1);
    let line = e
        .location()
        .map(|l| origin.first_line + l.line().clamp(1, last) - 1);
    // serde_norway appends "at line N column M" in the document's own numbering; we print the
    // file's line in front instead.
    let message = e.to_string();
    let message = match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    };
    // It also starts the message with the field path, which the error prints on its own.
    let message = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') && path.contains('.') => rest.to_owned(),
        _ => message,
    };
    ConfigError {
        line: line.or(Some(origin.first_line)),
        ..located(origin, kind, message)
    }
}

/// An error about one document; it points at the document's first line until the caller
/// knows a better one, so no error about the text is ever without a line.
fn located(origin: &Origin, kind: Option<&'static str>, message: impl Into<String>) -> ConfigError {
    let name = name_in(&origin.text);
    ConfigError {
        file: origin.file.clone(),
        line: Some(origin.first_line),
        document: Some(origin.document),
        resource: match (kind, name) {
            (Some(k), Some(n)) => Some(format!("{k} {n}")),
            (Some(k), None) => Some(k.to_owned()),
            _ => None,
        },
        field: None,
        message: message.into(),
    }
}

/// `namespace/name` of a document whose typed parse failed, read leniently for messages.
fn name_in(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Loose {
        metadata: Option<LooseMeta>,
    }
    #[derive(Deserialize)]
    struct LooseMeta {
        name: Option<String>,
        namespace: Option<String>,
    }
    let loose: Loose = serde_norway::from_str(text).ok()?;
    let meta = loose.metadata?;
    Some(format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `config` fuzz target: an error at the end of the text pointed one line
    /// past the end of the file.
    #[test]
    fn an_error_at_the_end_names_a_line_of_the_file() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: x\n";
        let err = load_str(Path::new("a.yaml"), text).expect_err("unterminated mapping");
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].line, Some(3), "{err}");
    }

    fn load_text(text: &str) -> Result<Resources, ConfigErrors> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError::file("tmp", e.to_string()))?;
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, text).map_err(|e| ConfigError::file("tmp", e.to_string()))?;
        load_paths(&[file])
    }

    const WALKTHROUGH: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: httpbin, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - hosts: ['*']
    port: {name: test, number: 80, protocol: HTTP}
  - hosts: [test.com]
    port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: MUTUAL, credentialName: test.com}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: test, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [test.client]}}]
    to: [{operation: {paths: [/status/418]}}]
  selector: {matchLabels: {istio: ingressgateway}}
"#;

    #[test]
    fn reads_the_walkthrough_unchanged() {
        let r = load_text(WALKTHROUGH).expect("walkthrough loads");
        assert_eq!(r.gateways.len(), 1);
        assert_eq!(r.authorization_policies.len(), 1);
        let gw = &r.gateways[0];
        assert_eq!(
            gw.spec.servers[1]
                .tls
                .as_ref()
                .and_then(|t| t.credential_name.as_deref()),
            Some("test.com")
        );
        let ap = &r.authorization_policies[0];
        assert_eq!(ap.origin.document, 2);
        assert_eq!(ap.origin.first_line, 13);
        assert_eq!(ap.namespace(), "istio-system");
    }

    #[test]
    fn unknown_field_names_file_line_document_and_path() {
        let text = WALKTHROUGH.replace("credentialName: test.com", "credentialNam: test.com");
        let err = load_text(&text).expect_err("typo is an error");
        let e = &err.0[0];
        assert_eq!(e.document, Some(1));
        assert_eq!(e.line, Some(11));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.servers[1].tls.credentialNam")
        );
        assert!(e.message.contains("unknown field `credentialNam`"), "{e}");
        assert_eq!(e.resource.as_deref(), Some("Gateway default/httpbin"));
        let shown = e.to_string();
        assert!(
            shown.contains("config.yaml:11 (document 1, Gateway default/httpbin)"),
            "{shown}"
        );
    }

    #[test]
    fn an_empty_name_is_located() {
        // Found by the config fuzz target: `{name, …}` is a null name, once reported without a line.
        let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name, namespace: istio-system}\nspec:\n  rules:\n  - when: [{key: source.ip}]\n";
        let err = load_text(text).expect_err("empty name");
        assert_eq!(err.0[0].line, Some(3), "{}", err.0[0]);
        assert_eq!(err.0[0].field.as_deref(), Some("metadata.name"));
    }

    #[test]
    fn malformed_yaml_is_located() {
        let err =
            load_text("apiVersion: v1\nkind: Secret\nmetadata: {name: x\n").expect_err("malformed");
        assert_eq!(err.0[0].document, Some(1));
        assert!(err.0[0].line.is_some());
    }

    #[test]
    fn unknown_kinds_are_skipped_and_bad_api_versions_rejected() {
        let r = load_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n")
            .expect("skipped");
        assert_eq!(r.skipped.len(), 1);
        let err = load_text("apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: x}\nspec: {servers: []}\n")
            .expect_err("bad version");
        assert_eq!(err.0[0].field.as_deref(), Some("apiVersion"));
        assert_eq!(err.0[0].line, Some(1));
    }

    #[test]
    fn all_errors_in_a_file_are_reported() {
        let text =
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\nbogus: 1\n---\nkind: Gateway\n";
        let err = load_text(text).expect_err("two errors");
        assert_eq!(err.0.len(), 2);
        assert_eq!(err.0[1].line, Some(6));
    }

    #[test]
    fn secrets_read_data_and_string_data() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: test.com, namespace: istio-system}\ntype: kubernetes.io/tls\ndata: {tls.crt: YQ==}\nstringData: {ca.crt: b}\n";
        let r = load_text(text).expect("secret");
        assert_eq!(r.secrets[0].spec.data["tls.crt"], "YQ==");
        assert_eq!(r.secrets[0].spec.string_data["ca.crt"], "b");
    }

    #[test]
    fn directories_load_sorted_yaml_files() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("b.yaml"), WALKTHROUGH).expect("write");
        std::fs::write(
            dir.path().join("a.yml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let r = load_paths(&[dir.path().to_owned()]).expect("dir loads");
        assert_eq!((r.secrets.len(), r.gateways.len()), (1, 1));
    }
}
