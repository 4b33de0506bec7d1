//! What the upstream receives, recorded byte for byte (`e2e::recorder`), when a client sends
//! what an attacker would: header names with `_` (which CGI/WSGI upstreams fold into the
//! gateway-managed `X-Forwarded-Client-Cert`, `X-Forwarded-For`, `Host`) or other punctuation
//! (which some CGI mappers fold the same way), RFC 9440 `client-cert` fields, headers that make
//! an upstream serve another path or method than the one authorized, and the same in request
//! trailers. Over HTTP/1.1 and HTTP/2, with a client certificate that names a principal, one that names none, and no TLS at all.
//! Also: malformed or disagreeing Host/:authority spellings are refused and accepted ones reach
//! the upstream as one canonical Host; HTTP/2 cookie fields reach it as one `cookie` line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use e2e::free_port;
use e2e::rawhttp::{require_h2, Proto, RawRequest};
use e2e::recorder::{fields, Recorder};
use e2e::walkthrough::{curl, routing, Gateway, Identity, Walkthrough};

/// The walkthrough with its routes pointed at a [`Recorder`] instead of httpbin.
/// Also returns the admin listener's address.
fn start(dir: &Path) -> Result<(Walkthrough, Recorder, Gateway, String)> {
    let w = Walkthrough::prepare(dir)?;
    let recorder = Recorder::start()?;
    std::fs::write(w.config.join("routing.yaml"), routing(recorder.port))?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let gw = w.start_gateway(&["--admin", &admin])?;
    Ok((w, recorder, gw, admin))
}

/// The value of one series on the admin listener's Prometheus page.
fn metric(admin: &str, series: &str) -> Result<f64> {
    let (_, text) = curl(&format!("http://{admin}/stats/prometheus"), &[])?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .with_context(|| format!("{series} not in:\n{text}"))
}

/// How a request reaches the gateway.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// HTTPS to the MUTUAL server with `spiffe://test.client`.
    Principal,
    /// HTTPS to the MUTUAL server with a certificate that has no SPIFFE id.
    NoPrincipal,
    /// Plain HTTP on the port-80 server: no certificate at all.
    Plaintext,
}

/// Sends `headers` (`Name: value` lines, as curl's `-H` takes them) to `path`; returns the
/// status code and the one head the upstream recorded for it.
fn send(
    w: &Walkthrough,
    gw: &Gateway,
    rec: &Recorder,
    client: Client,
    h2: bool,
    path: &str,
    headers: &[&str],
) -> Result<(String, Option<String>)> {
    let ca = w.certs.ca_cert();
    let (client_cert, client_key) = (w.certs.client_cert(), w.certs.client_key());
    let (server_cert, server_key) = (w.certs.server_cert(), w.certs.server_key());
    let resolve = format!("test.com:{}:127.0.0.1", gw.https_port);
    let mut args: Vec<&str> = Vec::new();
    let url = match client {
        Client::Plaintext => format!("http://127.0.0.1:{}{path}", gw.http_port),
        Client::Principal | Client::NoPrincipal => {
            let (cert, key) = match client {
                Client::Principal => (&client_cert, &client_key),
                _ => (&server_cert, &server_key),
            };
            args.extend(["--resolve", &resolve, "--cacert"]);
            args.push(ca.to_str().context("ca path")?);
            args.extend(["--cert", cert.to_str().context("cert path")?]);
            args.extend(["--key", key.to_str().context("key path")?]);
            format!("https://test.com:{}{path}", gw.https_port)
        }
    };
    args.push(match (h2, client) {
        (false, _) => "--http1.1",
        (true, Client::Plaintext) => "--http2-prior-knowledge",
        (true, _) => "--http2",
    });
    for h in headers {
        args.extend(["-H", h]);
    }
    let (code, _) = curl(&url, &args)?;
    let mut heads = rec.take_heads();
    if heads.len() > 1 {
        bail!(
            "{} upstream requests for one client request: {heads:?}",
            heads.len()
        );
    }
    Ok((code, heads.pop()))
}

/// Names an attacker tries, in several spellings, and what must reach the upstream instead.
const HOSTILE: &[&str] = &[
    "x_forwarded_client_cert: URI=spiffe://cluster.local/ns/prod/sa/admin",
    "X_Forwarded_Client_Cert: URI=spiffe://cluster.local/ns/prod/sa/admin2",
    "x-forwarded_client-cert: URI=spiffe://cluster.local/ns/prod/sa/admin3",
    "x_forwarded_for: 10.6.6.6",
    "x_forwarded_proto: https",
    "x_real_ip: 10.6.6.6",
    "host_: evil.example",
    "x_original_url: /admin",
    "X-Original-URL: /status/418",
    "x-rewrite-url: /status/418",
    "X-HTTP-Method-Override: DELETE",
    "x-http-method: DELETE",
    "X-Method-Override: DELETE",
    "x-envoy-original-path: /status/418",
    "x.forwarded.client.cert: URI=spiffe://forged.dot",
    "x~forwarded~client~cert: URI=spiffe://forged.tilde",
    "x!forwarded!client!cert: URI=spiffe://forged.bang",
    "x'forwarded'client'cert: URI=spiffe://forged.quote",
    "Client-Cert: :forged:",
    "client-cert-chain: :forged:",
    "X-SSL-Client-S-DN: CN=admin4",
    "X-Client-Verify: SUCCESS-forged",
    "X-Forwarded-Host: evil.example",
    "Forwarded: for=10.6.6.6;proto=https",
    "X-Real-IP: 10.6.6.7",
    "x-envoy-internal: forged",
    "x-legit: yes",
    "x-forwarded-client-cert: URI=spiffe://forged.dash.form",
];

const OVERRIDES: [&str; 6] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-envoy-original-path",
];

#[test]
fn underscore_and_override_headers_never_reach_the_upstream() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (w, rec, gw, admin) = start(dir.path())?;
    for client in [Client::Principal, Client::NoPrincipal, Client::Plaintext] {
        for h2 in [false, true] {
            let case = format!("{client:?}, h2={h2}");
            let (code, head) = send(&w, &gw, &rec, client, h2, "/get", HOSTILE)?;
            let head =
                head.with_context(|| format!("{case}: nothing reached the upstream ({code})"))?;
            assert_eq!(code, "200", "{case}");
            let got = fields(&head);
            let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
            for (name, _) in &got {
                assert!(
                    !name.contains('_'),
                    "{case}: {name} reached the upstream:\n{head}"
                );
                assert!(
                    !OVERRIDES.contains(&name.as_str()),
                    "{case}: {name} reached the upstream:\n{head}"
                );
                assert!(
                    name.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{case}: {name} reached the upstream:\n{head}"
                );
                assert!(
                    !name.starts_with("client-cert")
                        && !name.starts_with("x-ssl-")
                        && !name.starts_with("x-client-")
                        && !name.starts_with("x-envoy-")
                        && !["x-forwarded-host", "forwarded", "x-real-ip"].contains(&name.as_str()),
                    "{case}: {name} reached the upstream:\n{head}"
                );
            }
            assert!(
                names.contains(&"x-legit"),
                "{case}: a legit header was lost:\n{head}"
            );
            assert!(
                !head.contains("admin")
                    && !head.contains("forged")
                    && !head.contains("10.6.6.6")
                    && !head.contains("evil.example"),
                "{case}: a forged value reached the upstream:\n{head}"
            );
            let xfcc: Vec<&str> = got
                .iter()
                .filter(|(n, _)| n == "x-forwarded-client-cert")
                .map(|(_, v)| v.as_str())
                .collect();
            match client {
                Client::Principal => assert!(
                    xfcc.len() == 1 && xfcc[0].contains("URI=spiffe://test.client"),
                    "{case}: {xfcc:?}"
                ),
                Client::NoPrincipal => assert!(
                    xfcc.len() == 1 && !xfcc[0].contains("URI="),
                    "{case}: {xfcc:?}"
                ),
                Client::Plaintext => assert!(xfcc.is_empty(), "{case}: {xfcc:?}"),
            }
        }
    }
    // Six requests, each with eight `_` fields (two of one name), six overrides, four names
    // with other punctuation, four client-certificate fields (RFC 9440's two, two of other
    // terminators) and four forwarding fields the gateway does not set.
    assert_eq!(
        metric(
            &admin,
            r#"portcullis_request_headers_dropped_total{reason="underscore_in_name"}"#
        )?,
        48.0
    );
    assert_eq!(
        metric(
            &admin,
            r#"portcullis_request_headers_dropped_total{reason="path_or_method_override"}"#
        )?,
        36.0
    );
    assert_eq!(
        metric(
            &admin,
            r#"portcullis_request_headers_dropped_total{reason="punctuation_in_name"}"#
        )?,
        24.0
    );
    assert_eq!(
        metric(
            &admin,
            r#"portcullis_request_headers_dropped_total{reason="client_cert_header"}"#
        )?,
        24.0
    );
    assert_eq!(
        metric(
            &admin,
            r#"portcullis_request_headers_dropped_total{reason="forwarding_header"}"#
        )?,
        24.0
    );
    Ok(())
}

/// Rules on headers the gateway rewrites for the upstream: each is decided on what the
/// upstream receives, never on the client's claim (attack review: every one of these was
/// allowed, and the upstream got the gateway's value).
const HEADER_RULES: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: headers, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/anything/secure]}}]
    when: [{key: "request.headers[x-forwarded-proto]", notValues: [https]}]
  - to: [{operation: {paths: [/anything/internal]}}]
    when: [{key: "request.headers[x-forwarded-client-cert]", notValues: ["*URI=spiffe://test.client"]}]
  - to: [{operation: {paths: [/anything/tenant]}}]
    when: [{key: "request.headers[x-tenant]", notValues: [public]}]
  - to: [{operation: {paths: [/anything/hosty]}}]
    when: [{key: "request.headers[host]", values: [x.test]}]
  - to: [{operation: {paths: [/anything/padded]}}]
    when: [{key: "request.headers[x-user]", values: [admin]}]
"#;

#[test]
fn authorization_reads_the_headers_the_upstream_receives() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = Walkthrough::prepare(dir.path())?;
    let rec = Recorder::start()?;
    std::fs::write(w.config.join("routing.yaml"), routing(rec.port))?;
    std::fs::write(w.config.join("header-rules.yaml"), HEADER_RULES)?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let gw = w.start_gateway(&["--admin", &admin])?;
    let mut failures = Vec::new();
    let mut expect = |what: String, got: (String, Option<String>), want: &str| {
        let reached = got.1.is_some();
        if got.0 != want || (want != "200" && reached) {
            failures.push(format!(
                "{what}: got {} (upstream reached: {reached}), want {want}",
                got.0
            ));
        }
    };
    use Client::{Plaintext, Principal};
    for h2 in [false, true] {
        let send =
            |client, path: &str, headers: &[&str]| send(&w, &gw, &rec, client, h2, path, headers);
        // x-forwarded-proto is the gateway's: https only on TLS.
        expect(
            format!("h2={h2} plaintext claiming https"),
            send(Plaintext, "/anything/secure", &["X-Forwarded-Proto: https"])?,
            "403",
        );
        expect(
            format!("h2={h2} mTLS"),
            send(Principal, "/anything/secure", &[])?,
            "200",
        );
        // XFCC is what the handshake verified, never the client's.
        expect(
            format!("h2={h2} plaintext with a forged XFCC"),
            send(
                Plaintext,
                "/anything/internal",
                &["X-Forwarded-Client-Cert: URI=spiffe://test.client"],
            )?,
            "403",
        );
        expect(
            format!("h2={h2} test.client over mTLS"),
            send(Principal, "/anything/internal", &[])?,
            "200",
        );
        // The canonical host, which HTTP/2 has no `host` header for until the gateway sets it.
        for host in ["x.test", "X.TEST", "x.test."] {
            expect(
                format!("h2={h2} host {host}"),
                send(Plaintext, "/anything/hosty", &[&format!("Host: {host}")])?,
                "403",
            );
        }
        expect(
            format!("h2={h2} host y.test"),
            send(Plaintext, "/anything/hosty", &["Host: y.test"])?,
            "200",
        );
    }
    // A field that `Connection` names is gone before the upstream: so it is for the policy.
    expect(
        "h1 x-tenant named in Connection".into(),
        send(
            &w,
            &gw,
            &rec,
            Plaintext,
            false,
            "/anything/tenant",
            &["X-Tenant: public", "Connection: x-tenant"],
        )?,
        "403",
    );
    expect(
        "h1 x-tenant".into(),
        send(
            &w,
            &gw,
            &rec,
            Plaintext,
            false,
            "/anything/tenant",
            &["X-Tenant: public"],
        )?,
        "200",
    );
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        gw.daemon.log()
    );

    // HTTP/2 values padded with whitespace: 400, nothing forwarded; unpadded, the DENY holds.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/h2c_header.py");
    for value in [" admin", "admin\t", "\tadmin ", "admin"] {
        let out = e2e::process::run(std::process::Command::new("python3").arg(&script).args([
            &gw.http_port.to_string(),
            "/anything/padded",
            "x-user",
            value,
        ]))?;
        let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let want = if value == "admin" { "403" } else { "400" };
        assert_eq!(
            status,
            want,
            "x-user: {value:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            rec.take_heads().is_empty(),
            "x-user: {value:?} reached the upstream"
        );
    }
    assert_eq!(
        metric(
            &admin,
            r#"portcullis_requests_refused_total{reason="header_value_whitespace"}"#
        )?,
        3.0
    );

    // HTTP/1.0 without any Host: no `hosts` rule could match it, so it is refused.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.http_port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(b"GET /get HTTP/1.0\r\n\r\n")?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.0 400") || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert!(
        rec.take_heads().is_empty(),
        "HTTP/1.0 without Host reached the upstream"
    );
    Ok(())
}

fn raw(authority: &str, host: Option<&str>, target: &str) -> RawRequest {
    RawRequest {
        host: host.map(str::to_owned),
        ..RawRequest::get(authority, target)
    }
}

/// The `Host` the upstream received in `head`.
fn upstream_host(head: &str) -> Vec<String> {
    fields(head)
        .into_iter()
        .filter(|(n, _)| n == "host")
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn malformed_or_disagreeing_hosts_are_refused_and_the_upstream_gets_a_canonical_one() -> Result<()>
{
    require_h2()?;
    let dir = tempfile::tempdir()?;
    let (w, rec, gw, admin) = start(dir.path())?;
    let client = gw.raw_client(Identity::Client);
    let hostile_h1 = [
        raw("test.com:1@other.example", None, "/get"),
        raw("test.com:x", None, "/get"),
        raw("test.com:99999", None, "/get"),
        raw("[::1", None, "/get"),
        raw("test.com,other.example", None, "/get"),
        // Absolute-form: userinfo in the target, and a target that disagrees with Host.
        raw("test.com", None, "https://simple.test:1@test.com/get"),
        raw("test.com", None, "https://test.com:1@other.example/get"),
        raw("other.example", None, "https://test.com/get"),
    ];
    let hostile_h2 = [
        raw("test.com:1@other.example", None, "/get"),
        raw("test.com:x", None, "/get"),
        raw("test.com", Some("other.example"), "/get"),
        raw("test.com", Some("test.com:1@other.example"), "/get"),
        raw("other.example", Some("test.com"), "/get"),
    ];
    for (proto, requests) in [(Proto::H1, &hostile_h1[..]), (Proto::H2, &hostile_h2[..])] {
        let outcomes = client.send(proto, requests, false)?;
        for (r, got) in requests.iter().zip(&outcomes) {
            // HTTP/2 may refuse an authority the `http` crate cannot parse before the gateway
            // sees it (a stream reset); either way nothing is served.
            let refused = got == "400" || (proto == Proto::H2 && got == "reset");
            assert!(refused, "{proto:?} {r:?}: {got}, must be refused");
        }
        let heads = rec.take_heads();
        assert!(
            heads.is_empty(),
            "{proto:?}: reached the upstream: {heads:?}"
        );
    }
    // Whitespace inside Host, over HTTP/1.1 (the raw client's line format has no room for it),
    // on the MUTUAL port and on plain HTTP.
    let (cert, key) = (w.certs.client_cert(), w.certs.client_key());
    let ca = w.certs.ca_cert();
    let resolve = format!("test.com:{}:127.0.0.1", gw.https_port);
    for host in [
        "test.com:30443 garbage",
        "test.com :443",
        "test.com:1@other.example",
    ] {
        let header = format!("Host: {host}");
        let (code, _) = curl(
            &format!("https://test.com:{}/get", gw.https_port),
            &[
                "--http1.1",
                "--resolve",
                &resolve,
                "--cacert",
                ca.to_str().context("ca")?,
                "--cert",
                cert.to_str().context("cert")?,
                "--key",
                key.to_str().context("key")?,
                "-H",
                &header,
            ],
        )?;
        assert_eq!(code, "400", "https {host:?}");
        let (code, _) = curl(
            &format!("http://127.0.0.1:{}/get", gw.http_port),
            &["-H", &header],
        )?;
        assert_eq!(code, "400", "http {host:?}");
        assert!(rec.take_heads().is_empty(), "{host:?} reached the upstream");
    }
    // Accepted spellings reach the upstream as one canonical Host.
    for (proto, r, want) in [
        (
            Proto::H1,
            raw("TEST.com:0443", None, "/get"),
            "test.com:443",
        ),
        (
            Proto::H1,
            raw("test.com", None, "https://Test.COM/get"),
            "test.com",
        ),
        (Proto::H2, raw("Test.Com", None, "/get"), "test.com"),
        (
            Proto::H2,
            raw("test.com", Some("test.com:443"), "/get"),
            "test.com",
        ),
    ] {
        let got = client.send(proto, std::slice::from_ref(&r), false)?;
        assert_eq!(got, ["200"], "{proto:?} {r:?}");
        let heads = rec.take_heads();
        assert_eq!(heads.len(), 1, "{proto:?} {r:?}: {heads:?}");
        assert_eq!(
            upstream_host(&heads[0]),
            [want],
            "{proto:?} {r:?}:\n{}",
            heads[0]
        );
    }
    let refused: f64 = [
        "authority_userinfo",
        "authority_bad_port",
        "authority_bad_character",
        "authority_bad_ipv6",
        "authority_mismatch",
    ]
    .iter()
    .map(|r| {
        metric(
            &admin,
            &format!("portcullis_requests_refused_total{{reason=\"{r}\"}}"),
        )
        .unwrap_or(0.0)
    })
    .sum();
    assert!(refused >= 13.0, "{refused} host refusals counted");
    Ok(())
}

/// RFC 9113 §8.2.3: HTTP/2 cookie fields arrive at an HTTP/1.1 upstream as one line.
#[test]
fn http2_cookie_fields_reach_the_upstream_as_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (w, rec, gw, _admin) = start(dir.path())?;
    for (client, h2) in [
        (Client::Principal, true),
        (Client::Plaintext, true),
        (Client::Principal, false),
    ] {
        let (code, head) = send(
            &w,
            &gw,
            &rec,
            client,
            h2,
            "/get",
            &["Cookie: a=1", "Cookie: b=2", "Cookie: c=3; d=4"],
        )?;
        let head = head.with_context(|| format!("{client:?} h2={h2}: not forwarded ({code})"))?;
        let cookies: Vec<String> = fields(&head)
            .into_iter()
            .filter(|(n, _)| n == "cookie")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            cookies,
            ["a=1; b=2; c=3; d=4"],
            "{client:?} h2={h2}:\n{head}"
        );
    }
    Ok(())
}

/// Trailer fields the attack review sent (issue 12), and what must not be in the trailers'
/// place upstream either.
const FORGED_TRAILERS: &[(&str, &str)] = &[
    (
        "x-forwarded-client-cert",
        "Hash=00;URI=spiffe://cluster.local/ns/prod/sa/admin",
    ),
    ("x_forwarded_client_cert", "URI=spiffe://forged.underscore"),
    ("x-original-url", "/status/418"),
    ("x-http-method-override", "DELETE"),
    ("x-envoy-original-path", "/status/418"),
    ("x-forwarded-for", "10.6.6.6"),
    ("x-forwarded-proto", "https"),
];

/// Request trailers (HTTP/1.1 chunked and HTTP/2) carrying forged gateway-managed and
/// override fields, on the plain port with no certificate: none of them reaches the upstream,
/// in the header section or after the body, and the upstream is not told to expect trailers.
#[test]
fn forged_request_trailers_never_reach_the_upstream() -> Result<()> {
    require_h2()?;
    let dir = tempfile::tempdir()?;
    let (_w, rec, gw, _admin) = start(dir.path())?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/trailers.py");
    for proto in ["h1", "h2"] {
        let out = std::process::Command::new("python3")
            .arg(&script)
            .args([&gw.http_port.to_string(), proto])
            .args(FORGED_TRAILERS.iter().map(|(n, v)| format!("{n}:{v}")))
            .output()
            .context("running trailers.py")?;
        let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(
            status,
            "200",
            "{proto}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut requests = rec.take_requests();
        assert_eq!(requests.len(), 1, "{proto}: {requests:?}");
        let request = requests.pop().unwrap_or_default();
        let lower = request.to_ascii_lowercase();
        assert!(
            lower.contains("hello"),
            "{proto}: the body was not recorded:\n{request}"
        );
        for needle in [
            "trailer:",
            "admin",
            "forged",
            "10.6.6.6",
            "x-original-url",
            "x-http-method-override",
            "x-envoy-original-path",
            "x-forwarded-client-cert",
            "x-forwarded-proto: https",
        ] {
            assert!(
                !lower.contains(needle),
                "{proto}: {needle} reached the upstream:\n{request}"
            );
        }
    }
    Ok(())
}

/// `get` and `Get` are refused with 400 and counted, over HTTP/1.1 and HTTP/2: policies match
/// methods exactly, and upstreams that uppercase them (Werkzeug) would serve them as `GET`
/// past a `methods: [GET]` DENY. Nothing reaches the upstream; `GET` still does.
#[test]
fn methods_with_lowercase_letters_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_w, rec, gw, admin) = start(dir.path())?;
    let url = format!("http://127.0.0.1:{}/get", gw.http_port);
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        for method in ["get", "Get", "gEt"] {
            let (code, _) = curl(&url, &[version, "-X", method])?;
            assert_eq!(code, "400", "{version} {method}");
            assert!(
                rec.take_heads().is_empty(),
                "{version} {method} was forwarded"
            );
        }
        let (code, _) = curl(&url, &[version, "-X", "GET"])?;
        assert_eq!(code, "200", "{version} GET");
        assert_eq!(rec.take_heads().len(), 1, "{version} GET");
    }
    assert_eq!(
        metric(
            &admin,
            r#"portcullis_requests_refused_total{reason="lowercase_method"}"#
        )?,
        6.0
    );
    assert!(
        gw.daemon
            .log()
            .contains("method refused: lowercase letters"),
        "not logged"
    );
    Ok(())
}

/// `Host: test.com.` is `test.com` to DNS and to upstream vhosts, so it must be `test.com` to
/// routes and `hosts:` rules too (attack review, issue 12: it bypassed a `hosts: [test.com]`
/// DENY on the plain port). The upstream gets the canonical name; `test.com..` is refused.
#[test]
fn one_trailing_dot_in_host_is_dropped_two_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_w, rec, gw, admin) = start(dir.path())?;
    let url = format!("http://127.0.0.1:{}/get", gw.http_port);
    for (host, want) in [("test.com.", "test.com"), ("Test.Com.:80", "test.com:80")] {
        let (code, _) = curl(&url, &["-H", &format!("Host: {host}")])?;
        assert_eq!(code, "200", "{host}");
        let heads = rec.take_heads();
        assert_eq!(heads.len(), 1, "{host}: {heads:?}");
        assert_eq!(upstream_host(&heads[0]), [want], "{host}:\n{}", heads[0]);
    }
    for host in ["test.com..", "127.0.0.1."] {
        let (code, _) = curl(&url, &["-H", &format!("Host: {host}")])?;
        assert_eq!(code, "400", "{host}");
        assert!(rec.take_heads().is_empty(), "{host} reached the upstream");
    }
    assert_eq!(
        metric(
            &admin,
            r#"portcullis_requests_refused_total{reason="authority_trailing_dot"}"#
        )?,
        2.0
    );
    Ok(())
}
