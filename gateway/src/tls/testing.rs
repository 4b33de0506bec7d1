//! Test-time PKI: CAs, leaves with chosen SANs and serials, CRLs, and an in-memory handshake.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

pub(crate) struct TestCa {
    pub cert: rcgen::Certificate,
    pub issuer: rcgen::Issuer<'static, KeyPair>,
}

pub(crate) fn test_ca(name: &str) -> TestCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("ca");
    TestCa {
        cert,
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// A v2 CRL of `ca` revoking `revoked` serials.
pub(crate) fn crl_pem(ca: &TestCa, revoked: &[u64]) -> String {
    let now = time::OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(30),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: now - time::Duration::hours(1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params
        .signed_by(&ca.issuer)
        .expect("crl")
        .pem()
        .expect("pem")
}

/// A leaf of `ca`: PEM certificate, PEM key, and DER certificate.
pub(crate) struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

/// Signs `params` with serial `serial` and a fresh key, as `ca`.
fn sign(mut params: CertificateParams, serial: u64, ca: &TestCa) -> Leaf {
    params.serial_number = Some(SerialNumber::from(serial));
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

/// A MUTUAL server config presenting `server`, trusting `ca` for client certificates and
/// applying `client_checks` to them.
pub(crate) fn mutual_server(
    ca: &TestCa,
    server: &Leaf,
    client_checks: super::ClientCertChecks,
) -> Arc<rustls::ServerConfig> {
    let cred = super::Credential::from_pem(
        server.cert_pem.as_bytes(),
        server.key_pem.as_bytes(),
        Some(ca.cert.pem().as_bytes()),
    )
    .expect("cred");
    super::server_config_with(
        &cred,
        &super::ServerOptions {
            mode: super::ServerTlsMode::Mutual,
            versions: super::TlsVersions::default(),
            cipher_suites: Vec::new(),
            client_checks,
            alpn: &[],
        },
    )
    .expect("config")
}

/// A leaf with DNS names `dns`, URI SANs `uris` and serial `serial`.
pub(crate) fn leaf(ca: &TestCa, dns: &[&str], uris: &[&str], serial: u64) -> Leaf {
    let mut params =
        CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
            .expect("params");
    for u in uris {
        params.subject_alt_names.push(SanType::URI(
            rcgen::string::Ia5String::try_from(*u).expect("ia5"),
        ));
    }
    sign(params, serial, ca)
}

/// A client leaf whose subjectAltName extensions are the raw DER values given, one extension
/// each: encodings rcgen would never write (BER, invalid UTF-8, two SAN extensions).
pub(crate) fn leaf_with_raw_sans(ca: &TestCa, sans: &[&[u8]], serial: u64) -> Leaf {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    for san in sans {
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                san.to_vec(),
            ));
    }
    sign(params, serial, ca)
}

/// The subjectAltName values of the attack review (issue 12), each read by OpenSSL as
/// `URI:spiffe://test.client` (or with it), and what a strict reader must do with them.
pub(crate) mod raw_sans {
    /// `SEQ { [6] "spiffe://test.client" }`: DER, the control.
    pub const DER: &[u8] = b"\x30\x16\x86\x14spiffe://test.client";
    /// `SEQ { [6] constructed, indefinite length { IA5String "spiffe://test.client" } EOC }`.
    pub const BER_INDEFINITE: &[u8] = b"\x30\x1a\xa6\x80\x16\x14spiffe://test.client\x00\x00";
    /// `SEQ { [6] "spiffe://test.client\xff" }`: not UTF-8.
    pub const NOT_UTF8: &[u8] = b"\x30\x17\x86\x15spiffe://test.client\xff";
    /// `SEQ { [6] "spiffe://test.client", [6] 0xff }`.
    pub const SECOND_NOT_UTF8: &[u8] = b"\x30\x19\x86\x14spiffe://test.client\x86\x01\xff";
    /// `SEQ { [6] "spiffe://test.cliént" }`: UTF-8, but not the IA5String a URI is.
    pub const NOT_ASCII: &[u8] = b"\x30\x17\x86\x15spiffe://test.cli\xc3\xa9nt";
    /// `SEQ { [6] "spiffe://other.client" }`, for a second SAN extension.
    pub const OTHER: &[u8] = b"\x30\x17\x86\x15spiffe://other.client";
}

/// Runs a TLS handshake in memory: `Ok(())`, or the server's (else the client's) error.
pub(crate) fn handshake(
    server: Arc<rustls::ServerConfig>,
    ca: &TestCa,
    client_cert: Option<&Leaf>,
    tls12_only: bool,
) -> Result<(), String> {
    handshake_with_suites(server, ca, client_cert, tls12_only, None)
}

/// [`handshake`] with the client offering only `suites` (None: rustls' defaults).
pub(crate) fn handshake_with_suites(
    server: Arc<rustls::ServerConfig>,
    ca: &TestCa,
    client_cert: Option<&Leaf>,
    tls12_only: bool,
    suites: Option<Vec<rustls::SupportedCipherSuite>>,
) -> Result<(), String> {
    let mut provider = crate::tls::provider();
    if let Some(suites) = suites {
        provider.cipher_suites = suites;
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let client = match client_cert {
        Some(l) => builder
            .with_client_auth_cert(
                vec![l.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(l.key_der.clone())),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from("test.com").expect("name");
    let mut c = rustls::ClientConnection::new(Arc::new(client), name).map_err(|e| e.to_string())?;
    let mut s = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).map_err(|e| e.to_string())?;
        s.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
        s.process_new_packets()
            .map_err(|e| format!("server: {e}"))?;
        buf.clear();
        s.write_tls(&mut buf).map_err(|e| e.to_string())?;
        c.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
        c.process_new_packets()
            .map_err(|e| format!("client: {e}"))?;
        if !c.is_handshaking() && !s.is_handshaking() {
            // TLS 1.3: the server reads the client's certificate after the client is done.
            let mut buf = Vec::new();
            c.write_tls(&mut buf).map_err(|e| e.to_string())?;
            s.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
            s.process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
            return Ok(());
        }
    }
    Err("handshake did not finish".to_owned())
}
