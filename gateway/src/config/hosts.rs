//! Host names as Gateway servers, VirtualServices and SNI match them.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// One host pattern: `test.com`, `*.example.com` or `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// `*.example.com`, stored as `.example.com`: matches any name ending in it.
    Suffix(String),
    Exact(String),
}

impl HostMatch {
    /// Parses a pattern. Gateway hosts may carry a `namespace/` prefix (`./*`, `ns/host`),
    /// which only scopes VirtualService binding in Istio and is dropped here.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let host = pattern
            .rsplit_once('/')
            .map_or(pattern, |(_, h)| h)
            .to_ascii_lowercase();
        if host == "*" {
            return Ok(HostMatch::Any);
        }
        if let Some(rest) = host.strip_prefix('*') {
            if !rest.starts_with('.') || rest.len() < 2 || rest.contains('*') {
                return Err(format!(
                    "{pattern:?} is not a valid wildcard host (use `*.domain` or `*`)"
                ));
            }
            return Ok(HostMatch::Suffix(rest.to_owned()));
        }
        if host.is_empty() || host.contains('*') || host.contains(char::is_whitespace) {
            return Err(format!("{pattern:?} is not a valid host"));
        }
        Ok(HostMatch::Exact(host))
    }

    /// Whether `name` (lowercase, without a port) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Suffix(suffix) => {
                name.len() > suffix.len() && name.ends_with(suffix.as_str())
            }
            HostMatch::Exact(host) => host == name,
        }
    }

    /// Ranks matches so the most specific wins: exact, then the longest suffix, then `*`.
    pub fn specificity(&self) -> usize {
        match self {
            HostMatch::Any => 0,
            HostMatch::Suffix(s) => 1 + s.len(),
            HostMatch::Exact(_) => usize::MAX,
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Any => f.write_str("*"),
            HostMatch::Suffix(s) => write!(f, "*{s}"),
            HostMatch::Exact(h) => f.write_str(h),
        }
    }
}

/// The best match among `patterns` for `name`, by specificity.
pub fn best_match<'a, T>(
    items: impl IntoIterator<Item = (&'a HostMatch, T)>,
    name: &str,
) -> Option<T> {
    items
        .into_iter()
        .filter(|(m, _)| m.matches(name))
        .max_by_key(|(m, _)| m.specificity())
        .map(|(_, t)| t)
}

/// Strips a `:port` from an HTTP authority and lowercases it.
pub fn authority_host(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority
            .split_once(']')
            .map_or(authority, |(h, _)| h)
            .trim_start_matches('[')
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

/// A request's authority (`Host`, `:authority` or an absolute-form target's), checked once:
/// what routes, policies, the access log and the upstream's `Host` all see.
///
/// RFC 9110 §4.2.4 and §7.2: `uri-host [ ":" port ]`, never userinfo. Stricter than RFC 3986
/// in what a name may hold (letters, digits, `-`, `.`, `_`, `~`): sub-delims and
/// percent-encoding are grammatical in a reg-name but only serve to spell one host two ways,
/// and an upstream that parses Host as a URL authority (`test.com:1@other.example`) must not
/// see another host than the one routed and authorized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    /// Lowercase; an IPv6 literal without its brackets, as [`authority_host`] gives it.
    host: String,
    port: Option<u16>,
}

/// Why a request's authority is refused (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("the host is empty")]
    Empty,
    #[error("an HTTP authority has no userinfo (`@`)")]
    UserInfo,
    #[error("{0:?} is not allowed in a host")]
    Character(char),
    #[error("the port is not a number from 0 to 65535")]
    Port,
    #[error("the IPv6 literal does not parse")]
    Ipv6,
    #[error("an HTTP/1.1 or HTTP/2 request names no host")]
    Missing,
    #[error("more than one Host header")]
    Duplicate,
    #[error("Host and the request target's authority name different hosts")]
    Mismatch,
    #[error("the host ends in more than one dot, or an IPv4 address ends in one")]
    TrailingDot,
}

impl AuthorityError {
    /// The `reason` label of `portcullis_requests_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Empty => "authority_empty",
            Self::UserInfo => "authority_userinfo",
            Self::Character(_) => "authority_bad_character",
            Self::Port => "authority_bad_port",
            Self::Ipv6 => "authority_bad_ipv6",
            Self::Missing => "authority_missing",
            Self::Duplicate => "authority_duplicate_host",
            Self::Mismatch => "authority_mismatch",
            Self::TrailingDot => "authority_trailing_dot",
        }
    }
}

impl Authority {
    /// Parses an authority as a client sent it.
    pub fn parse(raw: &str) -> Result<Self, AuthorityError> {
        if raw.is_empty() {
            return Err(AuthorityError::Empty);
        }
        if raw.contains('@') {
            return Err(AuthorityError::UserInfo);
        }
        let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
            let (literal, after) = rest.split_once(']').ok_or(AuthorityError::Ipv6)?;
            // RFC 9110 has no zone ids; `Ipv6Addr` refuses them, and IPvFuture.
            let ip: Ipv6Addr = literal.parse().map_err(|_| AuthorityError::Ipv6)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or(AuthorityError::Ipv6)?),
            };
            (ip.to_string(), port)
        } else {
            let (host, port) = match raw.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (raw, None),
            };
            if let Some(c) = host
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
            {
                return Err(AuthorityError::Character(c));
            }
            // `test.com.` is the fully qualified spelling of `test.com`: DNS and upstream vhosts
            // (nginx, Apache, Go) treat them as one, so a `hosts: [test.com]` rule must too.
            // One dot only; what is left must not end in another or be an IPv4 address, which
            // has no qualified form.
            let host = match host.strip_suffix('.') {
                Some(name) if name.ends_with('.') || name.parse::<Ipv4Addr>().is_ok() => {
                    return Err(AuthorityError::TrailingDot)
                }
                Some(name) => name,
                None => host,
            };
            if host.is_empty() {
                return Err(AuthorityError::Empty);
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            // `host:` is grammatical (RFC 3986 §3.2.3) and means no port.
            None | Some("") => None,
            Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse().map_err(|_| AuthorityError::Port)?)
            }
            Some(p) => {
                return Err(
                    match p.chars().find(|c| c.is_whitespace() || c.is_control()) {
                        Some(c) => AuthorityError::Character(c),
                        None => AuthorityError::Port,
                    },
                )
            }
        };
        Ok(Self { host, port })
    }

    /// The host, lowercase, without a port (and an IPv6 literal without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether two authorities name the same origin, a missing port being `default_port`.
    pub fn same_origin(&self, other: &Authority, default_port: u16) -> bool {
        self.host == other.host
            && self.port.unwrap_or(default_port) == other.port.unwrap_or(default_port)
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_istio() {
        let cases = [
            ("*", "anything.io", true),
            ("test.com", "test.com", true),
            ("test.com", "www.test.com", false),
            ("*.test.com", "www.test.com", true),
            ("*.test.com", "test.com", false),
            ("./test.com", "test.com", true),
            ("default/*.com", "a.com", true),
            ("TEST.com", "test.com", true),
        ];
        for (pattern, name, want) in cases {
            let m = HostMatch::parse(pattern).expect("valid");
            assert_eq!(m.matches(name), want, "{pattern} vs {name}");
        }
        for bad in ["*test.com", "a.*.com", "", "a b"] {
            assert!(HostMatch::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn most_specific_wins() {
        let any = HostMatch::parse("*").expect("any");
        let suffix = HostMatch::parse("*.test.com").expect("suffix");
        let exact = HostMatch::parse("a.test.com").expect("exact");
        let items = [(&any, 1), (&suffix, 2), (&exact, 3)];
        assert_eq!(best_match(items, "a.test.com"), Some(3));
        assert_eq!(best_match(items, "b.test.com"), Some(2));
        assert_eq!(best_match(items, "other.org"), Some(1));
    }

    #[test]
    fn authority_drops_the_port() {
        assert_eq!(authority_host("Test.com:443"), "test.com");
        assert_eq!(authority_host("[::1]:80"), "::1");
        assert_eq!(authority_host("test.com"), "test.com");
    }

    /// The report's spellings and their relatives: each must be refused, never routed by a
    /// part of it.
    #[test]
    fn hostile_authorities_are_refused() {
        use AuthorityError as E;
        let cases = [
            ("", E::Empty),
            (":443", E::Empty),
            ("test.com:1@other.example", E::UserInfo),
            ("user@test.com", E::UserInfo),
            ("@test.com", E::UserInfo),
            ("test.com:x", E::Port),
            ("test.com:443x", E::Port),
            ("test.com:65536", E::Port),
            ("test.com:999999", E::Port),
            ("test.com:-1", E::Port),
            ("test.com:+443", E::Port),
            ("test.com:30443 garbage", E::Character(' ')),
            ("test.com :443", E::Character(' ')),
            ("test.com\t", E::Character('\t')),
            ("test.com\u{0}.evil", E::Character('\0')),
            ("test.com\r\nx: y", E::Character('\r')),
            ("test.com,other.example", E::Character(',')),
            ("test%2Ecom", E::Character('%')),
            ("t\u{e9}st.com", E::Character('\u{e9}')),
            ("::1", E::Character(':')),
            ("a:b:443", E::Character(':')),
            ("[::1", E::Ipv6),
            ("[::1]x", E::Ipv6),
            ("[fe80::1%25eth0]", E::Ipv6),
            ("[v1.x]", E::Ipv6),
            ("[test.com]", E::Ipv6),
            ("[::1]:x", E::Port),
            ("test.com..", E::TrailingDot),
            ("test.com..:443", E::TrailingDot),
            ("127.0.0.1.", E::TrailingDot),
            (".", E::Empty),
            (".:80", E::Empty),
        ];
        for (raw, want) in cases {
            assert_eq!(Authority::parse(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn authorities_are_canonical() {
        let ok = |raw: &str, host: &str, shown: &str| {
            let a = Authority::parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            assert_eq!(a.host(), host, "{raw:?}");
            assert_eq!(a.to_string(), shown, "{raw:?}");
        };
        ok("Test.COM", "test.com", "test.com");
        ok("test.com:0443", "test.com", "test.com:443");
        ok("test.com:", "test.com", "test.com");
        ok("127.0.0.1:8080", "127.0.0.1", "127.0.0.1:8080");
        ok("[::1]:80", "::1", "[::1]:80");
        ok("[0:0::1]", "::1", "[::1]");
        ok("my_host.internal", "my_host.internal", "my_host.internal");
        ok("test.com.", "test.com", "test.com");
        ok("Test.Com.:80", "test.com", "test.com:80");
        ok("localhost.", "localhost", "localhost");
        let a = Authority::parse("test.com").expect("a");
        assert!(a.same_origin(&Authority::parse("TEST.com:443").expect("b"), 443));
        assert!(!a.same_origin(&Authority::parse("test.com:443").expect("b"), 80));
        assert!(!a.same_origin(&Authority::parse("other.com").expect("b"), 443));
    }
}
