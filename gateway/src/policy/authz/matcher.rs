//! Typed predicates: what one `source`/`operation` field or one `when` condition became.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

use super::RequestAttrs;

/// Above this many exact values a set is hashed; below, a scan is faster.
const SCAN_LIMIT: usize = 8;

/// A string-valued request attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StrAttr {
    Principal,
    Namespace,
    Host,
    Method,
    Path,
    Sni,
}

/// An address-valued request attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IpAttr {
    /// The direct peer (`ipBlocks`, `source.ip`).
    Source,
    /// The original client (`remoteIpBlocks`, `remote.ip`).
    Remote,
}

#[derive(Clone, Debug)]
pub(super) enum Test {
    Str(StrAttr, StrSet),
    Header(HeaderName, StrSet),
    Ip(IpAttr, Vec<IpNet>),
    Port(Vec<u16>),
}

/// One compiled field or condition: `negate` for `not*` fields and `notValues`. A missing
/// attribute (no principal, no such header) never matches the positive test, so the
/// negated one matches it — as Envoy's `not_id` does.
#[derive(Clone, Debug)]
pub(super) struct Predicate {
    pub test: Test,
    pub negate: bool,
}

impl Predicate {
    pub fn matches(&self, req: &RequestAttrs<'_>) -> bool {
        let positive = match &self.test {
            Test::Str(attr, set) => str_attr(*attr, req).is_some_and(|v| set.matches(v.as_bytes())),
            Test::Header(name, set) => header(req.headers, name).is_some_and(|v| set.matches(&v)),
            Test::Ip(IpAttr::Source, nets) => ip_in(nets, req.source_ip),
            Test::Ip(IpAttr::Remote, nets) => ip_in(nets, req.remote_ip),
            Test::Port(ports) => ports.contains(&req.port),
        };
        positive != self.negate
    }

    /// The exact values of a positive test on `attr` that has nothing but exact values:
    /// the rule can only match a request whose attribute is one of them.
    pub fn exact_keys(&self, attr: StrAttr) -> Option<Vec<&[u8]>> {
        match &self.test {
            Test::Str(a, set) if *a == attr && !self.negate => set.exact_only(),
            _ => None,
        }
    }
}

fn str_attr<'a>(attr: StrAttr, req: &RequestAttrs<'a>) -> Option<&'a str> {
    let value = match attr {
        StrAttr::Principal => req.principal?,
        StrAttr::Namespace => req.source_namespace?,
        StrAttr::Host => req.host,
        StrAttr::Method => req.method,
        StrAttr::Path => req.path,
        StrAttr::Sni => req.sni?,
    };
    // An empty identity or SNI is no identity or SNI: `*` (Istio's `.+`) must not match it.
    (!value.is_empty()).then_some(value)
}

/// The header's value as Envoy's header matcher sees it: repeated headers joined with `,`.
/// Only that rare case allocates.
fn header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Cow<'h, [u8]>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let mut joined = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(values) {
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
    }
    Some(Cow::Owned(joined))
}

fn ip_in(nets: &[IpNet], ip: IpAddr) -> bool {
    // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// One value of a string field, as Istio reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Pattern<'v> {
    Exact(&'v str),
    Prefix(&'v str),
    Suffix(&'v str),
    Present,
}

impl<'v> Pattern<'v> {
    /// `*` → present, `abc*` → prefix, `*abc` → suffix, else exact. Istio treats a `*`
    /// anywhere else literally, which is never what the author meant: it is an error here.
    pub fn parse(value: &'v str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("an empty value never matches; remove it or use \"*\"".to_owned());
        }
        let pattern = if value == "*" {
            Self::Present
        } else if let Some(rest) = value.strip_prefix('*') {
            Self::Suffix(rest)
        } else if let Some(rest) = value.strip_suffix('*') {
            Self::Prefix(rest)
        } else {
            Self::Exact(value)
        };
        match pattern {
            Self::Exact(v) | Self::Prefix(v) | Self::Suffix(v) if v.contains('*') => Err(format!(
                "{value:?}: `*` may only be the whole value, a prefix (`*abc`) or a suffix (`abc*`)"
            )),
            p => Ok(p),
        }
    }
}

/// The values of one string field: any of them matching is a match.
#[derive(Clone, Debug, Default)]
pub(super) struct StrSet {
    present: bool,
    exact: Exact,
    prefixes: Vec<Box<[u8]>>,
    suffixes: Vec<Box<[u8]>>,
    /// ASCII case-insensitive (hosts); values are stored lowercased.
    fold_case: bool,
}

#[derive(Clone, Debug)]
enum Exact {
    Scan(Vec<Box<[u8]>>),
    Hashed(HashSet<Box<[u8]>>),
}

impl Default for Exact {
    fn default() -> Self {
        Self::Scan(Vec::new())
    }
}

impl StrSet {
    pub fn new<'v>(patterns: impl IntoIterator<Item = Pattern<'v>>, fold_case: bool) -> Self {
        let key = |v: &str| -> Box<[u8]> {
            if fold_case {
                v.to_ascii_lowercase().into_bytes().into()
            } else {
                v.as_bytes().into()
            }
        };
        let mut set = Self {
            fold_case,
            ..Self::default()
        };
        let mut exact: Vec<Box<[u8]>> = Vec::new();
        for p in patterns {
            match p {
                Pattern::Present => set.present = true,
                Pattern::Exact(v) => exact.push(key(v)),
                Pattern::Prefix(v) => set.prefixes.push(key(v)),
                Pattern::Suffix(v) => set.suffixes.push(key(v)),
            }
        }
        exact.sort();
        exact.dedup();
        set.exact = if exact.len() > SCAN_LIMIT {
            Exact::Hashed(exact.into_iter().collect())
        } else {
            Exact::Scan(exact)
        };
        set
    }

    pub fn matches(&self, value: &[u8]) -> bool {
        self.present
            || self.exact_contains(value)
            || self
                .prefixes
                .iter()
                .any(|p| value.len() >= p.len() && self.eq(&value[..p.len()], p))
            || self
                .suffixes
                .iter()
                .any(|s| value.len() >= s.len() && self.eq(&value[value.len() - s.len()..], s))
    }

    fn eq(&self, a: &[u8], b: &[u8]) -> bool {
        if self.fold_case {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    }

    fn exact_contains(&self, value: &[u8]) -> bool {
        match &self.exact {
            Exact::Scan(values) => values.iter().any(|v| self.eq(value, v)),
            Exact::Hashed(values) if self.fold_case && value.iter().any(u8::is_ascii_uppercase) => {
                // Hosts are nearly always sent lowercase; only a mixed-case one pays for this.
                values.contains(value.to_ascii_lowercase().as_slice())
            }
            Exact::Hashed(values) => values.contains(value),
        }
    }

    /// The exact values, when they are all the set matches (compile time only).
    fn exact_only(&self) -> Option<Vec<&[u8]>> {
        if self.present || self.fold_case || !self.prefixes.is_empty() || !self.suffixes.is_empty()
        {
            return None;
        }
        Some(match &self.exact {
            Exact::Scan(v) => v.iter().map(|v| &**v).collect(),
            Exact::Hashed(v) => v.iter().map(|v| &**v).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let cases: &[(&str, Result<Pattern<'_>, &str>)] = &[
            ("abc", Ok(Pattern::Exact("abc"))),
            ("abc*", Ok(Pattern::Prefix("abc"))),
            ("*abc", Ok(Pattern::Suffix("abc"))),
            ("*", Ok(Pattern::Present)),
            ("", Err("empty value")),
            ("a*c", Err("`*` may only be")),
            ("**", Err("`*` may only be")),
            ("*a*", Err("`*` may only be")),
        ];
        for (value, want) in cases {
            match (Pattern::parse(value), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{value:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{value:?}: {got}"),
                (got, want) => panic!("{value:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn str_set_shapes() {
        // (values, fold_case, input, expected)
        let many: Vec<String> = (0..20).map(|i| format!("/p{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let cases: &[(&[&str], bool, &str, bool)] = &[
            (&["/a"], false, "/a", true),
            (&["/a"], false, "/a/b", false),
            (&["/a"], false, "/A", false),
            (&["/a*"], false, "/a/b", true),
            (&["/a*"], false, "/b/a", false),
            (&["*.json"], false, "/x.json", true),
            (&["*.json"], false, "/x.jsonp", false),
            (&["*"], false, "anything", true),
            (&["Test.COM"], true, "test.com", true),
            (&["test.com"], true, "TEST.com", true),
            (&["test.com"], true, "test.com:443", false),
            (&["*.Example.com"], true, "a.EXAMPLE.com", true),
            (&["API.*"], true, "api.x", true),
            (&many, false, "/p13", true),
            (&many, false, "/p20", false),
            (&["/x", "/y*", "*z"], false, "/yak", true),
            (&["/x", "/y*", "*z"], false, "/quiz", true),
            (&["/x", "/y*", "*z"], false, "/q", false),
        ];
        for (values, fold, input, want) in cases {
            let patterns = values.iter().map(|v| Pattern::parse(v).unwrap());
            let set = StrSet::new(patterns, *fold);
            assert_eq!(
                set.matches(input.as_bytes()),
                *want,
                "{values:?} vs {input:?}"
            );
        }
        let hosts: Vec<String> = (0..20).map(|i| format!("h{i}.example.com")).collect();
        let set = StrSet::new(hosts.iter().map(|h| Pattern::Exact(h)), true);
        assert!(set.matches(b"H7.Example.COM"));
        assert!(!set.matches(b"h7.example.com:80"));
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut headers = HeaderMap::new();
        let name = HeaderName::from_static("x-a");
        assert_eq!(header(&headers, &name), None);
        headers.append(&name, http::HeaderValue::from_static("1"));
        assert_eq!(header(&headers, &name).as_deref(), Some(&b"1"[..]));
        headers.append(&name, http::HeaderValue::from_static("2"));
        assert_eq!(header(&headers, &name).as_deref(), Some(&b"1,2"[..]));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_blocks() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(ip_in(&nets, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(!ip_in(&nets, "::ffff:11.1.2.3".parse().unwrap()));
    }
}
