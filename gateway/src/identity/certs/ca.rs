//! The issuing CA: made fresh, or loaded from a certificate and key an operator already has.

use rcgen::string::{Ia5String, PrintableString, TeletexString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose,
};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

use super::{base_params, keys, CertsError, KeyType};

/// The common name of the CA `portcullis certs` makes.
pub const DEMO_CA_NAME: &str = "Portcullis Demo CA";

/// A CA that can sign certificates: its certificate and signing key.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    /// Shows the certificate, never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA named `common_name`: `basicConstraints` CA:true (critical),
    /// keyUsage keyCertSign+cRLSign, a new key of `key_type`, valid for `days`.
    ///
    /// # Errors
    /// A validity out of range, or a key or signing failure.
    pub fn generate(common_name: &str, key_type: KeyType, days: u32) -> Result<Self, CertsError> {
        let key = keys::generate(key_type)?;
        let mut params = base_params(common_name, days)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertsError::Sign {
                what: "CA certificate",
                source,
            })?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// A CA from a PEM certificate and its unencrypted PKCS#8 PEM key, such as the
    /// `cacert.pem`/`cakey.pem` of the openssl walkthrough.
    ///
    /// Certificates it signs name the CA exactly as its certificate does (same attribute
    /// string types), because rustls compares issuer and subject names byte for byte.
    ///
    /// # Errors
    /// [`CertsError::BadCaCert`] when the certificate is not PEM X.509, is not a CA, may not sign
    /// certificates, or has a subject rcgen cannot reproduce; [`CertsError::BadCaKey`] when the
    /// key cannot be read or does not belong to the certificate.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, CertsError> {
        let bad_cert = |reason: String| CertsError::BadCaCert { reason };
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| bad_cert(format!("not PEM: {e}")))?;
        if pem.label != "CERTIFICATE" {
            return Err(bad_cert(format!(
                "PEM block is {:?}, expected \"CERTIFICATE\"",
                pem.label
            )));
        }
        let cert = pem
            .parse_x509()
            .map_err(|e| bad_cert(format!("not X.509: {e}")))?;
        check_is_ca(&cert).map_err(bad_cert)?;

        let key = KeyPair::from_pem(key_pem).map_err(|e| CertsError::BadCaKey {
            reason: format!(
                "{e}; expected an unencrypted PKCS#8 key (BEGIN PRIVATE KEY), which \
                 `openssl pkcs8 -topk8 -nocrypt` converts to"
            ),
        })?;
        if key.public_key_raw() != cert.public_key().subject_public_key.as_ref() {
            return Err(CertsError::BadCaKey {
                reason: "does not match the CA certificate's public key".to_owned(),
            });
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(cert.subject()).map_err(bad_cert)?;
        // Authority key identifiers must repeat the CA's own subject key identifier.
        if let Some(ski) = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
        {
            params.key_identifier_method = KeyIdMethod::PreSpecified(ski);
        }
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub(super) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

/// A CA certificate has basicConstraints CA:true and, when it limits key usage, keyCertSign.
fn check_is_ca(cert: &X509Certificate<'_>) -> Result<(), String> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return Err("not a CA: basicConstraints CA:true is missing".to_owned()),
        Err(e) => return Err(format!("basicConstraints: {e}")),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            Err("keyUsage does not allow keyCertSign".to_owned())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("keyUsage: {e}")),
    }
}

/// The subject as rcgen will write it, keeping each attribute's string type.
fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err("subject has a multi-valued RDN, which cannot be reproduced".to_owned());
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| {
                format!(
                    "subject attribute {} has an oversized OID",
                    attr.attr_type()
                )
            })?
            .collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            // rcgen keeps one value per attribute type.
            return Err(format!("subject repeats attribute {}", attr.attr_type()));
        }
        let value = attr.attr_value();
        let unreadable = || {
            format!(
                "subject attribute {} is not readable text",
                attr.attr_type()
            )
        };
        let text = std::str::from_utf8(value.data).map_err(|_| unreadable())?;
        let value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => {
                DnValue::PrintableString(PrintableString::try_from(text).map_err(|_| unreadable())?)
            }
            Tag::Ia5String => {
                DnValue::Ia5String(Ia5String::try_from(text).map_err(|_| unreadable())?)
            }
            Tag::T61String => {
                DnValue::TeletexString(TeletexString::try_from(text).map_err(|_| unreadable())?)
            }
            other => {
                return Err(format!(
                    "subject attribute {} has string type {other}, which is not supported",
                    attr.attr_type()
                ))
            }
        };
        dn.push(ty, value);
    }
    Ok(dn)
}
