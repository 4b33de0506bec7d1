//! MUTUAL options end to end through `compile`: each option changes who completes a handshake
//! with the server it builds, and every unsupported field is refused by name and line.

use std::path::Path;

use super::model::ServerTls;
use super::{compile, Snapshot};
use crate::config::{load_paths, ConfigErrors, Settings};
use crate::tls::testing::{crl_pem, handshake, leaf, test_ca, Leaf, TestCa};

struct Pki {
    ca: TestCa,
    server: Leaf,
    good: Leaf,
    revoked: Leaf,
}

fn pki() -> Pki {
    let ca = test_ca("Gateway CA");
    Pki {
        server: leaf(&ca, &["test.com"], &[], 1),
        good: leaf(&ca, &["client.test"], &["spiffe://test.client"], 2),
        revoked: leaf(&ca, &["client.test"], &["spiffe://test.client"], 3),
        ca,
    }
}

fn write_dir(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
}

/// A MUTUAL server for test.com with `tls_extra` in its `tls` block, the credential as a
/// directory (with `ca.crl` when `crl` is set), plus `more` YAML documents.
fn compile_mutual(
    pki: &Pki,
    tls_extra: &str,
    crl: Option<&str>,
    more: &str,
) -> (Result<Snapshot, ConfigErrors>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let ca_pem = pki.ca.cert.pem();
    let mut files = vec![
        ("tls.crt", pki.server.cert_pem.as_str()),
        ("tls.key", pki.server.key_pem.as_str()),
        ("ca.crt", ca_pem.as_str()),
    ];
    if let Some(crl) = crl {
        files.push(("ca.crl", crl));
    }
    write_dir(&dir.path().join("creds/test.com"), &files);
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - hosts: [test.com]\n    port: {{number: 443, name: https, protocol: HTTPS}}\n    tls:\n      mode: MUTUAL\n      credentialName: test.com\n{tls_extra}{more}"
    );
    let file = dir.path().join("gw.yaml");
    std::fs::write(&file, yaml).expect("write");
    let settings = Settings {
        credential_dirs: vec![dir.path().join("creds")],
        ..Settings::default()
    };
    let out = load_paths(&[file]).and_then(|r| compile(r, settings));
    (out, dir)
}

fn server(snapshot: &Snapshot) -> std::sync::Arc<rustls::ServerConfig> {
    match &snapshot.listeners[0].servers[0].tls {
        Some(ServerTls::Terminate { config, .. }) => config.clone(),
        other => panic!("expected a terminating server, got {other:?}"),
    }
}

#[test]
fn subject_alt_names_admit_only_a_client_carrying_one() {
    let pki = pki();
    let dns_client = leaf(&pki.ca, &["payments.internal"], &[], 9);
    let (snap, _d) = compile_mutual(
        &pki,
        "      subjectAltNames: [spiffe://test.client, payments.internal]\n",
        None,
        "",
    );
    let cfg = server(&snap.expect("compiles"));
    assert_eq!(
        handshake(cfg.clone(), &pki.ca, Some(&pki.good), false),
        Ok(())
    );
    assert_eq!(
        handshake(cfg.clone(), &pki.ca, Some(&dns_client), true),
        Ok(()),
        "DNS SAN, TLS 1.2"
    );
    for (who, cert) in [
        (
            "other URI",
            leaf(&pki.ca, &[], &["spiffe://test.client/extra"], 10),
        ),
        ("prefix only", leaf(&pki.ca, &[], &["spiffe://test"], 11)),
        (
            "other DNS",
            leaf(&pki.ca, &["payments.internal.evil"], &[], 12),
        ),
        ("no SAN", leaf(&pki.ca, &[], &[], 13)),
    ] {
        let err = handshake(cfg.clone(), &pki.ca, Some(&cert), false).expect_err(who);
        assert!(err.contains("SubjectAltName"), "{who}: {err}");
    }
    // Without the option, the same certificates pass: the test can fail.
    let (snap, _d) = compile_mutual(&pki, "", None, "");
    let other = leaf(&pki.ca, &[], &["spiffe://test.client/extra"], 10);
    assert_eq!(
        handshake(server(&snap.expect("ok")), &pki.ca, Some(&other), false),
        Ok(())
    );
}

#[test]
fn a_revoked_client_is_refused_and_others_pass() {
    let pki = pki();
    let crl = crl_pem(&pki.ca, &[3]);
    let (snap, _d) = compile_mutual(&pki, "", Some(&crl), "");
    let cfg = server(&snap.expect("compiles"));
    assert_eq!(
        handshake(cfg.clone(), &pki.ca, Some(&pki.good), false),
        Ok(())
    );
    for tls12 in [false, true] {
        let err = handshake(cfg.clone(), &pki.ca, Some(&pki.revoked), tls12).expect_err("revoked");
        assert!(err.contains("Revoked") || err.contains("revoked"), "{err}");
    }
    // A client of a second CA in ca.crt that has no CRL: status unknown, refused (as Envoy).
    let (snap, _d) = compile_mutual(&pki, "", None, "");
    assert_eq!(
        handshake(
            server(&snap.expect("ok")),
            &pki.ca,
            Some(&pki.revoked),
            false
        ),
        Ok(()),
        "without ca.crl the same certificate passes"
    );
}

#[test]
fn a_crl_that_does_not_parse_names_the_file_and_field() {
    let pki = pki();
    let (snap, dir) = compile_mutual(
        &pki,
        "",
        Some("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"),
        "",
    );
    let err = snap.expect_err("bad crl").to_string();
    assert!(err.contains("ca.crl"), "{err}");
    assert!(
        err.contains(
            &dir.path()
                .join("creds/test.com/ca.crl")
                .display()
                .to_string()
        ),
        "{err}"
    );
    assert!(err.contains("credentialName"), "{err}");
    let stranger = test_ca("Gateway CA");
    let (snap, _d) = compile_mutual(&pki, "", Some(&crl_pem(&stranger, &[3])), "");
    let err = snap.expect_err("foreign crl").to_string();
    assert!(
        err.contains("not signed by a certificate of ca.crt"),
        "{err}"
    );
}

#[test]
fn certificate_pins_follow_envoy() {
    use base64::Engine;
    let pki = pki();
    let (_, good) = x509_parser::parse_x509_certificate(&pki.good.der).expect("parse");
    let spki = ring::digest::digest(&ring::digest::SHA256, good.public_key().raw);
    let spki_b64 = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
    let hash = ring::digest::digest(&ring::digest::SHA256, pki.good.der.as_ref());
    let hash_hex: Vec<String> = hash.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    for extra in [
        format!("      verifyCertificateSpki: [\"{spki_b64}\"]\n"),
        format!(
            "      verifyCertificateHash: [\"{}\"]\n",
            hash_hex.join(":")
        ),
        format!(
            "      verifyCertificateHash: [\"{}\"]\n",
            hash_hex.join("").to_lowercase()
        ),
    ] {
        let (snap, _d) = compile_mutual(&pki, &extra, None, "");
        let cfg = server(&snap.expect(&extra));
        assert_eq!(
            handshake(cfg.clone(), &pki.ca, Some(&pki.good), false),
            Ok(()),
            "{extra}"
        );
        let err = handshake(cfg, &pki.ca, Some(&pki.revoked), false).expect_err(&extra);
        assert!(err.contains("NotPinned"), "{extra}: {err}");
    }
    let (snap, _d) = compile_mutual(&pki, "      verifyCertificateHash: [abcd]\n", None, "");
    let err = snap.expect_err("short hash");
    assert_eq!(
        err.0[0].field.as_deref(),
        Some("spec.servers[0].tls.verifyCertificateHash")
    );
}

#[test]
fn cipher_suites_are_mapped_or_refused_by_name() {
    let pki = pki();
    let (snap, _d) = compile_mutual(
        &pki,
        "      maxProtocolVersion: TLSV1_2\n      cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]\n",
        None,
        "",
    );
    let cfg = server(&snap.expect("compiles"));
    assert_eq!(
        handshake(cfg.clone(), &pki.ca, Some(&pki.good), true),
        Ok(())
    );
    // A TLS 1.2 client offering only another suite is refused: the list is enforced.
    let suite = |name: &str| -> Vec<rustls::SupportedCipherSuite> {
        crate::tls::ciphers::cipher_suites(&[name.to_owned()])
            .expect("known")
            .into_iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .collect()
    };
    let offer = |cfg: std::sync::Arc<rustls::ServerConfig>, name: &str| {
        crate::tls::testing::handshake_with_suites(
            cfg,
            &pki.ca,
            Some(&pki.good),
            true,
            Some(suite(name)),
        )
    };
    assert_eq!(offer(cfg.clone(), "ECDHE-ECDSA-AES256-GCM-SHA384"), Ok(()));
    assert!(offer(cfg.clone(), "ECDHE-ECDSA-AES128-GCM-SHA256").is_err());
    // Without cipherSuites, that client is served.
    let (snap, _d) = compile_mutual(&pki, "", None, "");
    assert_eq!(
        offer(server(&snap.expect("ok")), "ECDHE-ECDSA-AES128-GCM-SHA256"),
        Ok(())
    );
    let (snap, _d) = compile_mutual(
        &pki,
        "      cipherSuites: [ECDHE-ECDSA-AES128-SHA]\n",
        None,
        "",
    );
    let err = snap.expect_err("CBC");
    assert!(
        err.to_string()
            .contains("\"ECDHE-ECDSA-AES128-SHA\" is not available"),
        "{err}"
    );
    assert_eq!(err.0[0].line, Some(12), "{err}");
    assert_eq!(
        err.0[0].field.as_deref(),
        Some("spec.servers[0].tls.cipherSuites")
    );
    // RSA suites only, for an ECDSA certificate, TLS 1.2 only: no handshake could succeed,
    // so it is a configuration error rather than a server that refuses everyone.
    let (snap, _d) = compile_mutual(
        &pki,
        "      maxProtocolVersion: TLSV1_2\n      cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]\n",
        None,
        "",
    );
    let err = snap.expect_err("unusable suites");
    assert!(
        err.to_string()
            .contains("no cipher suite of cipherSuites can be used"),
        "{err}"
    );
    assert_eq!(
        err.0[0].field.as_deref(),
        Some("spec.servers[0].tls.cipherSuites")
    );
}

#[test]
fn every_unsupported_field_is_refused_by_name_and_line() {
    let pki = pki();
    for (extra, field) in [
        ("      httpsRedirect: true\n", "httpsRedirect"),
        (
            "      serverCertificate: /etc/certs/tls.crt\n",
            "serverCertificate",
        ),
        ("      privateKey: /etc/certs/tls.key\n", "privateKey"),
        (
            "      caCertificates: /etc/certs/ca.crt\n",
            "caCertificates",
        ),
        ("      caCrl: /etc/certs/ca.crl\n", "caCrl"),
        ("      credentialNames: [a, b]\n", "credentialNames"),
        (
            "      tlsCertificates: [{serverCertificate: a, privateKey: b}]\n",
            "tlsCertificates",
        ),
    ] {
        let (snap, _d) = compile_mutual(&pki, extra, None, "");
        let err = snap.expect_err(extra);
        let e = &err.0[0];
        assert_eq!(
            e.field.as_deref(),
            Some(&*format!("spec.servers[0].tls.{field}")),
            "{err}"
        );
        assert_eq!(e.line, Some(12), "{err}");
        assert!(e.message.contains(field), "{err}");
    }
}

#[test]
fn client_checks_under_simple_or_passthrough_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    for (mode, extra, field) in [
        ("SIMPLE", "subjectAltNames: [a]", "subjectAltNames"),
        (
            "SIMPLE",
            "verifyCertificateHash: [ab]",
            "verifyCertificateHash",
        ),
        ("PASSTHROUGH", "subjectAltNames: [a]", "subjectAltNames"),
        ("PASSTHROUGH", "credentialName: x", "credentialName"),
        (
            "PASSTHROUGH",
            "cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]",
            "cipherSuites",
        ),
    ] {
        let protocol = if mode == "SIMPLE" { "HTTPS" } else { "TLS" };
        let file = dir.path().join("gw.yaml");
        std::fs::write(
            &file,
            format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  servers:\n  - hosts: ['*']\n    port: {{number: 443, name: https, protocol: {protocol}}}\n    tls:\n      mode: {mode}\n      {extra}\n"),
        )
        .expect("write");
        let err = load_paths(&[file])
            .and_then(|r| compile(r, Settings::default()))
            .expect_err(extra);
        assert_eq!(
            err.0[0].field.as_deref(),
            Some(&*format!("spec.servers[0].tls.{field}")),
            "{mode} {extra}: {err}"
        );
        assert_eq!(err.0[0].line, Some(10), "{err}");
    }
}

fn secret(name: &str, ns: &str, keys: &[(&str, &str)]) -> String {
    use base64::Engine;
    let data: Vec<String> = keys
        .iter()
        .map(|(k, v)| {
            format!(
                "  {k}: {}\n",
                base64::engine::general_purpose::STANDARD.encode(v)
            )
        })
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ndata:\n{}",
        data.concat()
    )
}

#[test]
fn the_cacert_secret_wins_and_other_namespaces_are_not_read() {
    let pki = pki();
    let other_ca = test_ca("Other CA");
    let other_client = leaf(&other_ca, &[], &["spiffe://test.client"], 5);
    let yaml = |docs: &str| -> (Result<Snapshot, ConfigErrors>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("gw.yaml");
        std::fs::write(&file, format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  servers:\n  - hosts: [test.com]\n    port: {{number: 443, name: https, protocol: HTTPS}}\n    tls: {{mode: MUTUAL, credentialName: test.com}}\n{docs}")).expect("write");
        (
            load_paths(&[file]).and_then(|r| compile(r, Settings::default())),
            dir,
        )
    };
    let ca_pem = pki.ca.cert.pem();
    let other_pem = other_ca.cert.pem();
    let main = |ca: &str| {
        secret(
            "test.com",
            "istio-system",
            &[
                ("tls.crt", &pki.server.cert_pem),
                ("tls.key", &pki.server.key_pem),
                ("ca.crt", ca),
            ],
        )
    };
    // ca.crt of the main Secret trusts the other CA; the -cacert Secret trusts ours: it wins.
    let (snap, _d) = yaml(&format!(
        "{}{}",
        main(&other_pem),
        secret("test.com-cacert", "istio-system", &[("ca.crt", &ca_pem)])
    ));
    let snap = snap.expect("compiles");
    let cfg = server(&snap);
    assert_eq!(
        handshake(cfg.clone(), &pki.ca, Some(&pki.good), false),
        Ok(())
    );
    assert!(
        handshake(cfg, &pki.ca, Some(&other_client), false).is_err(),
        "the shadowed ca.crt is not trusted"
    );
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.to_string().contains("data.ca.crt") && w.to_string().contains("not used")),
        "{:?}",
        snap.warnings
    );
    // A -cacert Secret in another namespace is not read: the main ca.crt applies, with a warning.
    let (snap, _d) = yaml(&format!(
        "{}{}",
        main(&other_pem),
        secret("test.com-cacert", "default", &[("ca.crt", &ca_pem)])
    ));
    let snap = snap.expect("compiles");
    assert!(handshake(server(&snap), &pki.ca, Some(&pki.good), false).is_err());
    let w: Vec<String> = snap.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.iter()
            .any(|w| w.contains("Secret default/test.com-cacert")
                && w.contains("own namespace \"istio-system\"")),
        "{w:?}"
    );
    // The main Secret only in another namespace: not found, and the error says where it is.
    let (snap, _d) = yaml(&secret(
        "test.com",
        "default",
        &[
            ("tls.crt", &pki.server.cert_pem),
            ("tls.key", &pki.server.key_pem),
            ("ca.crt", &ca_pem),
        ],
    ));
    let err = snap.expect_err("other namespace").to_string();
    assert!(err.contains("exists in namespace(s) [default]"), "{err}");
}

#[test]
fn the_cacert_directory_wins_too() {
    let pki = pki();
    let other_ca = test_ca("Other CA");
    let (snap, dir) = compile_mutual(&pki, "", None, "");
    drop(snap);
    // Replace the main ca.crt by another CA's, and give test.com-cacert/ the right one.
    std::fs::write(
        dir.path().join("creds/test.com/ca.crt"),
        other_ca.cert.pem(),
    )
    .expect("write");
    write_dir(
        &dir.path().join("creds/test.com-cacert"),
        &[("ca.crt", &pki.ca.cert.pem())],
    );
    let settings = Settings {
        credential_dirs: vec![dir.path().join("creds")],
        ..Settings::default()
    };
    let snap = load_paths(&[dir.path().join("gw.yaml")])
        .and_then(|r| compile(r, settings))
        .expect("compiles");
    assert_eq!(
        handshake(server(&snap), &pki.ca, Some(&pki.good), false),
        Ok(())
    );
    assert!(!snap.warnings.is_empty(), "the shadowed ca.crt is reported");
}

#[test]
fn a_secret_key_that_is_not_read_is_reported() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("gw.yaml");
    let crl = crl_pem(&pki.ca, &[3]);
    let docs = secret(
        "test.com",
        "istio-system",
        &[
            ("tls.crt", &pki.server.cert_pem),
            ("tls.key", &pki.server.key_pem),
            ("ca.crt", &pki.ca.cert.pem()),
            ("ca.clr", &crl),
        ],
    );
    std::fs::write(&file, format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  servers:\n  - hosts: [test.com]\n    port: {{number: 443, name: https, protocol: HTTPS}}\n    tls: {{mode: MUTUAL, credentialName: test.com}}\n{docs}")).expect("write");
    let snap = load_paths(&[file])
        .and_then(|r| compile(r, Settings::default()))
        .expect("compiles");
    let w: Vec<String> = snap.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.iter()
            .any(|w| w.contains("data.ca.clr") && w.contains("is not read")),
        "{w:?}"
    );
    // The typo means no CRL: the revoked client is served, which is why the warning matters.
    assert_eq!(
        handshake(server(&snap), &pki.ca, Some(&pki.revoked), false),
        Ok(())
    );
}

#[test]
fn the_line_is_the_offending_servers_own() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("gw.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - hosts: [a.test]\n    port: {number: 443, name: a, protocol: HTTPS}\n    tls:\n      mode: MUTUAL\n      credentialName: a\n  - hosts: [b.test]\n    port: {number: 8443, name: b, protocol: HTTPS}\n    tls:\n      mode: MUTUAL\n      credentialName: b\n      caCertificates: /etc/ca.pem\n",
    )
    .expect("write");
    let err = load_paths(&[file])
        .and_then(|r| compile(r, Settings::default()))
        .expect_err("two errors");
    let a = err
        .0
        .iter()
        .find(|e| e.field.as_deref() == Some("spec.servers[0].tls.credentialName"))
        .expect("credential a not found");
    assert_eq!(a.line, Some(10), "{err}");
    let b = err
        .0
        .iter()
        .find(|e| e.field.as_deref() == Some("spec.servers[1].tls.caCertificates"))
        .expect("caCertificates refused");
    assert_eq!(b.line, Some(16), "{err}");
}

#[test]
fn a_certificate_accepted_earlier_can_be_checked_against_a_newer_server() {
    use crate::tls::verify_client_chain;
    let pki = pki();
    // What an open connection is re-checked with after a reload: the new snapshot's
    // credential and the server's client checks.
    let recheck = |snap: Result<Snapshot, ConfigErrors>| {
        let snap = snap.expect("compiles");
        let Some(ServerTls::Terminate {
            credential_name,
            client_checks,
            ..
        }) = &snap.listeners[0].servers[0].tls
        else {
            panic!("expected a MUTUAL server");
        };
        verify_client_chain(
            &snap.credentials[credential_name],
            client_checks,
            std::slice::from_ref(&pki.good.der),
        )
    };
    let (before, _d) = compile_mutual(&pki, "", None, "");
    assert_eq!(recheck(before), Ok(()));
    // subjectAltNames changed to one the client does not carry; then its serial revoked.
    let (san, _d) = compile_mutual(&pki, "      subjectAltNames: [spiffe://other]\n", None, "");
    assert!(recheck(san).is_err());
    let (crl, _d) = compile_mutual(&pki, "", Some(&crl_pem(&pki.ca, &[2])), "");
    assert!(recheck(crl).is_err());
    // A new CA: the old client no longer chains.
    let other = test_ca("Other CA");
    let (ca, dir) = compile_mutual(&pki, "", None, "");
    drop(ca);
    std::fs::write(dir.path().join("creds/test.com/ca.crt"), other.cert.pem()).expect("write");
    let settings = Settings {
        credential_dirs: vec![dir.path().join("creds")],
        ..Settings::default()
    };
    assert!(
        recheck(load_paths(&[dir.path().join("gw.yaml")]).and_then(|r| compile(r, settings)))
            .is_err()
    );
}
