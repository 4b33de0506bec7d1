//! Raw `AuthorizationPolicySpec` → validated rules of [`Predicate`]s, with every problem
//! reported against the field that holds it.

use http::HeaderName;
use ipnet::IpNet;

use super::matcher::{IpAttr, Pattern, Predicate, StrAttr, StrSet, Test};
use super::{AuthzAction, RequestAttrs};
use crate::config::resources::{AuthorizationPolicySpec, Condition, Operation, Rule, Source};
use crate::config::{ConfigError, Doc};

/// The `when` keys Portcullis evaluates, for error messages.
const SUPPORTED_KEYS: &str = "request.headers[<name>], source.ip, remote.ip, source.namespace, \
                              source.principal, destination.port, connection.sni";

/// One rule of one policy: `from` (any) AND `to` (any) AND `when` (all). An empty `from` or
/// `to` is no constraint; each inner list is one source or operation whose predicates all
/// must hold.
#[derive(Clone, Debug)]
pub(super) struct CompiledRule {
    /// Index of the policy in its action set; filled in when the set is built.
    pub policy: usize,
    /// Index in the policy's `spec.rules`.
    pub rule: usize,
    pub from: Vec<Vec<Predicate>>,
    pub to: Vec<Vec<Predicate>>,
    pub when: Vec<Predicate>,
}

impl CompiledRule {
    pub fn matches(&self, req: &RequestAttrs<'_>) -> bool {
        let all = |preds: &[Predicate]| preds.iter().all(|p| p.matches(req));
        (self.from.is_empty() || self.from.iter().any(|s| all(s)))
            && (self.to.is_empty() || self.to.iter().any(|o| all(o)))
            && all(&self.when)
    }
}

/// Validates one policy. `None` when it has errors (pushed onto `errors`).
pub(super) fn policy(
    doc: &Doc<AuthorizationPolicySpec>,
    errors: &mut Vec<ConfigError>,
) -> Option<(AuthzAction, Vec<CompiledRule>)> {
    let mut cx = Cx {
        doc,
        errors,
        failed: false,
    };
    let action = cx.action();
    let rules = doc
        .spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, rule)| cx.rule(i, rule))
        .collect();
    match (action, cx.failed) {
        (Some(action), false) => Some((action, rules)),
        _ => None,
    }
}

/// What a `when` key reads.
enum Key {
    Ip(IpAttr),
    Str(StrAttr),
    Header(HeaderName),
    Port,
}

struct Cx<'d, 'e> {
    doc: &'d Doc<AuthorizationPolicySpec>,
    errors: &'e mut Vec<ConfigError>,
    failed: bool,
}

impl Cx<'_, '_> {
    fn error(&mut self, field: &str, needle: &str, message: impl Into<String>) {
        self.errors.push(self.doc.error(field, needle, message));
        self.failed = true;
    }

    fn action(&mut self) -> Option<AuthzAction> {
        let spec = &self.doc.spec;
        let action = match spec.action.as_deref() {
            None | Some("ALLOW") => Some(AuthzAction::Allow),
            Some("DENY") => Some(AuthzAction::Deny),
            Some("AUDIT") => Some(AuthzAction::Audit),
            Some("CUSTOM") => {
                self.error(
                    "spec.action",
                    "CUSTOM",
                    "action CUSTOM (ext_authz) is not supported; use ALLOW, DENY or AUDIT",
                );
                return None;
            }
            Some(other) => {
                self.error(
                    "spec.action",
                    other,
                    format!("unknown action {other:?}; expected ALLOW, DENY or AUDIT"),
                );
                return None;
            }
        };
        if spec.provider.is_some() {
            self.error(
                "spec.provider",
                "provider",
                "provider is only used by action CUSTOM (ext_authz), which is not supported",
            );
        }
        action
    }

    fn rule(&mut self, index: usize, rule: &Rule) -> CompiledRule {
        let at = format!("spec.rules[{index}]");
        let from = rule
            .from
            .iter()
            .enumerate()
            .map(|(i, f)| self.source(&format!("{at}.from[{i}].source"), &f.source))
            .collect();
        let to = rule
            .to
            .iter()
            .enumerate()
            .map(|(i, t)| self.operation(&format!("{at}.to[{i}].operation"), &t.operation))
            .collect();
        let mut when = Vec::new();
        for (i, c) in rule.when.iter().enumerate() {
            self.condition(&format!("{at}.when[{i}]"), c, &mut when);
        }
        CompiledRule {
            policy: 0,
            rule: index,
            from,
            to,
            when,
        }
    }

    fn source(&mut self, at: &str, s: &Source) -> Vec<Predicate> {
        for (field, values) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
        ] {
            if let Some(first) = values.first() {
                self.error(
                    &format!("{at}.{field}"),
                    first,
                    format!(
                        "{field} (JWT request authentication) is not supported yet; \
                         match on the peer certificate with principals instead"
                    ),
                );
            }
        }
        let mut preds = Vec::new();
        let strs = [
            ("principals", &s.principals, StrAttr::Principal, false),
            ("notPrincipals", &s.not_principals, StrAttr::Principal, true),
            ("namespaces", &s.namespaces, StrAttr::Namespace, false),
            ("notNamespaces", &s.not_namespaces, StrAttr::Namespace, true),
        ];
        for (field, values, attr, negate) in strs {
            self.str_field(&mut preds, &format!("{at}.{field}"), values, attr, negate);
        }
        let ips = [
            ("ipBlocks", &s.ip_blocks, IpAttr::Source, false),
            ("notIpBlocks", &s.not_ip_blocks, IpAttr::Source, true),
            ("remoteIpBlocks", &s.remote_ip_blocks, IpAttr::Remote, false),
            (
                "notRemoteIpBlocks",
                &s.not_remote_ip_blocks,
                IpAttr::Remote,
                true,
            ),
        ];
        for (field, values, attr, negate) in ips {
            if !values.is_empty() {
                let nets = self.ip_blocks(&format!("{at}.{field}"), values);
                preds.push(Predicate {
                    test: Test::Ip(attr, nets),
                    negate,
                });
            }
        }
        if *s == Source::default() {
            self.error(at, "source", "a source must set at least one field");
        }
        preds
    }

    fn operation(&mut self, at: &str, o: &Operation) -> Vec<Predicate> {
        let mut preds = Vec::new();
        let strs = [
            ("hosts", &o.hosts, StrAttr::Host, false),
            ("notHosts", &o.not_hosts, StrAttr::Host, true),
            ("methods", &o.methods, StrAttr::Method, false),
            ("notMethods", &o.not_methods, StrAttr::Method, true),
            ("paths", &o.paths, StrAttr::Path, false),
            ("notPaths", &o.not_paths, StrAttr::Path, true),
        ];
        for (field, values, attr, negate) in strs {
            self.str_field(&mut preds, &format!("{at}.{field}"), values, attr, negate);
        }
        for (field, values, negate) in
            [("ports", &o.ports, false), ("notPorts", &o.not_ports, true)]
        {
            if !values.is_empty() {
                let ports = self.ports(&format!("{at}.{field}"), values);
                preds.push(Predicate {
                    test: Test::Port(ports),
                    negate,
                });
            }
        }
        if *o == Operation::default() {
            self.error(at, "operation", "an operation must set at least one field");
        }
        preds
    }

    fn condition(&mut self, at: &str, c: &Condition, out: &mut Vec<Predicate>) {
        let Some(key) = self.condition_key(&format!("{at}.key"), &c.key) else {
            return;
        };
        if c.values.is_empty() && c.not_values.is_empty() {
            self.error(at, &c.key, "a condition needs values, notValues or both");
        }
        for (field, values, negate) in [
            ("values", &c.values, false),
            ("notValues", &c.not_values, true),
        ] {
            if values.is_empty() {
                continue;
            }
            let at = format!("{at}.{field}");
            let test = match &key {
                Key::Ip(attr) => Test::Ip(*attr, self.ip_blocks(&at, values)),
                Key::Str(attr) => Test::Str(*attr, self.str_set(&at, values, false)),
                Key::Header(name) => Test::Header(name.clone(), self.str_set(&at, values, false)),
                Key::Port => Test::Port(self.ports(&at, values)),
            };
            out.push(Predicate { test, negate });
        }
    }

    fn condition_key(&mut self, at: &str, key: &str) -> Option<Key> {
        let parsed = match key {
            "source.ip" => Key::Ip(IpAttr::Source),
            "remote.ip" => Key::Ip(IpAttr::Remote),
            "source.namespace" => Key::Str(StrAttr::Namespace),
            "source.principal" => Key::Str(StrAttr::Principal),
            "connection.sni" => Key::Str(StrAttr::Sni),
            "destination.port" => Key::Port,
            _ => {
                if let Some(name) = key
                    .strip_prefix("request.headers[")
                    .and_then(|k| k.strip_suffix(']'))
                {
                    match HeaderName::from_bytes(name.as_bytes()) {
                        Ok(h) => return Some(Key::Header(h)),
                        Err(_) => self.error(
                            at,
                            key,
                            format!("{name:?} in {key:?} is not a valid HTTP header name"),
                        ),
                    }
                } else if key.starts_with("request.auth.") {
                    self.error(
                        at,
                        key,
                        format!("condition key {key:?}: JWT claims (request.auth.*) are not supported yet"),
                    );
                } else {
                    self.error(
                        at,
                        key,
                        format!("unknown condition key {key:?}; supported keys: {SUPPORTED_KEYS}"),
                    );
                }
                return None;
            }
        };
        Some(parsed)
    }

    fn str_field(
        &mut self,
        preds: &mut Vec<Predicate>,
        at: &str,
        values: &[String],
        attr: StrAttr,
        negate: bool,
    ) {
        if values.is_empty() {
            return;
        }
        if attr == StrAttr::Path {
            // Istio 1.22+ reads these as templates; matching them literally would be wrong.
            for (i, v) in values.iter().enumerate() {
                if v.contains("{*}") || v.contains("{**}") {
                    self.error(
                        &format!("{at}[{i}]"),
                        v,
                        format!("{v:?}: path templates ({{*}}, {{**}}) are not supported"),
                    );
                }
            }
        }
        let set = self.str_set(at, values, attr == StrAttr::Host);
        preds.push(Predicate {
            test: Test::Str(attr, set),
            negate,
        });
    }

    fn str_set(&mut self, at: &str, values: &[String], fold_case: bool) -> StrSet {
        let mut patterns = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            match Pattern::parse(v) {
                Ok(p) => patterns.push(p),
                Err(e) => self.error(&format!("{at}[{i}]"), v, e),
            }
        }
        StrSet::new(patterns, fold_case)
    }

    fn ip_blocks(&mut self, at: &str, values: &[String]) -> Vec<IpNet> {
        let mut nets = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            let parsed = v
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(n) => nets.push(n),
                Err(_) => self.error(
                    &format!("{at}[{i}]"),
                    v,
                    format!("{v:?} is not an IP address or CIDR block (e.g. 10.0.0.1, 10.0.0.0/8, fd00::/8)"),
                ),
            }
        }
        nets
    }

    fn ports(&mut self, at: &str, values: &[String]) -> Vec<u16> {
        let mut ports = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            match v.parse::<u16>() {
                Ok(p) if p != 0 => ports.push(p),
                _ => self.error(
                    &format!("{at}[{i}]"),
                    v,
                    format!("{v:?} is not a port; expected a number from 1 to 65535"),
                ),
            }
        }
        ports
    }
}
