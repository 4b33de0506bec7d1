//! Host names as Gateway servers, VirtualServices and SNI match them.

use std::fmt;

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
}
