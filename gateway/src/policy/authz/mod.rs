//! AuthorizationPolicy compiled into an [`Authorizer`]: Istio's RBAC semantics for one
//! workload, decided per request without touching YAML or allocating.
//!
//! [`Authorizer::compile`] validates every policy it is given (so `portcullis check` reports
//! problems in policies that target other workloads too), keeps the ones that apply to the
//! [`AuthzScope`], and turns each `source`/`operation` field and `when` condition into a typed
//! predicate. [`Authorizer::evaluate`] then returns a [`Decision`] that names the policy and
//! rule that decided, which is what the access log, the deny metrics and `portcullis explain`
//! print. The daemon's 403 path and `explain` call the same code.
//!
//! # Semantics (Istio's, field for field)
//!
//! | Topic | Rule |
//! |---|---|
//! | Applicability | A policy in the root namespace applies to every workload, any other only to workloads in its namespace; `selector.matchLabels` must be a subset of the workload's labels (none: all). |
//! | Actions | `ALLOW` (default), `DENY`, `AUDIT`. `CUSTOM` and anything else are config errors. |
//! | Order | Any matching DENY policy denies. Otherwise, if an ALLOW policy applies, one must match or the request is denied; with no applicable ALLOW policy the request is allowed. AUDIT never changes the outcome. |
//! | No rules | `rules` absent or `[]` matches nothing: an ALLOW policy without rules denies everything (when it is the only ALLOW), a DENY/AUDIT policy without rules never fires. `rules: [{}]` matches everything. |
//! | Rule | `from` (any entry) AND `to` (any entry) AND `when` (every condition); an empty list is no constraint. |
//! | Source / operation | Every field set must match (AND); within a field any value (OR); a `not*` field must not match. An entry with no field set is an error (as in Istio). |
//! | Values | `abc` exact, `abc*` prefix, `*abc` suffix, `*` present. A `*` elsewhere, or an empty value, is an error. |
//! | principals | The SPIFFE id without `spiffe://` (`test.client`, `cluster.local/ns/default/sa/sleep`). No principal: `principals` does not match, `notPrincipals` does. `namespaces` likewise on the source namespace. |
//! | ipBlocks | Single IP or CIDR, v4 or v6, on the direct peer; `remoteIpBlocks` on the client address (x-forwarded-for when trusted). IPv4-mapped IPv6 peers are compared as IPv4. |
//! | hosts | The request's authority, case-insensitive and port-sensitive, exactly as Istio matches the `:authority` header: `hosts: [example.com]` does not match `example.com:8080` (list both, or use `example.com*`). |
//! | ports | The destination (listener) port; values are numbers 1–65535. |
//! | methods, paths | Case-sensitive; paths are matched without the query string. Istio's path templates (`{*}`, `{**}`) are rejected. |
//! | `when` | `request.headers[<name>]` (repeated headers joined with `,` as Envoy does), `source.ip`, `remote.ip`, `source.namespace`, `source.principal`, `destination.port`, `connection.sni`. `values` any-match, `notValues` none-match, at least one of them is required. `request.auth.*` (JWT) and any other key are errors. |
//! | JWT | `requestPrincipals` / `notRequestPrincipals` are errors until request authentication exists. |
//!
//! # Cost
//! Rules are numbered in one order per action (policies sorted by namespace and name, then
//! rule index). Rules whose every operation lists only exact `paths`, or whose every source
//! lists only exact `principals`, are found through a hash index; only the rest are tried one
//! by one. Within a field, exact values are a set lookup. Evaluation allocates nothing except
//! when a `when` header condition meets a header sent more than once.

mod compile;
mod index;
mod matcher;

pub mod cases;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::resources::AuthorizationPolicySpec;
use crate::config::{ConfigErrors, Doc};

use self::compile::CompiledRule;
use self::index::RuleIndex;

/// The workload the policies are compiled for: which policies apply depends on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzScope {
    /// Istio's root namespace: policies there apply to every workload.
    pub root_namespace: String,
    /// The namespace the gateway runs in as far as policies are concerned.
    pub workload_namespace: String,
    /// The gateway's labels, matched against `selector.matchLabels`.
    pub workload_labels: BTreeMap<String, String>,
}

impl Default for AuthzScope {
    /// Istio's ingress gateway: namespace `istio-system` (also the root namespace), label
    /// `istio: ingressgateway`.
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".to_owned(),
            workload_namespace: "istio-system".to_owned(),
            workload_labels: BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())]),
        }
    }
}

/// What a request looks like to the policies. Everything is borrowed from the connection and
/// the request; nothing is parsed again.
#[derive(Clone, Copy, Debug)]
pub struct RequestAttrs<'a> {
    /// The peer's SPIFFE id without `spiffe://`: `test.client`,
    /// `cluster.local/ns/default/sa/sleep`. `None` for plaintext or a certificate without one.
    pub principal: Option<&'a str>,
    /// The namespace in the peer's SPIFFE id, when it has one.
    pub source_namespace: Option<&'a str>,
    /// The direct peer address (`ipBlocks`, `source.ip`).
    pub source_ip: IpAddr,
    /// The original client (`remoteIpBlocks`, `remote.ip`): the x-forwarded-for origin when
    /// it is trusted, else the peer.
    pub remote_ip: IpAddr,
    /// The `:authority` / `Host` as the client sent it (may carry a port).
    pub host: &'a str,
    /// The destination (listener) port.
    pub port: u16,
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The TLS server name the client asked for.
    pub sni: Option<&'a str>,
}

/// A policy, and the rule in it that matched when there is one. Cloning is two reference
/// count increments, so a decision costs no allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// Index in `spec.rules` of the rule that matched; `None` when the reference names a
    /// policy as a whole (the ALLOW policies tried in [`DenyReason::NoAllowPolicyMatched`]).
    pub rule: Option<usize>,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if let Some(rule) = self.rule {
            write!(f, " rule {rule}")?;
        }
        Ok(())
    }
}

/// The three actions Portcullis enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthzAction {
    Allow,
    Deny,
    Audit,
}

impl AuthzAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
        }
    }
}

/// The outcome of [`Authorizer::evaluate`] and what audit policies said about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The first AUDIT policy rule that matched: the request should be logged as audited.
    /// It never changes [`Decision::verdict`].
    pub audited: Option<PolicyRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `by` is the ALLOW policy rule that matched, `None` when no ALLOW policy applies.
    Allow {
        by: Option<PolicyRef>,
    },
    Deny {
        reason: DenyReason,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// A DENY policy rule matched.
    DenyPolicyMatched(PolicyRef),
    /// ALLOW policies apply and none matched; `tried` lists them all (an ALLOW policy
    /// without rules is among them: it matches nothing).
    NoAllowPolicyMatched { tried: Arc<[PolicyRef]> },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self.verdict, Verdict::Allow { .. })
    }

    /// The policy rule that decided, for logs and metrics: the matching ALLOW or DENY rule;
    /// `None` when no policy applies or no ALLOW policy matched.
    pub fn decided_by(&self) -> Option<&PolicyRef> {
        match &self.verdict {
            Verdict::Allow { by } => by.as_ref(),
            Verdict::Deny {
                reason: DenyReason::DenyPolicyMatched(p),
            } => Some(p),
            Verdict::Deny {
                reason: DenyReason::NoAllowPolicyMatched { .. },
            } => None,
        }
    }
}

impl fmt::Display for Decision {
    /// `ALLOW by ns/name rule 0`, `ALLOW (no ALLOW policy applies)`,
    /// `DENY by ns/name rule 1`, `DENY (no ALLOW policy matched; tried ns/a, ns/b)`,
    /// followed by `; audited by ns/name rule 0` when an AUDIT policy matched.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Allow { by: Some(p) } => write!(f, "ALLOW by {p}")?,
            Verdict::Allow { by: None } => write!(f, "ALLOW (no ALLOW policy applies)")?,
            Verdict::Deny {
                reason: DenyReason::DenyPolicyMatched(p),
            } => write!(f, "DENY by {p}")?,
            Verdict::Deny {
                reason: DenyReason::NoAllowPolicyMatched { tried },
            } => {
                write!(f, "DENY (no ALLOW policy matched; tried ")?;
                for (i, p) in tried.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{p}")?;
                }
                write!(f, ")")?;
            }
        }
        if let Some(a) = &self.audited {
            write!(f, "; audited by {a}")?;
        }
        Ok(())
    }
}

/// The applicable policies of one action, their rules in evaluation order, and the index
/// that picks the candidate rules for a request.
#[derive(Debug, Default)]
struct ActionSet {
    /// Sorted by namespace, then name; `rule` is `None`.
    policies: Vec<PolicyRef>,
    rules: Vec<CompiledRule>,
    index: RuleIndex,
}

impl ActionSet {
    fn new(mut policies: Vec<(PolicyRef, Vec<CompiledRule>)>) -> Self {
        policies.sort_by(|(a, _), (b, _)| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut set = Self::default();
        for (policy_index, (policy, rules)) in policies.into_iter().enumerate() {
            set.policies.push(policy);
            set.rules.extend(rules.into_iter().map(|mut r| {
                r.policy = policy_index;
                r
            }));
        }
        set.index = RuleIndex::build(&set.rules);
        set
    }

    /// The first matching rule in evaluation order.
    fn first_match(&self, req: &RequestAttrs<'_>) -> Option<PolicyRef> {
        self.index
            .candidates(req.path, req.principal)
            .map(|i| &self.rules[i])
            .find(|rule| rule.matches(req))
            .map(|rule| self.policy_ref(rule))
    }

    /// [`Self::first_match`] without the index, to test the index against.
    #[cfg(test)]
    fn first_match_by_scan(&self, req: &RequestAttrs<'_>) -> Option<PolicyRef> {
        self.rules
            .iter()
            .find(|rule| rule.matches(req))
            .map(|rule| self.policy_ref(rule))
    }

    fn policy_ref(&self, rule: &CompiledRule) -> PolicyRef {
        PolicyRef {
            rule: Some(rule.rule),
            ..self.policies[rule.policy].clone()
        }
    }
}

/// The AuthorizationPolicies that apply to one workload, compiled. Immutable: a new config
/// version compiles a new one.
#[derive(Debug)]
pub struct Authorizer {
    deny: ActionSet,
    allow: ActionSet,
    audit: ActionSet,
    /// `allow.policies` shared, so a "no ALLOW matched" decision costs one increment.
    allow_tried: Arc<[PolicyRef]>,
}

impl Authorizer {
    /// Validates every policy and compiles those that apply to `scope`. All problems are
    /// reported together, each naming the file, document, policy and field.
    pub fn compile(
        policies: &[Doc<AuthorizationPolicySpec>],
        scope: &AuthzScope,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let (mut allow, mut deny, mut audit) = (Vec::new(), Vec::new(), Vec::new());
        for doc in policies {
            let Some((action, rules)) = compile::policy(doc, &mut errors) else {
                continue;
            };
            if !applies(doc, scope) {
                continue;
            }
            let policy = PolicyRef {
                namespace: Arc::from(doc.namespace()),
                name: Arc::from(doc.metadata.name.as_str()),
                rule: None,
            };
            match action {
                AuthzAction::Allow => allow.push((policy, rules)),
                AuthzAction::Deny => deny.push((policy, rules)),
                AuthzAction::Audit => audit.push((policy, rules)),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let (allow, deny, audit) = (
            ActionSet::new(allow),
            ActionSet::new(deny),
            ActionSet::new(audit),
        );
        let allow_tried = Arc::from(allow.policies.as_slice());
        Ok(Self {
            deny,
            allow,
            audit,
            allow_tried,
        })
    }

    /// Decides one request. DENY first, then ALLOW; AUDIT alongside.
    pub fn evaluate(&self, req: &RequestAttrs<'_>) -> Decision {
        let audited = self.audit.first_match(req);
        let verdict = if let Some(p) = self.deny.first_match(req) {
            Verdict::Deny {
                reason: DenyReason::DenyPolicyMatched(p),
            }
        } else if self.allow.policies.is_empty() {
            Verdict::Allow { by: None }
        } else if let Some(p) = self.allow.first_match(req) {
            Verdict::Allow { by: Some(p) }
        } else {
            Verdict::Deny {
                reason: DenyReason::NoAllowPolicyMatched {
                    tried: Arc::clone(&self.allow_tried),
                },
            }
        };
        Decision { verdict, audited }
    }

    /// The applicable policies in evaluation order (DENY, ALLOW, AUDIT), for `explain` and
    /// the config dump.
    pub fn policies(&self) -> impl Iterator<Item = (AuthzAction, &PolicyRef)> {
        fn tag(
            action: AuthzAction,
            set: &ActionSet,
        ) -> impl Iterator<Item = (AuthzAction, &PolicyRef)> {
            set.policies.iter().map(move |p| (action, p))
        }
        tag(AuthzAction::Deny, &self.deny)
            .chain(tag(AuthzAction::Allow, &self.allow))
            .chain(tag(AuthzAction::Audit, &self.audit))
    }
}

/// Istio's applicability: root namespace → every workload; else the same namespace; and
/// the selector's labels a subset of the workload's.
pub(crate) fn applies(doc: &Doc<AuthorizationPolicySpec>, scope: &AuthzScope) -> bool {
    let ns = doc.namespace();
    if ns != scope.root_namespace && ns != scope.workload_namespace {
        return false;
    }
    doc.spec.selector.as_ref().is_none_or(|s| {
        s.match_labels
            .iter()
            .all(|(k, v)| scope.workload_labels.get(k) == Some(v))
    })
}
