//! Every MUTUAL option Istio honours, tried as an attacker would with the real tools: a CA,
//! client certificates and a CRL made by the `openssl` CLI (`openssl ca -revoke`, then
//! `openssl ca -gencrl`, which gives a version 1 CRL with the walkthrough's CA config), the
//! real `portcullis run`, and real `curl`.
//!
//! - a revoked client is refused, by a PEM CRL in a credential directory and by a DER CRL in
//!   a `<credentialName>-cacert` Secret;
//! - a client without one of `subjectAltNames` is refused, one with it is served;
//! - the `-cacert` Secret's CA wins over `ca.crt` of the main Secret;
//! - a Secret in another namespace than the gateway's is not used, and `check` says so;
//! - an unsupported `tls` field is refused by `portcullis check` with file:line and field.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use e2e::portcullis_bin;
use e2e::process::run;
use e2e::walkthrough::{curl, Walkthrough};

fn openssl_client(certs: &Path, name: &str, san: &str) -> Result<()> {
    e2e::certs::openssl_client(certs, name, Some(san))
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = run(Command::new("openssl").args(args).current_dir(dir))?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn b64(path: &Path) -> Result<String> {
    let out = run(Command::new("openssl")
        .args(["base64", "-A", "-in"])
        .arg(path))?;
    Ok(String::from_utf8(out.stdout)?)
}

fn secret(name: &str, namespace: &str, keys: &[(&str, &Path)]) -> Result<String> {
    let mut text = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: Opaque\ndata:\n"
    );
    for (key, path) in keys {
        text.push_str(&format!("  {key}: {}\n", b64(path)?));
    }
    Ok(text)
}

/// The walkthrough's Gateway with `tls_extra` lines added to the MUTUAL server's `tls`.
fn gateway_yaml(tls_extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: httpbin, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - hosts: ['*']\n    port: {{name: test, number: 80, protocol: HTTP}}\n  - hosts: [test.com]\n    port: {{number: 443, name: https, protocol: HTTPS}}\n    tls:\n      mode: MUTUAL\n      credentialName: test.com\n{tls_extra}"
    )
}

/// `curl https://test.com/status/200` with the client `name` (`<name>.pem`/`<name>.key`).
fn request(w: &Walkthrough, port: u16, name: &str) -> Result<String> {
    let resolve = format!("test.com:{port}:127.0.0.1");
    let dir = &w.certs.dir;
    let (cert, key) = match name {
        "client" => (w.certs.client_cert(), w.certs.client_key()),
        other => (
            dir.join(format!("{other}.pem")),
            dir.join(format!("{other}.key")),
        ),
    };
    let ca = w.certs.ca_cert();
    let args = [
        "--resolve",
        &resolve,
        "--cacert",
        ca.to_str().unwrap_or_default(),
        "--cert",
        cert.to_str().unwrap_or_default(),
        "--key",
        key.to_str().unwrap_or_default(),
    ];
    Ok(curl(&format!("https://test.com:{port}/status/200"), &args)?.0)
}

fn check(w: &Walkthrough) -> Result<(bool, String)> {
    let out = run(Command::new(portcullis_bin()?)
        .arg("check")
        .arg("-c")
        .arg(&w.config)
        .arg("--credentials")
        .arg(&w.credentials))?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn mutual_options_hold_against_openssl_made_certificates() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = Walkthrough::prepare(tmp.path())?;
    let certs = w.certs.dir.clone();
    // Two more clients of the walkthrough's CA: one to revoke (same SAN as the good client),
    // one with a SAN the server does not list.
    openssl_client(&certs, "revoked", "URI:spiffe://test.client")?;
    openssl_client(&certs, "wrongsan", "URI:spiffe://wrong.client")?;
    openssl(
        &certs,
        &["ca", "-config", "ca.cnf", "-revoke", "revoked.pem"],
    )?;
    openssl(
        &certs,
        &["ca", "-config", "ca.cnf", "-gencrl", "-out", "ca.crl"],
    )?;
    openssl(
        &certs,
        &[
            "crl",
            "-in",
            "ca.crl",
            "-outform",
            "DER",
            "-out",
            "ca.crl.der",
        ],
    )?;
    // A CA the clients do not chain to, to tell which ca.crt the gateway uses.
    openssl(
        &certs,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other-ca.key",
            "-out",
            "other-ca.pem",
            "-subj",
            "/CN=Other CA",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=keyCertSign,cRLSign",
        ],
    )?;
    let gateway_file = w.config.join("gateway.yaml");
    let cred_dir = w.credentials.join("test.com");

    // 1. Credential directory with ca.crl (PEM, v1 as openssl makes it), subjectAltNames.
    std::fs::copy(certs.join("ca.crl"), cred_dir.join("ca.crl"))?;
    std::fs::write(
        &gateway_file,
        gateway_yaml("      subjectAltNames: [spiffe://test.client]\n"),
    )?;
    {
        let gw = w.start_gateway(&[])?;
        let port = gw.https_port;
        assert_eq!(request(&w, port, "client")?, "200", "{}", gw.daemon.log());
        assert_eq!(request(&w, port, "revoked")?, "000", "revoked is refused");
        assert_eq!(
            request(&w, port, "wrongsan")?,
            "000",
            "wrong SAN is refused"
        );
        let log = gw.daemon.log();
        assert!(log.contains("Revoked"), "{log}");
        assert!(log.contains("subjectAltNames"), "{log}");
    }
    // Without the CRL and the SAN list, the same two certificates are served: the checks
    // above are what refused them.
    std::fs::remove_file(cred_dir.join("ca.crl"))?;
    std::fs::write(&gateway_file, gateway_yaml(""))?;
    {
        let gw = w.start_gateway(&[])?;
        assert_eq!(request(&w, gw.https_port, "revoked")?, "200");
        assert_eq!(request(&w, gw.https_port, "wrongsan")?, "200");
    }

    // 2. Secrets: the main one's ca.crt is the other CA; `test.com-cacert` holds the real CA
    //    and the CRL in DER. The -cacert Secret wins: the good client is served, the revoked
    //    one refused. (The credential directory is moved away so only Secrets are in play.)
    std::fs::rename(&cred_dir, w.credentials.join("unused"))?;
    let main_secret = secret(
        "test.com",
        "istio-system",
        &[
            ("tls.crt", &w.certs.server_cert()),
            ("tls.key", &w.certs.server_key()),
            ("ca.crt", &certs.join("other-ca.pem")),
        ],
    )?;
    let cacert = secret(
        "test.com-cacert",
        "istio-system",
        &[
            ("ca.crt", &w.certs.ca_cert()),
            ("ca.crl", &certs.join("ca.crl.der")),
        ],
    )?;
    let secrets = w.config.join("secrets.yaml");
    std::fs::write(&secrets, format!("{main_secret}{cacert}"))?;
    {
        let gw = w.start_gateway(&[])?;
        assert_eq!(
            request(&w, gw.https_port, "client")?,
            "200",
            "{}",
            gw.daemon.log()
        );
        assert_eq!(request(&w, gw.https_port, "revoked")?, "000");
    }
    let (ok, out) = check(&w)?;
    assert!(ok, "{out}");
    assert!(
        out.contains("data.ca.crt") && out.contains("not used"),
        "{out}"
    );

    // 3. The same -cacert Secret, but in another namespace: not used. The main Secret's
    //    ca.crt (the other CA) applies, so the good client is refused, and check says why.
    let elsewhere = cacert.replace("namespace: istio-system", "namespace: default");
    std::fs::write(&secrets, format!("{main_secret}{elsewhere}"))?;
    {
        let gw = w.start_gateway(&[])?;
        assert_eq!(request(&w, gw.https_port, "client")?, "000");
    }
    let (ok, out) = check(&w)?;
    assert!(ok, "{out}");
    assert!(
        out.contains("warning:")
            && out.contains("Secret default/test.com-cacert")
            && out.contains("own namespace \"istio-system\""),
        "{out}"
    );
    // And a main Secret only in another namespace is not found (the credential directory is
    // gone), with the error saying where it is.
    std::fs::write(
        &secrets,
        main_secret.replace("namespace: istio-system", "namespace: default"),
    )?;
    let (ok, out) = check(&w)?;
    assert!(!ok, "{out}");
    assert!(out.contains("exists in namespace(s) [default]"), "{out}");

    // 4. Unsupported fields: refused by check with file:line and the field.
    std::fs::remove_file(&secrets)?;
    std::fs::rename(w.credentials.join("unused"), &cred_dir)?;
    for (extra, field) in [
        (
            "      caCertificates: /etc/istio/ca.pem\n",
            "caCertificates",
        ),
        ("      credentialNames: [a, b]\n", "credentialNames"),
        ("      cipherSuites: [AES128-SHA]\n", "cipherSuites"),
    ] {
        std::fs::write(&gateway_file, gateway_yaml(extra))?;
        let (ok, out) = check(&w)?;
        assert!(!ok, "{extra}: {out}");
        let place = format!("{}:14 ", gateway_file.display());
        assert!(out.contains(&place), "{extra}: want {place}: {out}");
        assert!(
            out.contains(&format!("field `spec.servers[1].tls.{field}`")),
            "{extra}: {out}"
        );
    }

    // A CRL that does not parse: check names the file and the field.
    std::fs::write(&gateway_file, gateway_yaml(""))?;
    let bad_crl = cred_dir.join("ca.crl");
    std::fs::write(
        &bad_crl,
        "-----BEGIN X509 CRL-----\nMIIBAA==\n-----END X509 CRL-----\n",
    )?;
    let (ok, out) = check(&w)?;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&bad_crl.display().to_string())
            && out.contains("ca.crl: CRL #1 cannot be parsed")
            && out.contains("field `spec.servers[1].tls.credentialName`"),
        "{out}"
    );
    std::fs::remove_file(&bad_crl)?;

    // 5. Rules that can never match: `check` warns with file:line and why, `explain` notes
    //    it, and neither refuses the configuration. (Hosts: the port-80 server serves `*`; the
    //    unit tests in snapshot/lint.rs cover a host no server serves.)
    std::fs::write(&gateway_file, gateway_yaml(""))?;
    let lint = w.config.join("lint.yaml");
    std::fs::write(
        &lint,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: lint, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {principals: [test.client]}}]\n    to: [{operation: {ports: ['80'], paths: ['/status/418?x=1']}}]\n",
    )?;
    let (ok, out) = check(&w)?;
    assert!(ok, "{out}");
    let at = |line: u32| format!("warning: {}:{line} ", lint.display());
    for (line, why) in [
        (
            7,
            "source.principals`: can never match: no server on port(s) [80] is MUTUAL",
        ),
        (8, "without the query string"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&at(line)) && l.contains(why)),
            "{line} {why}: {out}"
        );
    }
    let explain = run(Command::new(portcullis_bin()?)
        .arg("explain")
        .arg("-c")
        .arg(&w.config)
        .arg("--credentials")
        .arg(&w.credentials)
        .args([
            "--host",
            "test.com",
            "--path",
            "/status/418",
            "--port",
            "80",
        ]))?;
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        text.contains("note: warning:") && text.contains("never match"),
        "{text}"
    );
    Ok(())
}
