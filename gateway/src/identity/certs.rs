//! Certificate issuing with rcgen, so a user does not need the openssl walkthrough.
//!
//! [`issue_demo_set`] writes the walkthrough's CA, server and client certificates (and a
//! `credentialName` directory per server host); [`Ca`] and [`issue_workload_cert`] are the
//! pieces a built-in CA reuses.
//!
//! The certificates carry the extensions `make-certs.sh` gives them: the CA has
//! `basicConstraints` CA:true (critical) and keyUsage keyCertSign+cRLSign; leaves have CA:false,
//! keyUsage digitalSignature+keyEncipherment and no extendedKeyUsage, so they work as server and
//! as client certificates alike.

mod ca;
pub mod cli;
mod demo;
mod keys;

use std::net::IpAddr;
use std::path::PathBuf;

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DnType, IsCa, KeyUsagePurpose, SanType};
use time::{Duration, OffsetDateTime};

pub use ca::{Ca, DEMO_CA_NAME};
pub use demo::{issue_demo_set, IssueRequest, IssuedFiles};

/// Longest validity we issue; beyond it dates stop being meaningful for a demo.
pub const MAX_DAYS: u32 = 36_500;

/// Certificates start a little in the past so a peer whose clock runs slightly behind ours
/// does not see them as not yet valid.
const BACKDATE: Duration = Duration::minutes(5);

/// The key algorithm of issued certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: small, fast, generated in process.
    #[default]
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    /// RSA 2048 with SHA-256, like the openssl walkthrough. The `ring` backend cannot generate
    /// RSA keys, so the key is made by the `openssl` CLI, which must be on `PATH`.
    #[value(name = "rsa-2048")]
    Rsa2048,
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Rsa2048 => "rsa-2048",
        })
    }
}

/// What went wrong while issuing or loading certificates; each variant names the input, file or
/// field at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A file or directory could not be created, written or inspected.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file to be written exists and overwriting was not asked for.
    #[error("{path} already exists; refusing to overwrite it (use --force to replace the set)")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A server host is not a DNS name or IP address.
    #[error("server host {host:?}: {reason}")]
    InvalidHost {
        /// The host as given.
        host: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A SPIFFE id is malformed.
    #[error("SPIFFE id {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The id as given.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The demo set needs at least one server host.
    #[error("no server host given; the server certificate needs at least one DNS name")]
    NoServerHost,
    /// The validity is zero or longer than [`MAX_DAYS`].
    #[error("validity of {days} days: must be between 1 and {MAX_DAYS}")]
    InvalidDays {
        /// The validity as given.
        days: u32,
    },
    /// rcgen could not generate a key of this type.
    #[error("generating a {key_type} key: {source}")]
    KeyGeneration {
        /// The key type asked for.
        key_type: KeyType,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// RSA keys come from the openssl CLI, which could not be started.
    #[error(
        "generating an RSA key needs the `openssl` command (rcgen's ring backend cannot \
             make RSA keys); install openssl or use --key-type ecdsa-p256: {source}"
    )]
    OpensslMissing {
        /// Why `openssl` could not be run.
        source: std::io::Error,
    },
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The openssl CLI ran but did not produce a key.
    #[error("`openssl genpkey` failed ({status}): {stderr}")]
    OpensslFailed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// rcgen refused to build or sign a certificate.
    #[error("signing the {what}: {source}")]
    Sign {
        /// Which certificate: "CA certificate", "server certificate", …
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The CA certificate given to [`Ca::load`] is unusable.
    #[error("CA certificate: {reason}")]
    BadCaCert {
        /// What is wrong with it.
        reason: String,
    },
    /// The CA private key given to [`Ca::load`] is unusable.
    #[error("CA private key: {reason}")]
    BadCaKey {
        /// What is wrong with it.
        reason: String,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// Its PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    /// Leaves the private key out, so it never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// Issues a workload certificate signed by `ca`: URI SAN `spiffe_id`, DNS SANs `dns`, a new key
/// of `key_type`, valid for `days`.
///
/// # Errors
/// A malformed SPIFFE id or DNS name, a validity out of range, or a key or signing failure.
pub fn issue_workload_cert(
    ca: &Ca,
    spiffe_id: &str,
    dns: &[String],
    key_type: KeyType,
    days: u32,
) -> Result<IssuedCert, CertsError> {
    let mut sans = vec![spiffe_san(spiffe_id)?];
    for host in dns {
        sans.push(host_san(host)?);
    }
    // Istio's workload certificates have no subject; a CN naming the identity makes `openssl x509
    // -text` readable without changing how peers match (they read the URI SAN).
    let cn = spiffe_id.trim_start_matches("spiffe://");
    issue_leaf(ca, "workload certificate", cn, sans, key_type, days)
}

/// Signs a leaf certificate with the walkthrough's extensions.
fn issue_leaf(
    ca: &Ca,
    what: &'static str,
    common_name: &str,
    sans: Vec<SanType>,
    key_type: KeyType,
    days: u32,
) -> Result<IssuedCert, CertsError> {
    let key = keys::generate(key_type)?;
    let mut params = base_params(common_name, days)?;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, ca.issuer())
        .map_err(|source| CertsError::Sign { what, source })?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Subject, validity and a random serial: what every certificate we issue shares.
fn base_params(common_name: &str, days: u32) -> Result<CertificateParams, CertsError> {
    if days == 0 || days > MAX_DAYS {
        return Err(CertsError::InvalidDays { days });
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Portcullis");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
    params.serial_number = Some(keys::random_serial()?);
    Ok(params)
}

/// A DNS (or, when it parses as one, IP address) SAN. Hosts also name credential directories,
/// so anything that could escape `out_dir` is refused here.
fn host_san(host: &str) -> Result<SanType, CertsError> {
    let invalid = |reason| CertsError::InvalidHost {
        host: host.to_owned(),
        reason,
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if host.is_empty() || host.len() > 253 {
        return Err(invalid("must be 1 to 253 characters"));
    }
    let labels = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !labels.split('.').all(label_ok) {
        return Err(invalid(
            "not a DNS name (letters, digits and '-' in dot-separated labels, optionally '*.' first)",
        ));
    }
    Ia5String::try_from(host)
        .map(SanType::DnsName)
        .map_err(|_| invalid("not ASCII"))
}

/// A SPIFFE id as a URI SAN: `spiffe://<trust domain>[/<path>]`, per the SPIFFE-ID spec's
/// character rules, since peers match on the exact string.
fn spiffe_san(id: &str) -> Result<SanType, CertsError> {
    let invalid = |reason| CertsError::InvalidSpiffeId {
        id: id.to_owned(),
        reason,
    };
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| invalid("must start with spiffe://"))?;
    let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if trust_domain.is_empty() {
        return Err(invalid("the trust domain is empty"));
    }
    if !trust_domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err(invalid(
            "the trust domain may hold only lower-case letters, digits, '-', '.' and '_'",
        ));
    }
    if !path.is_empty()
        && !path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        })
    {
        return Err(invalid(
            "path segments must be non-empty, not '.' or '..', and hold only letters, digits, '-', '.' and '_'",
        ));
    }
    Ia5String::try_from(id)
        .map(SanType::URI)
        .map_err(|_| invalid("not ASCII"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;
    use std::process::Command;

    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::pem::Pem;

    use super::*;

    fn pem_of(path: &Path) -> Pem {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).expect("PEM");
        pem
    }

    fn with_cert<T>(pem: &Pem, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
        f(&pem.parse_x509().expect("X.509"))
    }

    fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
        let san = cert
            .subject_alternative_name()
            .expect("SAN ext")
            .expect("SAN present");
        san.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn ski(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
        cert.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
    }

    fn aki(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
        cert.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
    }

    /// A leaf with the walkthrough's extensions, issued by `ca` (signatures are checked by the
    /// tests that run `openssl verify`).
    fn assert_leaf_of(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>) {
        let bc = leaf.basic_constraints().expect("bc").expect("bc present");
        assert!(!bc.value.ca);
        let ku = leaf.key_usage().expect("ku").expect("ku present");
        assert!(ku.value.digital_signature() && ku.value.key_encipherment());
        assert!(!ku.value.key_cert_sign());
        assert!(
            leaf.extended_key_usage().expect("eku").is_none(),
            "no EKU, like openssl"
        );
        assert_eq!(
            leaf.issuer().as_raw(),
            ca.subject().as_raw(),
            "issuer name bytes = CA subject"
        );
        assert_eq!(aki(leaf), ski(ca));
    }

    fn request(dir: &Path) -> IssueRequest {
        IssueRequest {
            out_dir: dir.to_owned(),
            ..IssueRequest::default()
        }
    }

    fn openssl_verify(dir: &Path, ca: &str, leaves: &[&str]) -> std::process::Output {
        Command::new("openssl")
            .current_dir(dir)
            .args(["verify", "-CAfile", ca])
            .args(leaves)
            .output()
            .expect("run openssl")
    }

    #[test]
    fn demo_set_matches_the_walkthrough() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = issue_demo_set(&request(dir.path())).expect("issue");

        let ca_pem = pem_of(&files.ca_cert);
        with_cert(&ca_pem, |ca| {
            let bc = ca.basic_constraints().expect("bc").expect("bc present");
            assert!(bc.critical && bc.value.ca);
            let ku = ca.key_usage().expect("ku").expect("ku present");
            assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
            assert!(!ku.value.digital_signature());
            let cn = ca.subject().iter_common_name().next().expect("CN");
            assert_eq!(cn.as_str().expect("CN text"), DEMO_CA_NAME);
            assert_eq!(ca.issuer().as_raw(), ca.subject().as_raw(), "self-issued");
            assert!(ski(ca).is_some());

            with_cert(&pem_of(&files.server_cert), |server| {
                assert_eq!(sans(server), ["DNS:test.com"]);
                assert_leaf_of(server, ca);
            });
            with_cert(&pem_of(&files.client_cert), |client| {
                assert_eq!(sans(client), ["URI:spiffe://test.client"]);
                assert_leaf_of(client, ca);
            });
        });

        let cred = dir.path().join("test.com");
        assert_eq!(files.credential_dirs, std::slice::from_ref(&cred));
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(read(&cred.join("tls.crt")), read(&files.server_cert));
        assert_eq!(read(&cred.join("tls.key")), read(&files.server_key));
        assert_eq!(read(&cred.join("ca.crt")), read(&files.ca_cert));
        for key in [
            &files.ca_key,
            &files.server_key,
            &files.client_key,
            &cred.join("tls.key"),
        ] {
            let mode = std::fs::metadata(key).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
            assert!(String::from_utf8(read(key))
                .expect("text")
                .starts_with("-----BEGIN PRIVATE KEY-----"));
        }
    }

    #[test]
    fn openssl_verifies_server_and_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        issue_demo_set(&request(dir.path())).expect("issue");
        let out = openssl_verify(
            dir.path(),
            "cacert.pem",
            &["servercert.pem", "clientcert.pem"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "openssl verify: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout, "servercert.pem: OK\nclientcert.pem: OK\n");
    }

    #[test]
    fn rsa_2048_set_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let req = IssueRequest {
            key_type: KeyType::Rsa2048,
            ..request(dir.path())
        };
        let files = issue_demo_set(&req).expect("issue");
        with_cert(&pem_of(&files.server_cert), |server| {
            let key = server.public_key().parsed().expect("public key");
            assert_eq!(key.key_size(), 2048);
        });
        let out = openssl_verify(
            dir.path(),
            "cacert.pem",
            &["servercert.pem", "clientcert.pem"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn validity_follows_days() {
        let dir = tempfile::tempdir().expect("tempdir");
        let req = IssueRequest {
            days: 30,
            ..request(dir.path())
        };
        let files = issue_demo_set(&req).expect("issue");
        with_cert(&pem_of(&files.client_cert), |cert| {
            let v = cert.validity();
            let span = v.not_after.timestamp() - v.not_before.timestamp();
            assert_eq!(span, 30 * 86_400 + BACKDATE.whole_seconds());
            assert!(v.is_valid());
        });
    }

    #[test]
    fn several_hosts_share_one_server_cert() {
        let dir = tempfile::tempdir().expect("tempdir");
        let req = IssueRequest {
            server_hosts: vec![
                "test.com".into(),
                "*.mesh.local".into(),
                "10.0.0.1".into(),
                "test.com".into(),
            ],
            ..request(dir.path())
        };
        let files = issue_demo_set(&req).expect("issue");
        with_cert(&pem_of(&files.server_cert), |server| {
            assert_eq!(
                sans(server),
                ["DNS:test.com", "DNS:*.mesh.local", "IP:[10, 0, 0, 1]"]
            );
        });
        assert_eq!(files.credential_dirs.len(), 3);
        assert!(dir.path().join("*.mesh.local/tls.crt").is_file());
    }

    #[test]
    fn refuses_to_overwrite_unless_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = issue_demo_set(&request(dir.path())).expect("issue");
        let before = std::fs::read(&files.ca_cert).expect("read");

        match issue_demo_set(&request(dir.path())) {
            Err(CertsError::AlreadyExists { path }) => assert_eq!(path, files.ca_cert),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&files.ca_cert).expect("read"),
            before,
            "untouched"
        );

        // A key left world-readable must not keep that mode when replaced.
        std::fs::set_permissions(&files.server_key, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let forced = IssueRequest {
            force: true,
            ..request(dir.path())
        };
        issue_demo_set(&forced).expect("forced issue");
        assert_ne!(
            std::fs::read(&files.ca_cert).expect("read"),
            before,
            "replaced"
        );
        let mode = std::fs::metadata(&files.server_key)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn bad_input_is_named_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let with = |f: fn(&mut IssueRequest)| {
            let mut req = request(dir.path());
            f(&mut req);
            issue_demo_set(&req).expect_err("must fail")
        };
        let err = with(|r| r.server_hosts = vec!["../etc".into()]);
        assert!(
            matches!(&err, CertsError::InvalidHost { host, .. } if host == "../etc"),
            "{err}"
        );
        assert!(matches!(
            with(|r| r.server_hosts = vec!["a b".into()]),
            CertsError::InvalidHost { .. }
        ));
        assert!(matches!(
            with(|r| r.server_hosts.clear()),
            CertsError::NoServerHost
        ));
        for id in [
            "http://test.client",
            "spiffe://",
            "spiffe://Test.client",
            "spiffe://td/a//b",
            "spiffe://td/../x",
        ] {
            let mut req = request(dir.path());
            req.client_spiffe_id = id.into();
            let err = issue_demo_set(&req).expect_err(id);
            assert!(
                matches!(&err, CertsError::InvalidSpiffeId { id: got, .. } if got == id),
                "{err}"
            );
            assert!(err.to_string().contains(id), "{err}");
        }
        assert!(matches!(
            with(|r| r.days = 0),
            CertsError::InvalidDays { days: 0 }
        ));
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }

    #[test]
    fn loaded_ca_issues_workload_certs_that_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let generated = Ca::generate("Portcullis Test CA", KeyType::EcdsaP256, 10).expect("CA");
        let ca = Ca::load(generated.cert_pem(), &generated.key_pem()).expect("load");
        let leaf = issue_workload_cert(
            &ca,
            "spiffe://cluster.local/ns/default/sa/sleep",
            &["sleep.default.svc".to_owned()],
            KeyType::EcdsaP256,
            1,
        )
        .expect("issue");
        assert!(
            !format!("{leaf:?}").contains("PRIVATE KEY"),
            "Debug hides the key"
        );
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write");
        std::fs::write(dir.path().join("leaf.pem"), &leaf.cert_pem).expect("write");
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).expect("pem");
        let (_, leaf_pem) =
            x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).expect("pem");
        with_cert(&ca_pem, |ca| {
            with_cert(&leaf_pem, |leaf| {
                assert_eq!(
                    sans(leaf),
                    [
                        "URI:spiffe://cluster.local/ns/default/sa/sleep",
                        "DNS:sleep.default.svc"
                    ]
                );
                assert_leaf_of(leaf, ca);
            })
        });
        let out = openssl_verify(dir.path(), "ca.pem", &["leaf.pem"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn openssl_made_ca_loads_and_signs() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The walkthrough's CA subject, with its PrintableString/UTF8String/IA5String mix.
        let made = Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
            ])
            .args(["-keyout", "cakey.pem", "-out", "cacert.pem"])
            .args([
                "-subj",
                "/C=CN/ST=bj/L=bj/O=test/OU=test/CN=Test CA/emailAddress=test@example.com",
            ])
            .args(["-addext", "basicConstraints=critical,CA:true"])
            .args(["-addext", "keyUsage=keyCertSign,cRLSign"])
            .output()
            .expect("run openssl");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect(name);
        let ca = Ca::load(&read("cacert.pem"), &read("cakey.pem")).expect("load openssl CA");
        let leaf = issue_workload_cert(&ca, "spiffe://test.client", &[], KeyType::EcdsaP256, 1)
            .expect("issue");
        std::fs::write(dir.path().join("clientcert.pem"), &leaf.cert_pem).expect("write");
        let out = openssl_verify(dir.path(), "cacert.pem", &["clientcert.pem"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, ca_pem) =
            x509_parser::pem::parse_x509_pem(read("cacert.pem").as_bytes()).expect("pem");
        let (_, leaf_pem) =
            x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).expect("pem");
        with_cert(&ca_pem, |ca| {
            with_cert(&leaf_pem, |leaf| assert_leaf_of(leaf, ca))
        });
    }

    #[test]
    fn load_rejects_non_ca_and_foreign_key() {
        let ca = Ca::generate(DEMO_CA_NAME, KeyType::EcdsaP256, 1).expect("CA");
        let leaf = issue_workload_cert(&ca, "spiffe://test.client", &[], KeyType::EcdsaP256, 1)
            .expect("issue");
        let err = Ca::load(&leaf.cert_pem, &leaf.key_pem).expect_err("leaf is not a CA");
        assert!(err.to_string().contains("not a CA"), "{err}");

        let other = Ca::generate(DEMO_CA_NAME, KeyType::EcdsaP256, 1).expect("CA");
        let err = Ca::load(ca.cert_pem(), &other.key_pem()).expect_err("foreign key");
        assert!(
            matches!(&err, CertsError::BadCaKey { reason } if reason.contains("does not match")),
            "{err}"
        );

        let err = Ca::load("garbage", &ca.key_pem()).expect_err("not PEM");
        assert!(matches!(err, CertsError::BadCaCert { .. }), "{err}");
        let err = Ca::load(ca.cert_pem(), "garbage").expect_err("no key");
        assert!(matches!(err, CertsError::BadCaKey { .. }), "{err}");
    }
}
