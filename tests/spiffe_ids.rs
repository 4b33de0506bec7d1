//! Client certificates whose `spiffe` URI SAN is malformed, made by the real `openssl` CLI and
//! signed by the walkthrough's CA: the spellings an attacker with access to the CA tried (attack
//! review, issue 12), each of which used to be served as a principal other than `test.client`
//! or as no principal at all, past the walkthrough's DENY. They are now refused at the
//! handshake, logged and counted; a certificate without any SPIFFE id is still served.

use std::path::Path;

use anyhow::{Context, Result};
use e2e::certs::{openssl_client, openssl_client_ext};
use e2e::free_port;
use e2e::walkthrough::{curl, Gateway, Walkthrough};

/// `curl https://test.com<path>` with the client certificate `<name>.pem`; the status code,
/// `000` when the handshake failed.
fn request(w: &Walkthrough, gw: &Gateway, name: &str, path: &str) -> Result<String> {
    let dir: &Path = &w.certs.dir;
    let resolve = format!("test.com:{}:127.0.0.1", gw.https_port);
    let ca = w.certs.ca_cert();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let args = [
        "--resolve",
        &resolve,
        "--cacert",
        ca.to_str().context("ca")?,
        "--cert",
        cert.to_str().context("cert")?,
        "--key",
        key.to_str().context("key")?,
    ];
    Ok(curl(&format!("https://test.com:{}{path}", gw.https_port), &args)?.0)
}

fn metric(admin: &str, series: &str) -> Result<f64> {
    let (_, text) = curl(&format!("http://{admin}/stats/prometheus"), &[])?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .with_context(|| format!("{series} not in:\n{text}"))
}

#[test]
fn malformed_spiffe_ids_are_refused_at_the_handshake() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = Walkthrough::prepare(dir.path())?;
    let refused = [
        ("upper_scheme", "URI:SPIFFE://test.client"),
        ("upper_domain", "URI:spiffe://TEST.CLIENT"),
        ("trailing_dot", "URI:spiffe://test.client."),
        ("port", "URI:spiffe://test.client:443"),
        ("query", "URI:spiffe://test.client?x"),
        ("userinfo", "URI:spiffe://a@test.client"),
        ("percent", "URI:spiffe://test%2Eclient"),
        ("dot_segment", "URI:spiffe://test.client/."),
        ("empty", "URI:spiffe://"),
        ("no_domain", "URI:spiffe:///x"),
        ("bad_first", "URI:spiffe:///x,URI:spiffe://test.client"),
        (
            "two_ids",
            "URI:spiffe://test.client,URI:spiffe://other.client",
        ),
    ];
    let served = [
        ("no_san", None),
        ("dns_only", Some("DNS:client.test")),
        (
            "https_then_spiffe",
            Some("URI:https://x.test,URI:spiffe://test.client"),
        ),
    ];
    for (name, san) in refused {
        openssl_client(&w.certs.dir, name, Some(san))?;
    }
    for (name, san) in served {
        openssl_client(&w.certs.dir, name, san)?;
    }
    let admin = format!("127.0.0.1:{}", free_port()?);
    let gw = w.start_gateway(&["--admin", &admin])?;

    for (name, san) in refused {
        for path in ["/status/200", "/status/418"] {
            let code = request(&w, &gw, name, path)?;
            assert_eq!(
                code, "000",
                "{name} ({san}) {path}: served, must fail the handshake"
            );
        }
    }
    // No SPIFFE id: authenticated, no principal, not matched by the DENY on test.client.
    for (name, _) in &served[..2] {
        assert_eq!(request(&w, &gw, name, "/status/200")?, "200", "{name}");
        assert_eq!(request(&w, &gw, name, "/status/418")?, "418", "{name}");
    }
    // A non-spiffe URI first does not hide the SPIFFE id: still test.client, still denied.
    assert_eq!(request(&w, &gw, "https_then_spiffe", "/status/200")?, "200");
    assert_eq!(request(&w, &gw, "https_then_spiffe", "/status/418")?, "403");

    let refusals = metric(
        &admin,
        r#"portcullis_tls_handshake_failures_total{reason="invalid_spiffe_id"}"#,
    )?;
    assert_eq!(refusals, (refused.len() * 2) as f64);
    let log = gw.daemon.log();
    for needle in [
        r#"client certificate refused reason=peer certificate URI SAN "SPIFFE://test.client" is not a valid SPIFFE ID: the scheme must be exactly `spiffe`"#,
        "carries 2 SPIFFE IDs",
        "peer=127.0.0.1:",
    ] {
        assert!(log.contains(needle), "{needle} not logged:\n{log}");
    }
    Ok(())
}

/// Subject alternative names that OpenSSL (and so the CA that signs them) reads as
/// `URI:spiffe://test.client`, but that x509-parser does not parse (attack review, issue 12):
/// each used to leave the client with no principal, so the DENY on test.client did not match
/// and `/status/418` was served. Now the handshake is refused and counted as `malformed_san`.
#[test]
fn sans_that_do_not_parse_strictly_are_refused_at_the_handshake() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = Walkthrough::prepare(dir.path())?;
    let refused = [
        // SEQ { [6] constructed, indefinite length { IA5String "spiffe://test.client" } EOC }
        (
            "ber_indefinite",
            "301aa68016147370696666653a2f2f746573742e636c69656e740000",
        ),
        // SEQ { [6] "spiffe://test.client\xff" }
        (
            "not_utf8",
            "301786157370696666653a2f2f746573742e636c69656e74ff",
        ),
        // SEQ { [6] "spiffe://test.client", [6] 0xff }
        (
            "second_not_utf8",
            "301986147370696666653a2f2f746573742e636c69656e748601ff",
        ),
    ];
    // The same SAN in DER: test.client, denied on /status/418.
    let control = ("der", "301686147370696666653a2f2f746573742e636c69656e74");
    for (name, hex) in refused.iter().chain([&control]) {
        openssl_client_ext(&w.certs.dir, name, Some(format!("2.5.29.17=DER:{hex}")))?;
    }
    let admin = format!("127.0.0.1:{}", free_port()?);
    let gw = w.start_gateway(&["--admin", &admin])?;

    assert_eq!(request(&w, &gw, "der", "/status/200")?, "200");
    assert_eq!(request(&w, &gw, "der", "/status/418")?, "403");
    for (name, _) in refused {
        let code = request(&w, &gw, name, "/status/418")?;
        assert_eq!(code, "000", "{name}: served, must fail the handshake");
    }
    let refusals = metric(
        &admin,
        r#"portcullis_tls_handshake_failures_total{reason="malformed_san"}"#,
    )?;
    assert_eq!(refusals, refused.len() as f64);
    let log = gw.daemon.log();
    let needle = "client certificate refused reason=peer certificate subjectAltName";
    assert!(log.contains(needle), "{needle} not logged:\n{log}");
    Ok(())
}
