//! Istio's `tls.cipherSuites` → rustls cipher suites.
//!
//! Istio passes the list to Envoy, which takes OpenSSL/BoringSSL names
//! (`ECDHE-ECDSA-AES128-GCM-SHA256`) and `[A|B]` equal-preference groups; IANA names
//! (`TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`) are accepted too. As in Envoy, the list
//! governs TLS 1.2; TLS 1.3 suites stay on unless the list names some (by IANA name), and
//! then only those are offered. A name rustls does not implement (CBC, RSA key exchange,
//! 3DES…) is an error, never dropped: a list that silently lost an entry is not the
//! operator's list.

use rustls::SupportedCipherSuite;

use super::provider;

/// A cipher suite name that rustls does not offer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cipher suite {name:?} is not available (supported: {supported})")]
pub struct UnknownCipherSuite {
    pub name: String,
    pub supported: String,
}

/// OpenSSL names of the suites rustls implements, with their IANA names.
const OPENSSL_NAMES: &[(&str, &str)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// The IANA name (rustls spells the TLS 1.3 ones `TLS13_…`).
fn iana_name(suite: &SupportedCipherSuite) -> String {
    let debug = format!("{:?}", suite.suite());
    match debug.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => debug,
    }
}

/// The suites to offer for `names` (empty: rustls' defaults), in the listed order.
pub fn cipher_suites(names: &[String]) -> Result<Vec<SupportedCipherSuite>, UnknownCipherSuite> {
    let all = provider().cipher_suites;
    if names.is_empty() {
        return Ok(all);
    }
    let mut tls12 = Vec::new();
    let mut tls13 = Vec::new();
    // `[A|B]` is one group of equally preferred suites; rustls has no equal preference, so
    // a group is taken in its written order.
    let flat = names.iter().flat_map(|n| {
        n.trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split('|')
            .map(str::trim)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    });
    for name in flat {
        let iana = OPENSSL_NAMES
            .iter()
            .find(|(openssl, _)| openssl.eq_ignore_ascii_case(&name))
            .map_or(name.clone(), |(_, iana)| (*iana).to_owned());
        let Some(suite) = all
            .iter()
            .find(|s| iana_name(s).eq_ignore_ascii_case(&iana))
        else {
            return Err(UnknownCipherSuite {
                name,
                supported: OPENSSL_NAMES
                    .iter()
                    .map(|(o, _)| *o)
                    .map(str::to_owned)
                    .chain(
                        all.iter()
                            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
                            .map(iana_name),
                    )
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let list = match suite {
            SupportedCipherSuite::Tls12(_) => &mut tls12,
            SupportedCipherSuite::Tls13(_) => &mut tls13,
        };
        if !list
            .iter()
            .any(|s: &SupportedCipherSuite| s.suite() == suite.suite())
        {
            list.push(*suite);
        }
    }
    if tls13.is_empty() {
        tls13 = all
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .copied()
            .collect();
    }
    Ok(tls13.into_iter().chain(tls12).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(suites: &[SupportedCipherSuite]) -> Vec<String> {
        suites.iter().map(iana_name).collect()
    }

    #[test]
    fn openssl_and_iana_names_map_to_the_same_suite() {
        let a = cipher_suites(&["ECDHE-ECDSA-AES128-GCM-SHA256".into()]).expect("openssl");
        let b = cipher_suites(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()]).expect("iana");
        assert_eq!(names(&a), names(&b));
        let tls12: Vec<_> = a
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .collect();
        assert_eq!(tls12.len(), 1, "only the listed TLS 1.2 suite");
        assert!(
            a.iter()
                .any(|s| matches!(s, SupportedCipherSuite::Tls13(_))),
            "TLS 1.3 suites stay on when none is listed, as in Envoy"
        );
    }

    #[test]
    fn envoy_groups_and_tls13_names_are_understood() {
        let s = cipher_suites(&[
            "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]".into(),
            "TLS_AES_256_GCM_SHA384".into(),
        ])
        .expect("group");
        assert_eq!(
            names(&s),
            vec![
                "TLS_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
    }

    #[test]
    fn suites_rustls_lacks_are_errors_naming_them() {
        for bad in [
            "AES128-SHA",
            "ECDHE-RSA-AES128-SHA",
            "DES-CBC3-SHA",
            "nonsense",
        ] {
            let err = cipher_suites(&["ECDHE-RSA-AES128-GCM-SHA256".to_owned(), bad.to_owned()])
                .expect_err(bad);
            assert_eq!(err.name, bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
