//! `portcullis explain`: which AuthorizationPolicy decides a request, and why — what
//! `istioctl x authz check` answers, for our config files.
//!
//! The request is described the way flags describe it; [`explain`] turns it into the same
//! [`RequestAttrs`] the proxy builds and asks the same compiled [`Authorizer`], so the answer
//! is the daemon's answer.

use std::fmt;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::authz::{
    Authorizer, AuthzAction, Decision, DenyReason, PolicyRef, RequestAttrs, Verdict,
};
use super::path::{normalize, PathError, PathNormalization};
use crate::config::hosts::{Authority, AuthorityError};

/// A request as `portcullis explain` flags describe it.
#[derive(Clone, Debug)]
pub struct ExplainRequest {
    /// The client's SPIFFE id, with or without `spiffe://`; `None` for plaintext.
    pub principal: Option<String>,
    /// The client's namespace (from its SPIFFE id in the daemon).
    pub source_namespace: Option<String>,
    /// The direct peer.
    pub source_ip: IpAddr,
    /// The original client, when it differs from the peer.
    pub remote_ip: Option<IpAddr>,
    pub method: String,
    /// The `:authority`, port included when the client sends one.
    pub host: String,
    /// The path as the client sends it; a query string is ignored, as policies never see it.
    pub path: String,
    /// The daemon's normalization, applied to `path` before the policies see it.
    pub path_normalization: PathNormalization,
    /// The gateway port the request arrives on.
    pub port: u16,
    pub headers: Vec<(String, String)>,
    pub sni: Option<String>,
}

/// A header the request cannot carry.
#[derive(Debug, thiserror::Error)]
#[error("header `{name}: {value}` is not a valid HTTP header: {reason}")]
pub struct BadHeader {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl ExplainRequest {
    fn header_map(&self) -> Result<HeaderMap, BadHeader> {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            let bad = |reason: String| BadHeader {
                name: name.clone(),
                value: value.clone(),
                reason,
            };
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let v = HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
            map.append(n, v);
        }
        Ok(map)
    }
}

/// The decision and the policies that were in play.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The path as given, without its query string.
    pub received: String,
    /// The host as given.
    pub received_host: String,
    /// The canonical host the policies saw (lowercase, one trailing dot dropped, port as a
    /// number), or why the daemon would refuse it with `400`.
    pub host: Result<String, AuthorityError>,
    /// The method, when the daemon would refuse it with `400` (lowercase letters).
    pub refused_method: Option<String>,
    /// The path the policies saw, or why the daemon would refuse it with `400`.
    pub path: Result<String, PathError>,
    pub mode: PathNormalization,
    /// `None` when the request is refused (host, method or path): no policy is asked.
    pub decision: Option<Decision>,
    /// Every policy that applies to the workload, in evaluation order.
    pub applicable: Vec<(AuthzAction, PolicyRef)>,
}

/// Decides `req` with `authz`, exactly as the proxy would.
pub fn explain(authz: &Authorizer, req: &ExplainRequest) -> Result<Explanation, BadHeader> {
    let headers = req.header_map()?;
    let principal = req
        .principal
        .as_deref()
        .map(|p| p.strip_prefix("spiffe://").unwrap_or(p));
    // As a client sends it: the query string and a fragment are not part of the path.
    let raw = req
        .path
        .split(['?', '#'])
        .next()
        .unwrap_or(req.path.as_str());
    let applicable = authz.policies().map(|(a, p)| (a, p.clone())).collect();
    // The daemon's order: the host, the method, then the path; the first refused is the 400.
    let host = Authority::parse(&req.host).map(|a| a.to_string());
    let refused_method = super::method_refused(&req.method).then(|| req.method.clone());
    let path = normalize(raw, req.path_normalization).map(std::borrow::Cow::into_owned);
    let mut explanation = Explanation {
        received: raw.to_owned(),
        received_host: req.host.clone(),
        host,
        refused_method,
        path,
        mode: req.path_normalization,
        decision: None,
        applicable,
    };
    if let (Ok(host), None, Ok(path)) = (
        &explanation.host,
        &explanation.refused_method,
        &explanation.path,
    ) {
        explanation.decision = Some(authz.evaluate(&RequestAttrs {
            principal,
            source_namespace: req.source_namespace.as_deref(),
            source_ip: req.source_ip,
            remote_ip: req.remote_ip.unwrap_or(req.source_ip),
            host,
            port: req.port,
            method: &req.method,
            path,
            headers: &headers,
            sni: req.sni.as_deref(),
        }));
    }
    Ok(explanation)
}

impl Explanation {
    /// Whether the daemon would let the request through to routing.
    pub fn is_allowed(&self) -> bool {
        self.decision.as_ref().is_some_and(Decision::is_allowed)
    }
}

fn rule(p: &PolicyRef) -> String {
    p.rule.map_or_else(String::new, |r| format!(", rule {r}"))
}

impl fmt::Display for Explanation {
    /// ```text
    /// DENY
    ///   decided by: DENY policy istio-system/test, rule 0
    ///   policies that apply (in evaluation order):
    ///     DENY  istio-system/test
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const REFUSED: &str = "REFUSED: 400 Bad Request, before any policy";
        if let Err(e) = &self.host {
            return writeln!(f, "{REFUSED}\n  host: {:?}\n  why: {e}", self.received_host);
        }
        if let Some(m) = &self.refused_method {
            return writeln!(
                f,
                "{REFUSED}\n  method: {m}\n  why: methods are case-sensitive and none has lowercase letters; an upstream that uppercases it would serve what a policy on the uppercase method decided against"
            );
        }
        let decision = match (&self.path, &self.decision) {
            (Err(e), _) => {
                return writeln!(
                    f,
                    "{REFUSED}\n  path: {}\n  why: {e}\n  path normalization: {}",
                    self.received, self.mode
                );
            }
            (Ok(_), None) => return Ok(()),
            (Ok(_), Some(d)) => d,
        };
        match &decision.verdict {
            Verdict::Allow { by: Some(p) } => writeln!(
                f,
                "ALLOW\n  decided by: ALLOW policy {}/{}{}",
                p.namespace,
                p.name,
                rule(p)
            )?,
            Verdict::Allow { by: None } => writeln!(
                f,
                "ALLOW\n  no DENY policy matched and no ALLOW policy applies to this workload"
            )?,
            Verdict::Deny {
                reason: DenyReason::DenyPolicyMatched(p),
            } => writeln!(
                f,
                "DENY\n  decided by: DENY policy {}/{}{}",
                p.namespace,
                p.name,
                rule(p)
            )?,
            Verdict::Deny {
                reason: DenyReason::NoAllowPolicyMatched { tried },
            } => {
                writeln!(f, "DENY\n  no ALLOW policy matched; ALLOW policies tried:")?;
                for p in tried.iter() {
                    writeln!(f, "    {p}")?;
                }
            }
        }
        if let Ok(path) = &self.path {
            writeln!(f, "  path: {path} (normalized, {})", self.mode)?;
        }
        if let Ok(host) = &self.host {
            if *host != self.received_host {
                writeln!(f, "  host: {host} (canonical)")?;
            }
        }
        if let Some(a) = &decision.audited {
            writeln!(
                f,
                "  audited by: AUDIT policy {}/{}{}",
                a.namespace,
                a.name,
                rule(a)
            )?;
        }
        if self.applicable.is_empty() {
            writeln!(f, "  no AuthorizationPolicy applies to this workload")?;
        } else {
            writeln!(f, "  policies that apply (in evaluation order):")?;
            for (action, p) in &self.applicable {
                writeln!(f, "    {:<5} {p}", action.as_str())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_paths;
    use crate::policy::authz::cases::{Case, CASES};

    /// The case's policies through the config loader, as `explain -c` reads them.
    fn load(case: &Case, dir: &std::path::Path) -> Authorizer {
        let file = dir.join(format!("{}.yaml", case.name.replace(['/', ' '], "_")));
        std::fs::write(&file, case.policies).unwrap();
        let resources = load_paths(&[file]).unwrap_or_else(|e| panic!("case {:?}: {e}", case.name));
        Authorizer::compile(&resources.authorization_policies, &case.workload.scope())
            .unwrap_or_else(|e| panic!("case {:?}: {e}", case.name))
    }

    /// The case's request as flags would give it (principals with `spiffe://`).
    fn as_flags(case: &Case) -> ExplainRequest {
        let r = &case.request;
        ExplainRequest {
            principal: r.principal.map(|p| format!("spiffe://{p}")),
            source_namespace: r.namespace.map(str::to_owned),
            source_ip: r.source_ip,
            remote_ip: Some(r.remote_ip),
            method: r.method.to_owned(),
            host: r.host.to_owned(),
            path: r.path.to_owned(),
            path_normalization: PathNormalization::default(),
            port: r.port,
            headers: r
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            sni: r.sni.map(str::to_owned),
        }
    }

    #[test]
    fn explain_agrees_with_the_authorizer_on_every_case() {
        let dir = tempfile::tempdir().unwrap();
        let mut failures = Vec::new();
        for case in CASES {
            let authz = load(case, dir.path());
            let headers = case.request.header_map().unwrap();
            let direct = authz.evaluate(&case.request.attrs(&headers));
            let explained = explain(&authz, &as_flags(case)).unwrap();
            match &explained.decision {
                Some(d) if *d == direct => {
                    if let Err(e) = case.check(d) {
                        failures.push(e);
                    }
                }
                // The daemon refuses a lowercase method before any policy (400): stricter
                // than the policies' own DENY, never looser.
                None if explained.refused_method.is_some() && !direct.is_allowed() => {}
                other => failures.push(format!(
                    "case {:?}: explain says `{other:?}`, evaluate says `{direct}`",
                    case.name
                )),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases disagree:\n{}",
            failures.len(),
            CASES.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn the_walkthrough_denial_names_policy_and_rule() {
        let case = CASES
            .iter()
            .find(|c| matches!(c.expect, crate::policy::authz::cases::Expect::Deny(..)))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = explain(&load(case, dir.path()), &as_flags(case))
            .unwrap()
            .to_string();
        assert!(out.starts_with("DENY\n  decided by: DENY policy "), "{out}");
        assert!(out.contains(", rule "), "{out}");
    }

    /// The walkthrough's DENY through `explain`: every spelling that decodes to the denied path
    /// is denied (or refused), in every mode but NONE, as the daemon does it.
    #[test]
    fn spellings_of_a_denied_path_are_denied() {
        let case = CASES
            .iter()
            .find(|c| c.name == "walkthrough: test.client /status/418 is denied")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let authz = load(case, dir.path());
        let plain = case.request.path;
        let spellings = [
            plain.replacen('/', "//", 1),
            plain.replacen('/', "/./", 1),
            plain.replacen('/', "/x/../", 1),
            plain.replacen('/', "\\", 2).replacen('\\', "/", 1),
            format!("{}?q=1", plain.replace('a', "%61")),
        ];
        for mode in [
            PathNormalization::Base,
            PathNormalization::MergeSlashes,
            PathNormalization::DecodeAndMergeSlashes,
        ] {
            for path in &spellings {
                if mode == PathNormalization::Base && path.contains("//") {
                    continue;
                }
                let mut req = as_flags(case);
                req.path = path.clone();
                req.path_normalization = mode;
                let out = explain(&authz, &req).unwrap();
                assert!(!out.is_allowed(), "{path} in {mode}: {out}");
                assert_eq!(out.path.as_deref(), Ok(plain), "{path} in {mode}");
            }
        }
        let mut req = as_flags(case);
        req.path = plain.replacen('/', "/%2F", 1);
        let out = explain(&authz, &req).unwrap();
        assert_eq!(out.path, Err(PathError::EncodedSlash));
        assert!(out.to_string().starts_with("REFUSED: 400"), "{out}");
    }

    /// The daemon's host and method checks, before any policy: a refused host or a
    /// lowercase method is a 400, and a host is matched in its canonical form.
    #[test]
    fn hosts_and_methods_are_checked_as_the_daemon_checks_them() {
        let case = CASES
            .iter()
            .find(|c| c.name == "walkthrough: test.client /status/418 is denied")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let authz = load(case, dir.path());
        let denied = explain(&authz, &as_flags(case)).unwrap().decision;
        assert!(denied.as_ref().is_some_and(|d| !d.is_allowed()));
        for host in ["TEST.com", "test.com.", "Test.Com."] {
            let mut req = as_flags(case);
            req.host = host.to_owned();
            let out = explain(&authz, &req).unwrap();
            assert_eq!(out.host.as_deref(), Ok("test.com"), "{host}");
            assert_eq!(out.decision, denied, "{host}");
            assert!(
                out.to_string().contains("host: test.com (canonical)"),
                "{out}"
            );
        }
        for (host, why) in [
            ("test.com:1@other.example", AuthorityError::UserInfo),
            ("test.com..", AuthorityError::TrailingDot),
            ("test.com:x", AuthorityError::Port),
            ("", AuthorityError::Empty),
        ] {
            let mut req = as_flags(case);
            req.host = host.to_owned();
            let out = explain(&authz, &req).unwrap();
            assert_eq!(out.host, Err(why), "{host}");
            assert_eq!(out.decision, None);
            assert!(out.to_string().starts_with("REFUSED: 400"), "{out}");
            assert!(!out.is_allowed());
        }
        let mut req = as_flags(case);
        req.method = "get".to_owned();
        let out = explain(&authz, &req).unwrap();
        assert_eq!(out.refused_method.as_deref(), Some("get"));
        assert_eq!(out.decision, None);
        assert!(out.to_string().starts_with("REFUSED: 400"), "{out}");
    }

    #[test]
    fn a_query_string_is_not_part_of_the_path() {
        let case = &CASES[0];
        let dir = tempfile::tempdir().unwrap();
        let authz = load(case, dir.path());
        let mut req = as_flags(case);
        let plain = explain(&authz, &req).unwrap().decision;
        req.path.push_str("?x=1");
        assert_eq!(explain(&authz, &req).unwrap().decision, plain);
    }

    #[test]
    fn bad_headers_are_reported() {
        let mut req = as_flags(&CASES[0]);
        req.headers.push(("bad header".to_owned(), "v".to_owned()));
        let authz = load(&CASES[0], tempfile::tempdir().unwrap().path());
        let err = explain(&authz, &req).unwrap_err();
        assert!(err.to_string().contains("bad header"), "{err}");
    }
}
