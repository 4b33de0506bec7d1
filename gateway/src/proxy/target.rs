//! Where a request goes, checked before anything else reads it: its authority (`Host`,
//! `:authority`, an absolute-form target) and its normalized path.

use http::header::HOST;
use http::{Request, Uri};

use crate::config::hosts::{Authority, AuthorityError};
use crate::policy::path::{self, PathError, PathNormalization};

/// The request's authority, checked ([`Authority::parse`]): the absolute-form target's or
/// HTTP/2's `:authority`, and `Host`. RFC 9112 §3.2.2 lets the target's win over Host and
/// RFC 9113 §8.3.1 only says a differing Host SHOULD make the request malformed; here both
/// must name the same origin, or the request is refused, so no component downstream can pick
/// the other one. An HTTP/1.0 request must name its host too: with none, no `hosts` rule could
/// match it and the upstream would pick its default virtual host (Envoy refuses HTTP/1.0
/// outright by default).
pub(super) fn request_authority<B>(req: &Request<B>) -> Result<Authority, AuthorityError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(AuthorityError::Duplicate);
    }
    // Lossy: a byte that is not UTF-8 becomes U+FFFD, which `parse` refuses like any other
    // character a host cannot hold.
    let host = host
        .map(|v| Authority::parse(&String::from_utf8_lossy(v.as_bytes())))
        .transpose()?;
    let target = req
        .uri()
        .authority()
        .map(|a| Authority::parse(a.as_str()))
        .transpose()?;
    let default_port = if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    match (target, host) {
        (Some(t), Some(h)) if !t.same_origin(&h, default_port) => Err(AuthorityError::Mismatch),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => Err(AuthorityError::Missing),
    }
}

/// The authority as received, for the log line of a refused one.
pub(super) fn raw_authority<B>(req: &Request<B>) -> String {
    req.uri().authority().map_or_else(
        || {
            req.headers()
                .get_all(HOST)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        },
        |a| a.as_str().to_owned(),
    )
}

/// A request's target after normalization.
pub(super) struct RequestTarget {
    /// What routes and policies match.
    pub path: String,
    /// What the upstream receives and the access log shows: the path, then the query string
    /// exactly as received.
    pub path_and_query: String,
}

impl RequestTarget {
    pub fn of(uri: &Uri, mode: PathNormalization) -> Result<Self, PathError> {
        // `Uri::path` is `*` for asterisk-form, empty for authority-form (both refused as not
        // origin-form) and `/` for an absolute-form target with an empty path (RFC 9110
        // §4.2.3: the same resource as `/`).
        let path = path::normalize(uri.path(), mode)?.into_owned();
        let path_and_query = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        Ok(Self {
            path,
            path_and_query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Version;

    fn target(uri: &str) -> Result<(String, String), PathError> {
        let uri: Uri = uri.parse().expect("a URI hyper would hand us");
        RequestTarget::of(&uri, PathNormalization::MergeSlashes).map(|t| (t.path, t.path_and_query))
    }

    #[test]
    fn the_request_authority_is_checked_and_both_sources_must_agree() {
        let req = |version: Version, uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().version(version).uri(uri);
            for h in hosts {
                b = b.header(HOST, *h);
            }
            b.body(()).expect("request")
        };
        let got = |r: Request<()>| request_authority(&r).map(|a| a.to_string());
        let ok = |s: &str| Ok(s.to_owned());
        use AuthorityError as E;
        let h1 = Version::HTTP_11;
        assert_eq!(got(req(h1, "/x", &["Test.COM:0443"])), ok("test.com:443"));
        assert_eq!(
            got(req(h1, "/x", &["test.com:1@other.example"])),
            Err(E::UserInfo)
        );
        assert_eq!(got(req(h1, "/x", &["test.com:x"])), Err(E::Port));
        assert_eq!(
            got(req(h1, "/x", &["test.com:30443 garbage"])),
            Err(E::Character(' '))
        );
        assert_eq!(got(req(h1, "/x", &["a.test", "b.test"])), Err(E::Duplicate));
        assert_eq!(got(req(h1, "/x", &["a.test", "a.test"])), Err(E::Duplicate));
        assert_eq!(got(req(h1, "/x", &[])), Err(E::Missing));
        assert_eq!(got(req(Version::HTTP_10, "/x", &[])), Err(E::Missing));
        assert_eq!(got(req(Version::HTTP_10, "/x", &["a.test"])), ok("a.test"));
        assert_eq!(got(req(Version::HTTP_10, "/x", &[""])), Err(E::Empty));
        // Absolute-form: the target's authority, which Host must agree with.
        assert_eq!(
            got(req(
                h1,
                "https://simple.test:1@mutual.test/",
                &["simple.test"]
            )),
            Err(E::UserInfo)
        );
        assert_eq!(
            got(req(h1, "https://Test.com/", &["test.com:443"])),
            ok("test.com")
        );
        assert_eq!(
            got(req(h1, "http://test.com/", &["test.com:443"])),
            Err(E::Mismatch)
        );
        assert_eq!(
            got(req(h1, "https://test.com/", &["other.test"])),
            Err(E::Mismatch)
        );
        assert_eq!(
            got(req(h1, "https://test.com:8443/", &[])),
            ok("test.com:8443")
        );
        // HTTP/2: `:authority` is the URI's, `host` a plain header.
        let h2 = Version::HTTP_2;
        assert_eq!(got(req(h2, "https://test.com/x", &[])), ok("test.com"));
        assert_eq!(
            got(req(h2, "https://test.com/x", &["evil.test"])),
            Err(E::Mismatch)
        );
        assert_eq!(
            got(req(h2, "https://[::1]:443/x", &["[0::1]"])),
            ok("[::1]:443")
        );
        assert_eq!(got(req(h2, "/x", &[])), Err(E::Missing));
    }

    #[test]
    fn request_targets_as_hyper_hands_them_over() {
        let ok = |p: &str, pq: &str| Ok((p.to_owned(), pq.to_owned()));
        assert_eq!(
            target("/status/%34%31%38"),
            ok("/status/418", "/status/418")
        );
        // The query string is kept byte for byte and never normalized.
        assert_eq!(
            target("//a/./%62?x=%2F&y=/../"),
            ok("/a/b", "/a/b?x=%2F&y=/../")
        );
        assert_eq!(target("/a?"), ok("/a", "/a?"));
        // HTTP/1.1 absolute-form: the path is normalized like any other.
        assert_eq!(
            target("https://test.com//status/%34%31%38?q"),
            ok("/status/418", "/status/418?q")
        );
        assert_eq!(target("http://test.com"), ok("/", "/"));
        assert_eq!(target("*"), Err(PathError::AsteriskForm));
        assert_eq!(target("test.com:443"), Err(PathError::NotOriginForm));
        assert_eq!(target("/status%2F418"), Err(PathError::EncodedSlash));
    }
}
