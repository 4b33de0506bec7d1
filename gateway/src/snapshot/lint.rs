//! Rules that load but can never match, found before a request proves it (what Istio users
//! ask `istioctl` for: istio#30039, #21259, #53048). `check` prints them as warnings with
//! file, line and why; `explain` notes them.
//!
//! | rule | why it never matches |
//! |---|---|
//! | `principals` / `namespaces` with no MUTUAL server on the rule's ports | a peer identity exists only after a verified client certificate |
//! | `hosts` value no Gateway server serves | the request would not reach this gateway's routes |
//! | `paths` / `notPaths` value with `?` or `#` | the matcher sees the path only, never a query string or fragment |
//! | `paths` / `notPaths` value that path normalization changes or refuses (`/a//b`, `/%73tatus`, `/a;b`) | the matcher sees the normalized path |
//! | VirtualService `uri` `exact` / `prefix` value that path normalization changes or refuses | routes see the normalized path |
//!
//! A `*` inside a path (`/api/*/admin`) is not a warning but an error from the policy
//! compiler: Istio takes it literally, which is never what the author meant.

use super::model::{GatewayServer, Listener, ServerTls};
use crate::config::hosts::HostMatch;
use crate::config::resources::{AuthorizationPolicySpec, StringMatch};
use crate::config::{ConfigWarning, Doc, PathNormalization, Resources};
use crate::policy::authz::{applies, AuthzScope};
use crate::policy::path::never_normalized;
use crate::tls::ServerTlsMode;

/// Warnings for every VirtualService `uri` match the path normalization makes unreachable:
/// routes see the normalized path, so a value it never equals is dead.
pub fn unreachable_route_matches(
    resources: &Resources,
    path_normalization: PathNormalization,
) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    for vs in &resources.virtual_services {
        for (i, route) in vs.spec.http.iter().enumerate() {
            for (j, m) in route.matches.iter().enumerate() {
                let sample = match &m.uri {
                    Some(StringMatch::Exact(p)) => Some((p, p.clone(), "exact")),
                    Some(StringMatch::Prefix(p)) => Some((p, format!("{p}*"), "prefix")),
                    _ => None,
                };
                if let Some((value, pattern, kind)) = sample {
                    if let Some(why) = never_normalized(&pattern, path_normalization) {
                        out.push(ConfigWarning(vs.error(
                            &format!("spec.http[{i}].match[{j}].uri.{kind}"),
                            value,
                            format!("{value:?} can never match: request paths are normalized ({path_normalization}) before routing, and {why}"),
                        )));
                    }
                }
            }
        }
    }
    out
}

/// Warnings for every policy of `policies` that applies to the gateway (`scope`).
pub fn never_matching(
    policies: &[Doc<AuthorizationPolicySpec>],
    scope: &AuthzScope,
    listeners: &[Listener],
    path_normalization: PathNormalization,
) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    let mutual_ports: Vec<u16> = listeners
        .iter()
        .filter(|l| l.servers.iter().any(is_mutual))
        .map(|l| l.port)
        .collect();
    let served: Vec<&HostMatch> = listeners
        .iter()
        .flat_map(|l| l.servers.iter().flat_map(|s| s.hosts.iter()))
        .collect();
    for doc in policies.iter().filter(|d| applies(d, scope)) {
        for (r, rule) in doc.spec.rules.iter().flatten().enumerate() {
            let rule_ports: Vec<u16> = rule
                .to
                .iter()
                .flat_map(|t| t.operation.ports.iter())
                .filter_map(|p| p.parse().ok())
                .collect();
            let reaches_mutual = if rule_ports.is_empty() {
                !mutual_ports.is_empty()
            } else {
                rule_ports.iter().any(|p| mutual_ports.contains(p))
            };
            for (f, from) in rule.from.iter().enumerate() {
                for (key, values) in [
                    ("principals", &from.source.principals),
                    ("namespaces", &from.source.namespaces),
                ] {
                    let Some(first) = values.first() else {
                        continue;
                    };
                    if !reaches_mutual {
                        let ports = if rule_ports.is_empty() {
                            "no server of this gateway".to_owned()
                        } else {
                            format!("no server on port(s) {rule_ports:?}")
                        };
                        out.push(warn(
                            doc,
                            &format!("spec.rules[{r}].from[{f}].source.{key}"),
                            first,
                            format!("can never match: {ports} is MUTUAL, so no request carries a verified peer identity ({key} need mutual TLS)"),
                        ));
                    }
                }
            }
            for (t, to) in rule.to.iter().enumerate() {
                let op = &to.operation;
                for host in &op.hosts {
                    if !host_is_served(host, &served) {
                        out.push(warn(
                            doc,
                            &format!("spec.rules[{r}].to[{t}].operation.hosts"),
                            host,
                            format!("can never match: no Gateway server of this gateway serves host {host:?}"),
                        ));
                    }
                }
                for (key, values) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                    for path in values.iter().filter(|p| p.contains(['?', '#'])) {
                        out.push(warn(
                            doc,
                            &format!("spec.rules[{r}].to[{t}].operation.{key}"),
                            path,
                            format!("{path:?} can never match: paths are matched without the query string and fragment, which this value contains"),
                        ));
                    }
                    for path in values.iter().filter(|p| !p.contains(['?', '#'])) {
                        if let Some(why) = never_normalized(path, path_normalization) {
                            out.push(warn(
                                doc,
                                &format!("spec.rules[{r}].to[{t}].operation.{key}"),
                                path,
                                format!("{path:?} can never match: request paths are normalized ({path_normalization}) before policies see them, and {why}"),
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

fn is_mutual(server: &GatewayServer) -> bool {
    matches!(
        server.tls,
        Some(ServerTls::Terminate {
            mode: ServerTlsMode::Mutual,
            ..
        })
    )
}

/// Whether a policy `hosts` value (`test.com`, `test.com:443`, `*.example.com`, `*`,
/// `api.*`) could be the host of a request some server accepts.
fn host_is_served(value: &str, served: &[&HostMatch]) -> bool {
    let value = value.to_ascii_lowercase();
    let host = match value.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => value.as_str(),
    };
    if host == "*" || host.is_empty() {
        return true;
    }
    served.iter().any(|s| match (s, host) {
        (HostMatch::Any, _) => true,
        // `api.*`: any server host could start with it.
        (HostMatch::Exact(name), h) if h.ends_with('*') => name.starts_with(&h[..h.len() - 1]),
        (HostMatch::Suffix(_), h) if h.ends_with('*') => true,
        // `*.example.com` (or `*example.com`): overlaps an exact host ending in it, or a
        // server wildcard either side of it.
        (HostMatch::Exact(name), h) if h.starts_with('*') => name.ends_with(&h[1..]),
        (HostMatch::Suffix(suffix), h) if h.starts_with('*') => {
            h[1..].ends_with(suffix.as_str()) || suffix.ends_with(&h[1..])
        }
        (m, h) => m.matches(h),
    })
}

fn warn(
    doc: &Doc<AuthorizationPolicySpec>,
    field: &str,
    needle: &str,
    why: String,
) -> ConfigWarning {
    ConfigWarning(doc.error(field, needle, why))
}

#[cfg(test)]
mod tests {
    use crate::config::{load_paths, Settings};
    use crate::snapshot::compile;

    const PLAIN_ONLY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  servers:\n  - hosts: [web.test, '*.shop.test']\n    port: {number: 80, name: http, protocol: HTTP}\n";

    fn warnings(gateway: &str, policy_rules: &str) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("all.yaml");
        std::fs::write(
            &file,
            format!("{gateway}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: istio-system}}\nspec:\n  action: DENY\n  rules:\n{policy_rules}"),
        )
        .expect("write");
        let snap = load_paths(std::slice::from_ref(&file))
            .and_then(|r| compile(r, Settings::default()))
            .expect("compiles");
        snap.warnings
            .iter()
            .map(|w| w.to_string().replace(&file.display().to_string(), "F"))
            .collect()
    }

    #[test]
    fn paths_the_normalization_changes_are_flagged() {
        let w = warnings(
            PLAIN_ONLY,
            "  - to: [{operation: {paths: ['/status//418', '/%73tatus/418', '/a;b', '/ok/*', '*/x', '/a/.*', '/api//*'], notPaths: ['/x/../y']}}]\n",
        );
        let flagged: Vec<bool> = [
            "/status//418",
            "/%73tatus/418",
            "/a;b",
            "/api//*",
            "/x/../y",
        ]
        .iter()
        .map(|p| {
            w.iter()
                .any(|w| w.contains(&format!("{p:?} can never match")))
        })
        .collect();
        assert_eq!(flagged, [true; 5], "{w:?}");
        assert_eq!(w.len(), 5, "{w:?}");
        assert!(w[0].contains("it becomes \"/status/418\""), "{w:?}");
        assert!(w[2].contains("refused with 400"), "{w:?}");
    }

    #[test]
    fn principals_and_namespaces_without_mutual_tls_are_flagged() {
        let w = warnings(
            PLAIN_ONLY,
            "  - from: [{source: {principals: [test.client]}}]\n  - from: [{source: {namespaces: [shop]}}]\n",
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("warning: F:15 "), "{w:?}");
        assert!(
            w[0].contains("spec.rules[0].from[0].source.principals"),
            "{w:?}"
        );
        assert!(w[0].contains("need mutual TLS"), "{w:?}");
        assert!(w[1].starts_with("warning: F:16 "), "{w:?}");
        // An IP rule on the same plain server is fine.
        assert!(warnings(
            PLAIN_ONLY,
            "  - from: [{source: {ipBlocks: [10.0.0.0/8]}}]\n"
        )
        .is_empty());
    }

    #[test]
    fn a_mutual_server_makes_principals_meaningful_only_on_its_port() {
        let dir = tempfile::tempdir().expect("tmp");
        crate::identity::certs::issue_demo_set(&crate::identity::certs::IssueRequest {
            out_dir: dir.path().join("certs"),
            ..Default::default()
        })
        .expect("certs");
        let gateway = format!("{PLAIN_ONLY}  - hosts: [test.com]\n    port: {{number: 443, name: https, protocol: HTTPS}}\n    tls: {{mode: MUTUAL, credentialName: test.com}}\n");
        let file = dir.path().join("all.yaml");
        let rules = "  - from: [{source: {principals: [a]}}]\n  - from: [{source: {principals: [b]}}]\n    to: [{operation: {ports: ['80']}}]\n  - from: [{source: {principals: [c]}}]\n    to: [{operation: {ports: ['443']}}]\n";
        std::fs::write(&file, format!("{gateway}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: istio-system}}\nspec:\n  action: DENY\n  rules:\n{rules}")).expect("write");
        let settings = Settings {
            credential_dirs: vec![dir.path().join("certs")],
            ..Settings::default()
        };
        let snap = load_paths(&[file])
            .and_then(|r| compile(r, settings))
            .expect("compiles");
        let w: Vec<String> = snap.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 1, "only the port-80 rule: {w:?}");
        assert!(
            w[0].contains("spec.rules[1].from[0].source.principals") && w[0].contains("[80]"),
            "{w:?}"
        );
    }

    #[test]
    fn hosts_no_server_serves_are_flagged() {
        let w = warnings(
            PLAIN_ONLY,
            "  - to: [{operation: {hosts: [web.test, 'web.test:80', a.shop.test, '*.shop.test', '*.test', 'web.*', admin.test, '*.other.test', 'other.*']}}]\n",
        );
        // `other.*` is served: `other.shop.test` is a name `*.shop.test` accepts.
        let flagged: Vec<&str> = ["admin.test", "*.other.test"]
            .into_iter()
            .filter(|h| {
                w.iter()
                    .any(|w| w.contains(&format!("serves host \"{h}\"")))
            })
            .collect();
        assert_eq!(flagged, ["admin.test", "*.other.test"], "{w:?}");
        assert_eq!(w.len(), 2, "served hosts are not flagged: {w:?}");
        assert!(
            w[0].contains("spec.rules[0].to[0].operation.hosts"),
            "{w:?}"
        );
    }

    #[test]
    fn paths_with_a_query_or_fragment_are_flagged() {
        let w = warnings(
            PLAIN_ONLY,
            "  - to: [{operation: {paths: [/ok, '/status/418?x=1', '/a#frag'], notPaths: ['/b?c']}}]\n",
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w.iter().all(|w| w.contains("without the query string")),
            "{w:?}"
        );
        assert!(w[2].contains("operation.notPaths"), "{w:?}");
    }

    #[test]
    fn a_star_inside_a_path_is_an_error_with_its_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: ['/api/*/admin']}}]\n").expect("write");
        let err = load_paths(&[file])
            .and_then(|r| compile(r, Settings::default()))
            .expect_err("star in the middle");
        assert!(err.to_string().contains("`*` may only be"), "{err}");
        assert_eq!(err.0[0].line, Some(7), "{err}");
    }

    #[test]
    fn uri_matches_the_normalization_changes_are_warned_about() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("vs.yaml");
        std::fs::write(
            &file,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: default}\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  http:\n  - match:\n    - uri: {exact: /status//418}\n    - uri: {prefix: /%61pi/}\n    - uri: {prefix: /api/.}\n    - uri: {exact: /ok}\n    route: [{destination: {host: up.local}}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: up, namespace: default}\nspec:\n  hosts: [up.local]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1}]\n",
        )
        .expect("write");
        let snap = load_paths(std::slice::from_ref(&file))
            .and_then(|r| compile(r, Settings::default()))
            .expect("compiles");
        let w: Vec<String> = snap.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains(":9 ")
                && w[0].contains("spec.http[0].match[0].uri.exact")
                && w[0].contains("it becomes \"/status/418\""),
            "{w:?}"
        );
        assert!(
            w[1].contains(":10 ") && w[1].contains("match[1].uri.prefix"),
            "{w:?}"
        );
    }
}
