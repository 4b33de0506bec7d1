//! Runs the case table ([`super::cases`]) and checks what it cannot express.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::cases::{Case, ErrorCase, CASES, ERROR_CASES, INGRESS, MTLS, PLAIN};
use super::*;
use crate::config::resources::Metadata;
use crate::config::{ConfigError, Origin};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope {
    #[allow(dead_code)]
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: AuthorizationPolicySpec,
}

/// A multi-document YAML text as the loader would hand it over, from file `cases.yaml`.
fn docs(yaml: &str) -> Vec<Doc<AuthorizationPolicySpec>> {
    let mut chunks = vec![(1, String::new())];
    for (i, line) in yaml.lines().enumerate() {
        if line == "---" {
            chunks.push((i + 2, String::new()));
        } else if let Some((_, text)) = chunks.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    chunks
        .into_iter()
        .filter(|(_, text)| !text.trim().is_empty())
        .enumerate()
        .map(|(i, (first_line, text))| {
            let env: Envelope = serde_norway::from_str(&text)
                .unwrap_or_else(|e| panic!("document {}: {e}\n{text}", i + 1));
            assert_eq!(env.kind, "AuthorizationPolicy");
            Doc {
                origin: Origin {
                    file: PathBuf::from("cases.yaml"),
                    document: i + 1,
                    first_line,
                    text: Arc::from(text.as_str()),
                },
                kind: "AuthorizationPolicy",
                metadata: env.metadata,
                spec: env.spec,
            }
        })
        .collect()
}

fn compile(case: &Case) -> Authorizer {
    Authorizer::compile(&docs(case.policies), &case.workload.scope())
        .unwrap_or_else(|e| panic!("case {:?}: {e}", case.name))
}

fn compile_errors(yaml: &str) -> Vec<ConfigError> {
    match Authorizer::compile(&docs(yaml), &AuthzScope::default()) {
        Ok(_) => panic!("compiled, but should not have:\n{yaml}"),
        Err(ConfigErrors(errors)) => errors,
    }
}

#[test]
fn every_case() {
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|case| {
            let headers = case.request.header_map().unwrap();
            let decision = compile(case).evaluate(&case.request.attrs(&headers));
            case.check(&decision).err()
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn case_names_are_unique() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len());
}

#[test]
fn index_finds_what_a_scan_finds() {
    for case in CASES {
        let headers = case.request.header_map().unwrap();
        let req = case.request.attrs(&headers);
        let authz = compile(case);
        for set in [&authz.deny, &authz.allow, &authz.audit] {
            assert_eq!(
                set.first_match(&req),
                set.first_match_by_scan(&req),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn exact_paths_and_principals_are_indexed() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/a, /b]}}, {operation: {paths: [/c], methods: [GET]}}]
  - from: [{source: {principals: [x, y]}}]
  - to: [{operation: {paths: [/a, "/b*"]}}]
  - from: [{source: {principals: [x]}}, {source: {namespaces: [ns]}}]
  - {}
"#;
    let authz = Authorizer::compile(&docs(yaml), &AuthzScope::default()).unwrap();
    let index = &authz.deny.index;
    assert_eq!(
        index.candidates("/c", Some("y")).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(
        index.candidates("/zzz", Some("zzz")).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert_eq!(
        index.candidates("/zzz", None).collect::<Vec<_>>(),
        [2, 3, 4]
    );
}

#[test]
fn every_error_case() {
    let check = |case: &ErrorCase| -> Result<(), String> {
        let errors = compile_errors(case.policies);
        let first = &errors[0];
        let text = first.to_string();
        let ok = first.field.as_deref() == Some(case.field)
            && case.message.iter().all(|m| first.message.contains(m))
            && first.file.as_path() == std::path::Path::new("cases.yaml")
            && first.document == Some(1)
            && first
                .resource
                .as_deref()
                .is_some_and(|r| r.starts_with("AuthorizationPolicy "));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{}: want field {:?} saying {:?}, got: {text}",
                case.name, case.field, case.message
            ))
        }
    };
    let failures: Vec<String> = ERROR_CASES.iter().filter_map(|c| check(c).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn errors_point_at_the_bad_line_and_are_all_reported() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: one, namespace: istio-system}
spec:
  rules:
  - from:
    - source:
        ipBlocks: [10.0.0.0/99]
    to: [{operation: {ports: [http]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: two, namespace: default}
spec:
  action: CUSTOM
"#;
    let errors = compile_errors(yaml);
    let summary: Vec<(Option<usize>, Option<usize>, &str)> = errors
        .iter()
        .map(|e| (e.document, e.line, e.field.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        summary,
        [
            (Some(1), Some(9), "spec.rules[0].from[0].source.ipBlocks[0]"),
            (Some(1), Some(10), "spec.rules[0].to[0].operation.ports[0]"),
            (Some(2), Some(16), "spec.action"),
        ]
    );
    let text = errors[0].to_string();
    assert!(
        text.starts_with("cases.yaml:9 (document 1, AuthorizationPolicy istio-system/one): field `spec.rules[0].from[0].source.ipBlocks[0]`: \"10.0.0.0/99\""),
        "{text}"
    );
}

#[test]
fn decisions_read_well() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-get, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-418, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/status/418]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: [POST]}}]}]
"#;
    let authz = Authorizer::compile(&docs(yaml), &AuthzScope::default()).unwrap();
    let headers = http::HeaderMap::new();
    let decide = |req: cases::Request| authz.evaluate(&req.attrs(&headers));
    let allow = decide(MTLS);
    assert!(allow.is_allowed());
    assert_eq!(allow.to_string(), "ALLOW by istio-system/only-get rule 0");
    assert_eq!(allow.decided_by().map(|p| &*p.name), Some("only-get"));
    let deny = decide(cases::Request {
        path: "/status/418",
        ..MTLS
    });
    assert!(!deny.is_allowed());
    assert_eq!(deny.to_string(), "DENY by istio-system/no-418 rule 0");
    let none = decide(cases::Request {
        method: "POST",
        ..PLAIN
    });
    assert_eq!(
        none.to_string(),
        "DENY (no ALLOW policy matched; tried istio-system/only-get); audited by istio-system/audit rule 0"
    );
    assert_eq!(none.decided_by(), None);
    let listed: Vec<String> = authz
        .policies()
        .map(|(a, p)| format!("{} {p}", a.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            "DENY istio-system/no-418",
            "ALLOW istio-system/only-get",
            "AUDIT istio-system/audit"
        ]
    );

    let empty = Authorizer::compile(&[], &AuthzScope::default()).unwrap();
    let decision = empty.evaluate(&MTLS.attrs(&headers));
    assert_eq!(decision.to_string(), "ALLOW (no ALLOW policy applies)");
}

#[test]
fn default_scope_is_the_ingress_gateway() {
    assert_eq!(AuthzScope::default(), INGRESS.scope());
}

#[test]
fn authorizer_and_decision_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Authorizer>();
    send_sync::<Decision>();
}
