//! SPIFFE identities read from X.509 certificates.

use std::fmt;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A peer's authenticated identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`: a Kubernetes-style
    /// workload identity, as Istio issues them.
    Workload {
        trust_domain: String,
        namespace: String,
        service_account: String,
    },
    /// Any other SPIFFE id, e.g. `spiffe://test.client`: `trust_domain` plus an optional path.
    Other { trust_domain: String, path: String },
}

/// Why a URI SAN whose scheme is `spiffe` (in any case) is not a valid SPIFFE ID.
///
/// The SPIFFE ID spec (spiffe/spiffe `standards/SPIFFE-ID.md`), read strictly: an id that
/// could be spelled two ways (`TEST.CLIENT`, `test%2Eclient`, `test.client/.`) would be two
/// principals, and a DENY rule names only one of them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("the scheme must be exactly `spiffe`")]
    SchemeCase,
    #[error("`spiffe:` must be followed by `//` and a trust domain")]
    NoAuthority,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain carries userinfo (`@`)")]
    UserInfo,
    #[error("the trust domain carries a port")]
    Port,
    #[error("a SPIFFE ID has no query (`?`)")]
    Query,
    #[error("a SPIFFE ID has no fragment (`#`)")]
    Fragment,
    #[error("a SPIFFE ID is never percent-encoded")]
    PercentEncoded,
    #[error("{0:?} is not allowed in a trust domain (a-z 0-9 . - _)")]
    TrustDomainCharacter(char),
    #[error("the trust domain has an empty label (a leading, trailing or doubled `.`)")]
    EmptyLabel,
    #[error("{0:?} is not allowed in a path (A-Z a-z 0-9 . - _)")]
    PathCharacter(char),
    #[error("the path has an empty segment (`//` or a trailing `/`)")]
    EmptySegment,
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    #[error("longer than {max} bytes")]
    TooLong { max: usize },
}

/// The spec's limits: 255 bytes of trust domain, 2048 bytes of URI.
const MAX_TRUST_DOMAIN: usize = 255;
const MAX_URI: usize = 2048;

/// Whether a URI SAN claims to be a SPIFFE ID: its scheme is `spiffe` in any case, even after
/// leading blanks or control bytes. Such a SAN must then parse as one, or the certificate is
/// refused: treating it as "not an identity" would leave the peer with no principal, which
/// passes every DENY rule that names one.
pub fn claims_spiffe(uri: &str) -> bool {
    let uri = uri.trim_start_matches(|c: char| c.is_ascii_whitespace() || c.is_ascii_control());
    uri.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("spiffe:"))
}

impl Identity {
    /// Parses a `spiffe://` URI; None for anything else, including a malformed SPIFFE ID.
    pub fn from_uri(uri: &str) -> Option<Self> {
        Self::parse(uri).ok()
    }

    /// Parses a SPIFFE ID strictly.
    ///
    /// Stricter than the spec in one place: the trust domain may not have an empty label
    /// (`test.client.`, `.test.client`, `a..b`). The spec's character set allows them, but a
    /// trailing dot only spells the DNS name `test.client` another way, and no issuer has a
    /// reason to sign it except to make a principal that a rule for `test.client` misses.
    pub fn parse(uri: &str) -> Result<Self, SpiffeIdError> {
        if uri.len() > MAX_URI {
            return Err(SpiffeIdError::TooLong { max: MAX_URI });
        }
        let rest = match uri.strip_prefix("spiffe:") {
            Some(rest) => rest,
            None if claims_spiffe(uri) => return Err(SpiffeIdError::SchemeCase),
            None => return Err(SpiffeIdError::NoAuthority),
        };
        let rest = rest.strip_prefix("//").ok_or(SpiffeIdError::NoAuthority)?;
        // Checked over the whole id first, so the error names the construct rather than the
        // character that happens to be met first.
        if rest.contains('%') {
            return Err(SpiffeIdError::PercentEncoded);
        }
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if trust_domain.contains('@') {
            return Err(SpiffeIdError::UserInfo);
        }
        if trust_domain.contains(':') {
            return Err(SpiffeIdError::Port);
        }
        if trust_domain.len() > MAX_TRUST_DOMAIN {
            return Err(SpiffeIdError::TooLong {
                max: MAX_TRUST_DOMAIN,
            });
        }
        if let Some(c) = trust_domain
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::TrustDomainCharacter(c));
        }
        if trust_domain.split('.').any(str::is_empty) {
            return Err(SpiffeIdError::EmptyLabel);
        }
        // `rest.find('/')` found a `/`: the path is not empty, and no segment of it may be.
        if rest.len() > trust_domain.len() {
            for segment in path.split('/') {
                if segment.is_empty() {
                    return Err(SpiffeIdError::EmptySegment);
                }
                if segment == "." || segment == ".." {
                    return Err(SpiffeIdError::DotSegment);
                }
                if let Some(c) = segment
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(SpiffeIdError::PathCharacter(c));
                }
            }
        }
        let parts: Vec<&str> = path.split('/').collect();
        Ok(match parts.as_slice() {
            ["ns", ns, "sa", sa] => Identity::Workload {
                trust_domain: trust_domain.to_owned(),
                namespace: (*ns).to_owned(),
                service_account: (*sa).to_owned(),
            },
            _ => Identity::Other {
                trust_domain: trust_domain.to_owned(),
                path: path.to_owned(),
            },
        })
    }

    /// The principal as AuthorizationPolicy `source.principals` names it: the SPIFFE id
    /// without `spiffe://` (`test.client`, `cluster.local/ns/default/sa/sleep`).
    pub fn principal(&self) -> String {
        match self {
            Identity::Workload {
                trust_domain,
                namespace,
                service_account,
            } => {
                format!("{trust_domain}/ns/{namespace}/sa/{service_account}")
            }
            Identity::Other { trust_domain, path } if path.is_empty() => trust_domain.clone(),
            Identity::Other { trust_domain, path } => format!("{trust_domain}/{path}"),
        }
    }

    /// The SPIFFE trust domain (`cluster.local`, `test.client`).
    pub fn trust_domain(&self) -> &str {
        match self {
            Identity::Workload { trust_domain, .. } | Identity::Other { trust_domain, .. } => {
                trust_domain
            }
        }
    }

    /// The namespace, for workload identities.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Identity::Workload { namespace, .. } => Some(namespace),
            Identity::Other { .. } => None,
        }
    }

    /// The full URI.
    pub fn uri(&self) -> String {
        format!("spiffe://{}", self.principal())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

/// The peer's SPIFFE ID among a certificate's URI SANs: the one whose scheme is `spiffe` (in
/// any case); None when there is none. An X509-SVID carries exactly one SPIFFE ID, so a second
/// one, or one that does not parse strictly ([`Identity::parse`]), is an error, and the
/// certificate is refused rather than read as "no principal".
///
/// Other URI SANs beside it are ignored, as Istio does: its authorization matches
/// `source.principals` against the principal that istio/proxy's `io.istio.network.authn`
/// filter takes from the first `spiffe://` URI SAN (`IstioAuthnFilter::populate`), not against
/// Envoy's `Authenticated` principal, which tries every URI SAN (envoyproxy/envoy#9237). With
/// at most one SPIFFE ID allowed, "the first" and "the only" are the same. Envoy's XFCC `URI=`
/// is the first URI SAN of any kind (`uris[0]`), which is why [`PeerCertificate::uris`] keeps
/// them all, in order.
pub fn spiffe_id(uris: &[String]) -> Result<Option<Identity>, PeerCertError> {
    let mut claimed = uris.iter().filter(|u| claims_spiffe(u));
    let Some(uri) = claimed.next() else {
        return Ok(None);
    };
    let others = claimed.count();
    if others > 0 {
        return Err(PeerCertError::SeveralSpiffeIds { count: others + 1 });
    }
    Identity::parse(uri)
        .map(Some)
        .map_err(|why| PeerCertError::InvalidSpiffeId {
            uri: uri.clone(),
            why,
        })
}

/// What a verified peer certificate says about the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The SPIFFE identity, when the certificate carries a `spiffe` URI SAN. A certificate
    /// without one is authenticated (it chains to the CA) but has no principal.
    pub identity: Option<Identity>,
    /// All URI SANs, in order (Envoy's XFCC names the first).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// The subject DN, RFC 4514 style.
    pub subject: String,
    /// Lowercase hex SHA-256 of the DER certificate (Envoy's XFCC `Hash=`).
    pub sha256_hex: String,
}

/// Why a peer certificate is not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerCertError {
    #[error("peer certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// `{uri:?}`: the SAN is whatever the issuer signed, control characters included.
    #[error("peer certificate URI SAN {uri:?} is not a valid SPIFFE ID: {why}")]
    InvalidSpiffeId { uri: String, why: SpiffeIdError },
    #[error("peer certificate carries {count} SPIFFE IDs; an X509-SVID has exactly one")]
    SeveralSpiffeIds { count: usize },
    #[error("{0}")]
    MalformedSan(SanError),
}

/// Why a certificate's subjectAltName extension is refused.
///
/// Every reader of a peer's SANs goes through [`subject_alt_names`], which fails closed: a SAN
/// that one parser skips while another (OpenSSL, the CA) reads it as `spiffe://test.client`
/// would leave an authenticated client with no principal, and a DENY on that principal void
/// (attack review, issue 12: BER-encoded and non-UTF-8 URI SANs).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SanError {
    #[error("peer certificate has {0} subjectAltName extensions; RFC 5280 allows one")]
    Duplicate(usize),
    #[error("peer certificate subjectAltName extension does not parse as DER: {0}")]
    Unparsable(String),
    #[error("peer certificate subjectAltName has an entry that does not parse (tag {tag})")]
    InvalidEntry { tag: u32 },
    /// `{name:?}`: the bytes are whatever the issuer signed.
    #[error("peer certificate {kind} SAN {name:?} holds a byte outside printable ASCII")]
    NotAscii { kind: &'static str, name: String },
}

/// The URI and DNS SANs of a certificate, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectAltNames {
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
}

/// Reads a certificate's URI and DNS SANs strictly; the one function every SAN reader shares.
///
/// No extension: no names. Refused: several extensions, an extension that does not parse
/// (x509-parser accepts DER only, so BER such as an indefinite length fails here), an entry
/// x509-parser marks invalid (a URI that is not UTF-8), and URI or DNS names with bytes outside
/// printable ASCII (IA5String; a URI has no spaces or control characters, RFC 3986).
pub fn subject_alt_names(cert: &X509Certificate<'_>) -> Result<SubjectAltNames, SanError> {
    let oid = x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;
    let count = cert.extensions().iter().filter(|e| e.oid == oid).count();
    if count > 1 {
        return Err(SanError::Duplicate(count));
    }
    let mut names = SubjectAltNames::default();
    let Some(ext) = cert.extensions().iter().find(|e| e.oid == oid) else {
        return Ok(names);
    };
    let san = match ext.parsed_extension() {
        ParsedExtension::SubjectAlternativeName(san) => san,
        ParsedExtension::ParseError { error } => {
            return Err(SanError::Unparsable(error.to_string()))
        }
        other => return Err(SanError::Unparsable(format!("{other:?}"))),
    };
    let printable = |s: &str| s.bytes().all(|b| (0x21..0x7f).contains(&b));
    for name in &san.general_names {
        match name {
            GeneralName::URI(u) if printable(u) => names.uris.push((*u).to_owned()),
            GeneralName::DNSName(d) if printable(d) => names.dns_names.push((*d).to_owned()),
            GeneralName::URI(u) => {
                return Err(SanError::NotAscii {
                    kind: "URI",
                    name: (*u).to_owned(),
                })
            }
            GeneralName::DNSName(d) => {
                return Err(SanError::NotAscii {
                    kind: "DNS",
                    name: (*d).to_owned(),
                })
            }
            GeneralName::Invalid(tag, _) => return Err(SanError::InvalidEntry { tag: tag.0 }),
            _ => {}
        }
    }
    Ok(names)
}

impl PeerCertificate {
    /// Reads a DER certificate (the leaf of an already verified chain).
    /// Fails on a certificate whose SPIFFE ID is malformed or not alone ([`spiffe_id`]).
    pub fn from_der(der: &[u8]) -> Result<Self, PeerCertError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PeerCertError::Unparsable(e.to_string()))?;
        let SubjectAltNames { uris, dns_names } =
            subject_alt_names(&cert).map_err(PeerCertError::MalformedSan)?;
        let identity = spiffe_id(&uris)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let sha256_hex = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            identity,
            uris,
            dns_names,
            subject: cert.subject().to_string(),
            sha256_hex,
        })
    }

    /// The principal for authorization, if the certificate names one.
    pub fn principal(&self) -> Option<String> {
        self.identity.as_ref().map(Identity::principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_follow_istio() {
        let cases = [
            ("spiffe://test.client", Some(("test.client", None))),
            (
                "spiffe://cluster.local/ns/default/sa/sleep",
                Some(("cluster.local/ns/default/sa/sleep", Some("default"))),
            ),
            (
                "spiffe://example.org/service/web",
                Some(("example.org/service/web", None)),
            ),
            ("spiffe:///ns/a/sa/b", None),
            ("https://test.client", None),
        ];
        for (uri, want) in cases {
            let got = Identity::from_uri(uri);
            match want {
                None => assert_eq!(got, None, "{uri}"),
                Some((principal, ns)) => {
                    let id = got.unwrap_or_else(|| panic!("{uri} should parse"));
                    assert_eq!(id.principal(), principal, "{uri}");
                    assert_eq!(id.namespace(), ns, "{uri}");
                    assert_eq!(id.uri(), uri);
                }
            }
        }
    }

    #[test]
    fn reads_uri_and_dns_sans_from_a_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["test.com".to_owned()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://cluster.local/ns/default/sa/sleep")
                .expect("ia5"),
        ));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let peer = PeerCertificate::from_der(cert.der()).expect("parse");
        assert_eq!(peer.dns_names, vec!["test.com"]);
        assert_eq!(
            peer.principal().as_deref(),
            Some("cluster.local/ns/default/sa/sleep")
        );
        assert_eq!(peer.sha256_hex.len(), 64);
    }

    fn cert_with_uris(uris: &[&str]) -> Result<PeerCertificate, PeerCertError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        for u in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(*u).expect("ia5"),
            ));
        }
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        PeerCertificate::from_der(cert.der())
    }

    /// The spellings an attacker with a certificate from the CA tried (attack review,
    /// issue 12): each was served as a principal other than `test.client`, or as none.
    #[test]
    fn malformed_spiffe_ids_are_refused_with_the_reason() {
        use SpiffeIdError as E;
        let cases: &[(&str, SpiffeIdError)] = &[
            ("SPIFFE://test.client", E::SchemeCase),
            ("Spiffe://test.client", E::SchemeCase),
            ("spiffe://TEST.CLIENT", E::TrustDomainCharacter('T')),
            (
                "spiffe://Test.client/ns/a/sa/b",
                E::TrustDomainCharacter('T'),
            ),
            ("spiffe://test.client.", E::EmptyLabel),
            ("spiffe://.test.client", E::EmptyLabel),
            ("spiffe://test..client", E::EmptyLabel),
            ("spiffe://test.client:443", E::Port),
            ("spiffe://test.client:", E::Port),
            ("spiffe://test.client?x", E::Query),
            ("spiffe://test.client/a?x=1", E::Query),
            ("spiffe://test.client#x", E::Fragment),
            ("spiffe://a@test.client", E::UserInfo),
            ("spiffe://@test.client", E::UserInfo),
            ("spiffe://test%2Eclient", E::PercentEncoded),
            ("spiffe://test.client/%61", E::PercentEncoded),
            ("spiffe://test.client/.", E::DotSegment),
            ("spiffe://test.client/..", E::DotSegment),
            ("spiffe://test.client/ns/../sa/x", E::DotSegment),
            ("spiffe://test.client/", E::EmptySegment),
            ("spiffe://test.client//x", E::EmptySegment),
            ("spiffe://test.client/x/", E::EmptySegment),
            ("spiffe://", E::EmptyTrustDomain),
            ("spiffe:///x", E::EmptyTrustDomain),
            ("spiffe:///ns/a/sa/b", E::EmptyTrustDomain),
            ("spiffe:test.client", E::NoAuthority),
            ("spiffe:/test.client", E::NoAuthority),
            (
                r"spiffe://test.client\0.evil",
                E::TrustDomainCharacter('\\'),
            ),
            (
                "spiffe://test.client\u{0}.evil",
                E::TrustDomainCharacter('\0'),
            ),
            ("spiffe://\u{0}test.client", E::TrustDomainCharacter('\0')),
            ("spiffe://test.client/a\tb", E::PathCharacter('\t')),
            ("spiffe://test.client/a b", E::PathCharacter(' ')),
            ("spiffe://test.client/a;b", E::PathCharacter(';')),
            ("spiffe://test.client/a\u{e9}", E::PathCharacter('\u{e9}')),
            (
                "spiffe://t\u{e9}st.client",
                E::TrustDomainCharacter('\u{e9}'),
            ),
            ("spiffe://test client", E::TrustDomainCharacter(' ')),
        ];
        for (uri, want) in cases {
            assert_eq!(Identity::parse(uri).as_ref(), Err(want), "{uri:?}");
            assert!(claims_spiffe(uri), "{uri:?} claims to be a SPIFFE ID");
        }
        let long = format!("spiffe://{}", "a".repeat(256));
        assert_eq!(
            Identity::parse(&long),
            Err(E::TooLong {
                max: MAX_TRUST_DOMAIN
            })
        );
        let long = format!("spiffe://td/{}", "a".repeat(2048));
        assert_eq!(Identity::parse(&long), Err(E::TooLong { max: MAX_URI }));
        // Valid ids in every shape the spec allows.
        for uri in [
            "spiffe://test.client",
            "spiffe://cluster.local/ns/default/sa/sleep",
            "spiffe://a-b_c.9/Path.With-Upper_9/x",
            "spiffe://td/..a/a..",
        ] {
            let id = Identity::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(id.uri(), uri);
        }
        for other in ["https://test.client", "spiffe-ish://x", " http://spiffe:"] {
            assert!(!claims_spiffe(other), "{other:?}");
        }
        assert!(claims_spiffe(" \u{1}SPIFFE://x"));
    }

    #[test]
    fn a_certificate_with_a_bad_or_second_spiffe_id_is_refused() {
        // One spiffe SAN beside other URIs: today's behaviour, the spiffe one is the principal.
        let peer = cert_with_uris(&[
            "https://not.an.identity/",
            "spiffe://cluster.local/ns/a/sa/first",
            "urn:x:y",
        ])
        .expect("one SPIFFE id");
        assert_eq!(
            peer.principal().as_deref(),
            Some("cluster.local/ns/a/sa/first")
        );
        assert_eq!(
            peer.uris[0], "https://not.an.identity/",
            "XFCC keeps uris[0]"
        );
        for uris in [
            &[
                "spiffe://cluster.local/ns/a/sa/b",
                "spiffe://cluster.local/ns/b/sa/c",
            ][..],
            &["spiffe://test.client", "SPIFFE://test.client"],
            &["spiffe://test.client", "spiffe://test.client"],
        ] {
            assert!(
                matches!(
                    cert_with_uris(uris),
                    Err(PeerCertError::SeveralSpiffeIds { count: 2 })
                ),
                "{uris:?}"
            );
        }
        // A malformed id first is not skipped in favour of a good one after it.
        for bad in ["spiffe://", "spiffe:///x", "SPIFFE://test.client"] {
            let got = cert_with_uris(&[bad, "https://x"]);
            assert!(
                matches!(&got, Err(PeerCertError::InvalidSpiffeId { uri, .. }) if uri == bad),
                "{bad}: {got:?}"
            );
        }
        assert!(cert_with_uris(&["spiffe://", "spiffe://test.client"]).is_err());
        // Non-spiffe URIs alone: authenticated, no principal, as before.
        let peer = cert_with_uris(&["https://test.client", "urn:uuid:1"]).expect("no spiffe");
        assert_eq!(peer.principal(), None);
    }

    #[test]
    fn a_certificate_without_spiffe_uri_has_no_principal() {
        let params = rcgen::CertificateParams::new(vec!["test.com".to_owned()]).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let peer = PeerCertificate::from_der(cert.der()).expect("parse");
        assert_eq!(peer.identity, None);
        assert_eq!(peer.principal(), None);
    }

    /// Subject alternative names OpenSSL reads as `URI:spiffe://test.client` but x509-parser
    /// does not (attack review, issue 12): refused, never read as "no names".
    #[test]
    fn sans_that_do_not_parse_strictly_are_refused() {
        use crate::tls::testing::{leaf_with_raw_sans, raw_sans, test_ca};
        let ca = test_ca("SAN CA");
        let read = |sans: &[&[u8]], serial| {
            PeerCertificate::from_der(&leaf_with_raw_sans(&ca, sans, serial).der)
        };
        let control = read(&[raw_sans::DER], 1).expect("DER SAN");
        assert_eq!(control.principal().as_deref(), Some("test.client"));

        let refused: &[(&str, &[&[u8]])] = &[
            ("BER indefinite length", &[raw_sans::BER_INDEFINITE]),
            ("URI not UTF-8", &[raw_sans::NOT_UTF8]),
            ("second URI not UTF-8", &[raw_sans::SECOND_NOT_UTF8]),
            ("URI not ASCII", &[raw_sans::NOT_ASCII]),
            ("two SAN extensions", &[raw_sans::DER, raw_sans::OTHER]),
        ];
        for (i, (what, sans)) in refused.iter().enumerate() {
            let got = read(sans, 10 + i as u64);
            assert!(
                matches!(got, Err(PeerCertError::MalformedSan(_))),
                "{what}: {got:?}"
            );
        }
    }
}
