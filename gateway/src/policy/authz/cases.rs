//! The authorization case table: policies (as Istio YAML), a workload, a request, and the
//! decision Istio would reach. The unit tests run every case through
//! [`Authorizer`](super::Authorizer); `portcullis explain` tests run the same cases through the
//! CLI, so the two cannot disagree.
//!
//! Each `policies` text is a complete multi-document YAML file of AuthorizationPolicy
//! resources that the config loader accepts as is.

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{AuthzScope, Decision, DenyReason, PolicyRef, RequestAttrs, Verdict};

/// One scenario.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    pub policies: &'static str,
    pub workload: Workload,
    pub request: Request,
    pub expect: Expect,
    /// The AUDIT policy rule expected to match, as `("ns/name", rule)`.
    pub audited: Option<(&'static str, usize)>,
}

/// The gateway the policies are compiled for; the root namespace is always `istio-system`.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub namespace: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
}

/// Istio's ingress gateway: `istio-system`, `istio: ingressgateway`.
pub const INGRESS: Workload = Workload {
    namespace: "istio-system",
    labels: &[("istio", "ingressgateway")],
};

/// A request, as `portcullis explain` flags would describe it.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub principal: Option<&'static str>,
    pub namespace: Option<&'static str>,
    pub source_ip: IpAddr,
    pub remote_ip: IpAddr,
    pub host: &'static str,
    pub port: u16,
    pub method: &'static str,
    pub path: &'static str,
    pub headers: &'static [(&'static str, &'static str)],
    pub sni: Option<&'static str>,
}

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

/// The walkthrough's step 2: `test.client` over mTLS, `GET https://test.com/status/200`.
pub const MTLS: Request = Request {
    principal: Some("test.client"),
    namespace: None,
    source_ip: PEER,
    remote_ip: PEER,
    host: "test.com",
    port: 443,
    method: "GET",
    path: "/status/200",
    headers: &[],
    sni: Some("test.com"),
};

/// A plaintext request on port 80: no principal, no SNI.
pub const PLAIN: Request = Request {
    principal: None,
    sni: None,
    port: 80,
    ..MTLS
};

/// A mesh workload's identity, with its namespace.
pub const SLEEP: Request = Request {
    principal: Some("cluster.local/ns/default/sa/sleep"),
    namespace: Some("default"),
    ..MTLS
};

/// The expected verdict; policies are named `"namespace/name"`.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// Allowed by this ALLOW policy rule, or (`None`) because no ALLOW policy applies.
    Allow(Option<(&'static str, usize)>),
    /// Denied by this DENY policy rule.
    Deny(&'static str, usize),
    /// Denied because none of these ALLOW policies matched.
    NoAllowMatched(&'static [&'static str]),
}

impl Workload {
    pub fn scope(&self) -> AuthzScope {
        AuthzScope {
            workload_namespace: self.namespace.to_owned(),
            workload_labels: self
                .labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..AuthzScope::default()
        }
    }
}

impl Request {
    pub fn header_map(&self) -> Result<HeaderMap, http::Error> {
        let mut map = HeaderMap::new();
        for (k, v) in self.headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes())?,
                HeaderValue::from_str(v)?,
            );
        }
        Ok(map)
    }

    pub fn attrs<'a>(&'a self, headers: &'a HeaderMap) -> RequestAttrs<'a> {
        RequestAttrs {
            principal: self.principal,
            source_namespace: self.namespace,
            source_ip: self.source_ip,
            remote_ip: self.remote_ip,
            host: self.host,
            port: self.port,
            method: self.method,
            path: self.path,
            headers,
            sni: self.sni,
        }
    }
}

impl Case {
    /// `Ok` when `decision` is what this case expects, else what differs.
    pub fn check(&self, decision: &Decision) -> Result<(), String> {
        let verdict_ok = match (&self.expect, &decision.verdict) {
            (Expect::Allow(want), Verdict::Allow { by }) => same(by.as_ref(), *want),
            (
                Expect::Deny(name, rule),
                Verdict::Deny {
                    reason: DenyReason::DenyPolicyMatched(p),
                },
            ) => same(Some(p), Some((name, *rule))),
            (
                Expect::NoAllowMatched(names),
                Verdict::Deny {
                    reason: DenyReason::NoAllowPolicyMatched { tried },
                },
            ) => {
                tried.len() == names.len()
                    && tried
                        .iter()
                        .zip(names.iter())
                        .all(|(p, n)| p.to_string() == *n)
            }
            _ => false,
        };
        if verdict_ok && same(decision.audited.as_ref(), self.audited) {
            Ok(())
        } else {
            Err(format!(
                "case {:?}: got `{decision}`, want {:?} audited {:?}",
                self.name, self.expect, self.audited
            ))
        }
    }
}

fn same(got: Option<&PolicyRef>, want: Option<(&str, usize)>) -> bool {
    match (got, want) {
        (None, None) => true,
        (Some(p), Some((name, rule))) => {
            p.rule == Some(rule) && name.split_once('/') == Some((&*p.namespace, &*p.name))
        }
        _ => false,
    }
}

/// A configuration that must be rejected, and what the error must say.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCase {
    pub name: &'static str,
    pub policies: &'static str,
    /// The field path the first error names, e.g. `spec.rules[0].when[0].key`.
    pub field: &'static str,
    /// Substrings the first error's message must contain.
    pub message: &'static [&'static str],
}

mod table;
pub use table::{CASES, ERROR_CASES};
