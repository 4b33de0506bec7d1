//! Certificate revocation lists for MUTUAL servers (Istio's `ca.crl`).
//!
//! Operators make CRLs with `openssl ca -revoke` then `openssl ca -gencrl`, in PEM or DER. With
//! the usual CA configuration (no `crlnumber` file) that gives a **version 1** CRL, which
//! rustls-webpki refuses to parse (it supports RFC 5280 v2 CRLs only). So every CRL is read
//! here with x509-parser, its signature checked against a certificate of `ca.crt` when the
//! configuration is loaded, and the client's certificate looked up in it after the chain is
//! verified ([`super::client_auth`]). Version 2 CRLs are also handed to rustls'
//! `WebPkiClientVerifier::with_crls`, which checks them with webpki's stricter rules
//! (issuing distribution points, CRLs signed by intermediates).
//!
//! What Envoy does with a CRL configured (OpenSSL's `X509_V_FLAG_CRL_CHECK`) is kept: a client
//! certificate whose issuer has no CRL in the list is refused — the status is unknown, and an
//! unknown status fails closed.

use std::collections::BTreeSet;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::X509Version;

/// What was wrong with a CRL file (`ca.crl`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error(
        "ca.crl: no CRL found (expected PEM `-----BEGIN X509 CRL-----` blocks or one DER CRL)"
    )]
    Empty,
    #[error("ca.crl: not valid PEM: {reason}")]
    BadPem { reason: String },
    #[error("ca.crl: CRL #{index} cannot be parsed: {reason}")]
    Unparsable { index: usize, reason: String },
    #[error("ca.crl: CRL #{index} (issuer {issuer:?}) is not signed by a certificate of ca.crt: {reason}")]
    UntrustedIssuer {
        index: usize,
        issuer: String,
        reason: String,
    },
    #[error("ca.crl: CRL #{index} is rejected by webpki: {reason}")]
    Rejected { index: usize, reason: String },
}

/// Why a client certificate is refused by the revocation lists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    #[error("certificate serial {serial} is revoked by the CRL of {issuer:?}")]
    Revoked { serial: String, issuer: String },
    #[error("no CRL for the certificate's issuer {issuer:?}: revocation status unknown")]
    UnknownStatus { issuer: String },
    /// As OpenSSL (`X509_V_ERR_CRL_HAS_EXPIRED`): a CRL past its nextUpdate says nothing.
    #[error("the CRL of {issuer:?} expired (nextUpdate {next_update}): revocation status unknown")]
    Expired { issuer: String, next_update: String },
}

/// One parsed CRL: who issued it and which serials it revokes.
#[derive(Clone, Debug)]
struct Crl {
    /// The issuer's DER-encoded name, compared byte for byte with a certificate's issuer.
    issuer_raw: Vec<u8>,
    issuer: String,
    /// nextUpdate, seconds since the Unix epoch, and as printed.
    next_update: Option<(i64, String)>,
    /// Revoked serial numbers, big-endian without leading zero bytes.
    serials: BTreeSet<Vec<u8>>,
}

/// Every CRL of one credential, checked when the configuration was loaded.
#[derive(Clone, Debug, Default)]
pub struct RevocationLists {
    crls: Vec<Crl>,
    /// The v2 CRLs, for rustls' own revocation checks.
    webpki: Vec<CertificateRevocationListDer<'static>>,
}

fn normalize_serial(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw[start..].to_vec()
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "00".to_owned();
    }
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

impl RevocationLists {
    /// Parses `bytes` (PEM blocks or one DER CRL) and checks each CRL's signature against
    /// the certificates of `ca` (the credential's `ca.crt`).
    pub fn parse(bytes: &[u8], ca: &[CertificateDer<'_>]) -> Result<Self, CrlError> {
        let ders: Vec<CertificateRevocationListDer<'static>> =
            if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                rustls_pemfile::crls(&mut &bytes[..])
                    .collect::<Result<_, _>>()
                    .map_err(|e| CrlError::BadPem {
                        reason: e.to_string(),
                    })?
            } else if bytes.iter().all(u8::is_ascii_whitespace) {
                Vec::new()
            } else {
                vec![CertificateRevocationListDer::from(bytes.to_vec())]
            };
        if ders.is_empty() {
            return Err(CrlError::Empty);
        }
        let cas: Vec<X509Certificate<'_>> = ca
            .iter()
            .filter_map(|c| X509Certificate::from_der(c.as_ref()).ok().map(|(_, c)| c))
            .collect();
        let mut out = Self::default();
        for (i, der) in ders.into_iter().enumerate() {
            let index = i + 1;
            let (rest, crl) = CertificateRevocationList::from_der(der.as_ref()).map_err(|e| {
                CrlError::Unparsable {
                    index,
                    reason: e.to_string(),
                }
            })?;
            if !rest.is_empty() {
                return Err(CrlError::Unparsable {
                    index,
                    reason: format!("{} bytes of trailing data", rest.len()),
                });
            }
            let issuer = crl.issuer().to_string();
            let issuer_raw = crl.issuer().as_raw().to_vec();
            let signer = cas.iter().find(|c| c.subject().as_raw() == issuer_raw);
            let v2 = crl.version() == Some(X509Version::V2);
            match signer {
                Some(ca) => crl.verify_signature(ca.public_key()).map_err(|e| {
                    CrlError::UntrustedIssuer {
                        index,
                        issuer: issuer.clone(),
                        reason: format!("signature does not verify: {e}"),
                    }
                })?,
                // A v2 CRL of an intermediate CA is checked by webpki against the chain the
                // client presents; a v1 CRL can only be checked here.
                None if v2 => {}
                None => {
                    return Err(CrlError::UntrustedIssuer {
                        index,
                        issuer,
                        reason: "no certificate of ca.crt has this subject".to_owned(),
                    })
                }
            }
            let serials = crl
                .iter_revoked_certificates()
                .map(|r| normalize_serial(r.raw_serial()))
                .collect();
            let next_update = crl.next_update().map(|t| (t.timestamp(), t.to_string()));
            out.crls.push(Crl {
                issuer_raw,
                issuer,
                next_update,
                serials,
            });
            if v2 {
                out.webpki.push(der);
            }
        }
        Ok(out)
    }

    /// The v2 CRLs, for `WebPkiClientVerifier::builder(..).with_crls(..)`.
    pub fn webpki_crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.webpki.clone()
    }

    /// Whether `leaf` (already verified to chain to `ca.crt`) is revoked at `now` (seconds
    /// since the Unix epoch).
    pub fn check(&self, leaf: &X509Certificate<'_>, now: i64) -> Result<(), RevocationError> {
        let issuer_raw = leaf.issuer().as_raw();
        let mut known = false;
        let serial = normalize_serial(leaf.raw_serial());
        for crl in self.crls.iter().filter(|c| c.issuer_raw == issuer_raw) {
            if let Some((at, printed)) = &crl.next_update {
                if now > *at {
                    return Err(RevocationError::Expired {
                        issuer: crl.issuer.clone(),
                        next_update: printed.clone(),
                    });
                }
            }
            known = true;
            if crl.serials.contains(&serial) {
                return Err(RevocationError::Revoked {
                    serial: hex(&serial),
                    issuer: crl.issuer.clone(),
                });
            }
        }
        if known {
            Ok(())
        } else {
            Err(RevocationError::UnknownStatus {
                issuer: leaf.issuer().to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::{crl_pem, test_ca, TestCa};
    use rcgen::{CertificateParams, KeyPair, SerialNumber};

    fn leaf(ca: &TestCa, serial: u64) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["client.test".to_owned()]).expect("params");
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().expect("key");
        params
            .signed_by(&key, &ca.issuer)
            .expect("leaf")
            .der()
            .to_vec()
    }

    fn check(lists: &RevocationLists, der: &[u8]) -> Result<(), RevocationError> {
        let (_, cert) = X509Certificate::from_der(der).expect("parse");
        lists.check(&cert, time::OffsetDateTime::now_utc().unix_timestamp())
    }

    #[test]
    fn an_expired_crl_fails_closed() {
        let ca = test_ca("CRL CA");
        let lists = RevocationLists::parse(crl_pem(&ca, &[]).as_bytes(), &[ca.cert.der().clone()])
            .expect("crl");
        let der = leaf(&ca, 3);
        let (_, cert) = X509Certificate::from_der(&der).expect("parse");
        let in_a_year = time::OffsetDateTime::now_utc().unix_timestamp() + 365 * 86_400;
        assert!(matches!(
            lists.check(&cert, in_a_year),
            Err(RevocationError::Expired { .. })
        ));
    }

    #[test]
    fn revoked_serials_are_refused_and_others_pass() {
        let ca = test_ca("CRL CA");
        let lists = RevocationLists::parse(
            crl_pem(&ca, &[2, 0x80]).as_bytes(),
            &[ca.cert.der().clone()],
        )
        .expect("crl");
        assert!(matches!(
            check(&lists, &leaf(&ca, 2)),
            Err(RevocationError::Revoked { .. })
        ));
        // 0x80 is DER-encoded with a leading zero byte in the certificate: still matched.
        assert!(matches!(
            check(&lists, &leaf(&ca, 0x80)),
            Err(RevocationError::Revoked { .. })
        ));
        assert_eq!(check(&lists, &leaf(&ca, 3)), Ok(()));
        assert_eq!(lists.webpki_crls().len(), 1, "rcgen makes v2 CRLs");
    }

    #[test]
    fn der_crls_work_like_pem() {
        let ca = test_ca("CRL CA");
        let pem = crl_pem(&ca, &[7]);
        let der = rustls_pemfile::crls(&mut pem.as_bytes())
            .next()
            .expect("one")
            .expect("pem");
        let lists =
            RevocationLists::parse(der.as_ref(), &[ca.cert.der().clone()]).expect("der crl");
        assert!(check(&lists, &leaf(&ca, 7)).is_err());
    }

    #[test]
    fn a_certificate_from_an_issuer_without_crl_has_unknown_status() {
        let ca = test_ca("CRL CA");
        let other = test_ca("Other CA");
        let lists = RevocationLists::parse(
            crl_pem(&ca, &[]).as_bytes(),
            &[ca.cert.der().clone(), other.cert.der().clone()],
        )
        .expect("crl");
        assert!(matches!(
            check(&lists, &leaf(&other, 1)),
            Err(RevocationError::UnknownStatus { .. })
        ));
    }

    #[test]
    fn bad_crls_are_errors() {
        let ca = test_ca("CRL CA");
        let roots = [ca.cert.der().clone()];
        assert_eq!(
            RevocationLists::parse(b"", &roots).err(),
            Some(CrlError::Empty)
        );
        assert!(matches!(
            RevocationLists::parse(b"\x30\x03garbage", &roots),
            Err(CrlError::Unparsable { index: 1, .. })
        ));
        let mangled = "-----BEGIN X509 CRL-----\nMIIBmzCBhAIBATANBgkqhkiG9w0BAQsFADA=\n-----END X509 CRL-----\n";
        assert!(matches!(
            RevocationLists::parse(mangled.as_bytes(), &roots),
            Err(CrlError::Unparsable { .. })
        ));
        // A CRL signed by a CA that ca.crt does not hold.
        let stranger = test_ca("CRL CA");
        assert!(matches!(
            RevocationLists::parse(crl_pem(&stranger, &[1]).as_bytes(), &roots),
            Err(CrlError::UntrustedIssuer { .. })
        ));
    }
}
