//! The walkthrough's DENY (`spiffe://test.client` may not read `/status/418`) against the real
//! httpbin from PyPI, whose Flask decodes the path before routing, as most frameworks do:
//! every spelling of `/status/418` an attacker would try, over HTTP/1.1 and HTTP/2, with curl
//! (`--path-as-is`) and with a raw client where curl would rewrite the target. None may reach
//! the teapot; each is refused (`403` by the policy, or `400` as a path the gateway will not
//! forward). The same spellings from an identity the policy does not deny do reach the teapot
//! where the gateway normalizes them: proof that they are real aliases of `/status/418` and
//! that the upstream receives the normalized path.

use std::time::Duration;

use anyhow::{Context, Result};
use e2e::free_port;
use e2e::rawhttp::{require_h2, Proto, RawRequest};
use e2e::walkthrough::{Gateway, Identity, Upstream, Walkthrough};

/// Spellings that decode to `/status/418`: normalized, then denied.
const ALIASES: &[&str] = &[
    "/status/418",
    "/status/%34%31%38",
    "/status/41%38",
    "/%73tatus/418",
    "/%73%74%61%74%75%73/%34%31%38",
    "/%53tatus/418/../../status/418",
    "//status/418",
    "/status//418",
    "///status///418",
    "/./status/418",
    "/status/./418",
    "/status/x/../418",
    "/x/../status/418",
    "/../status/418",
    "/status/%2e/418",
    "/status/x/%2E%2E/418",
    "/%2e%2e/status/418",
    "/status/418?x=1",
    "/status/%34%31%38?a=b&c=%2F",
];

/// Spellings the default mode (MERGE_SLASHES) refuses with 400: encoded slashes and
/// backslashes, a second layer of encoding, path parameters, an overlong UTF-8 `/`.
const REFUSED: &[&str] = &[
    "/status%2F418",
    "/status%2f418",
    "/status%5C418",
    "/status%5c418",
    "/status/x/..%2f418",
    "/%2573tatus/418",
    "/status/%25%34%31%38",
    "/status/418;x",
    "/status/..;/status/418",
    "/status%c0%af418",
    "/status/418%00",
    "/status/41%zz8",
    "/status/418%",
];

/// Other resources: never the teapot (the upstream answers for itself).
const OTHERS: &[&str] = &["/status/418/", "/STATUS/418", "/status/418/."];

/// Raw targets where curl would rewrite or refuse: backslashes, absolute-form, a fragment,
/// a tab, asterisk-form, no leading slash. The teapot must not answer any of them.
const RAW: &[&[u8]] = &[
    b"/status\\418",
    b"\\status\\418",
    b"/status/418#f",
    b"/status/418\t",
    b"https://test.com/status/418",
    b"https://test.com//status/%34%31%38",
    b"*",
    b"status/418",
    b"/status\xc0\xaf418",
];

/// Refused outcomes: the policy's 403, the gateway's 400, or no HTTP answer at all.
fn refused(outcome: &str) -> bool {
    matches!(outcome, "403" | "400" | "reset" | "closed" | "000")
}

fn curl_flags(proto: Proto) -> [&'static str; 2] {
    match proto {
        Proto::H1 => ["--http1.1", "--path-as-is"],
        Proto::H2 => ["--http2", "--path-as-is"],
    }
}

/// Sends every spelling as `identity` over both protocols; returns `(proto, path, outcome)`.
fn send_all(
    gw: &Gateway,
    identity: Identity,
    paths: &[&str],
) -> Result<Vec<(Proto, String, String)>> {
    let mut out = Vec::new();
    for proto in [Proto::H1, Proto::H2] {
        for path in paths {
            let code = gw.https_with(path, identity, &curl_flags(proto))?;
            out.push((proto, (*path).to_owned(), code));
        }
    }
    Ok(out)
}

fn send_raw(gw: &Gateway, identity: Identity) -> Result<Vec<(Proto, String, String)>> {
    let client = gw.raw_client(identity);
    let requests: Vec<RawRequest> = RAW.iter().map(|t| RawRequest::get("test.com", t)).collect();
    let mut out = Vec::new();
    for proto in [Proto::H1, Proto::H2] {
        let outcomes = client.send(proto, &requests, false)?;
        for (t, o) in RAW.iter().zip(outcomes) {
            out.push((proto, String::from_utf8_lossy(t).into_owned(), o));
        }
    }
    Ok(out)
}

fn table(rows: &[(Proto, String, String)]) -> String {
    rows.iter()
        .map(|(p, path, o)| format!("  {p:?} {path:?} -> {o}\n"))
        .collect()
}

fn admin_metrics(port: u16) -> Result<String> {
    let (code, body) =
        e2e::walkthrough::curl(&format!("http://127.0.0.1:{port}/stats/prometheus"), &[])?;
    anyhow::ensure!(code == "200", "metrics: {code}");
    Ok(body)
}

#[test]
fn no_spelling_of_a_denied_path_reaches_the_teapot() -> Result<()> {
    require_h2()?;
    let tmp = tempfile::tempdir()?;
    let wt = Walkthrough::prepare_with(tmp.path(), Upstream::PyPiHttpbin)?;
    let admin = free_port()?;
    let gw = wt.start_gateway(&["--admin", &format!("127.0.0.1:{admin}")])?;

    // The denied identity: every spelling is refused, none reaches the teapot.
    let mut rows = send_all(&gw, Identity::Client, ALIASES)?;
    rows.extend(send_all(&gw, Identity::Client, REFUSED)?);
    rows.extend(send_raw(&gw, Identity::Client)?);
    let denied_bypass: Vec<_> = rows
        .iter()
        .filter(|(_, _, o)| !refused(o))
        .cloned()
        .collect();
    let others = send_all(&gw, Identity::Client, OTHERS)?;
    let teapots: Vec<_> = others
        .iter()
        .filter(|(_, _, o)| o == "418")
        .cloned()
        .collect();
    eprintln!("spiffe://test.client:\n{}{}", table(&rows), table(&others));
    assert!(
        denied_bypass.is_empty() && teapots.is_empty(),
        "the DENY on /status/418 was bypassed:\n{}{}",
        table(&denied_bypass),
        table(&teapots)
    );

    // An identity the policy does not deny: the aliases are the teapot (the upstream got the
    // normalized path), the refused spellings are 400 for everyone.
    let allowed = send_all(&gw, Identity::Server, ALIASES)?;
    let wrong: Vec<_> = allowed
        .iter()
        .filter(|(_, _, o)| o != "418")
        .cloned()
        .collect();
    assert!(
        wrong.is_empty(),
        "aliases of /status/418 must reach the teapot for an allowed identity:\n{}",
        table(&wrong)
    );
    let bad = send_all(&gw, Identity::Server, REFUSED)?;
    let wrong: Vec<_> = bad.iter().filter(|(_, _, o)| o != "400").cloned().collect();
    assert!(
        wrong.is_empty(),
        "malformed or ambiguous paths are 400 for everyone:\n{}",
        table(&wrong)
    );

    // The refusals are counted by reason and logged with the path as received.
    let metrics = admin_metrics(admin)?;
    for reason in [
        "encoded_slash",
        "double_encoding",
        "path_parameter",
        "bad_encoding",
    ] {
        assert!(
            metrics.contains(&format!(
                "portcullis_requests_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason} is counted:\n{metrics}"
        );
    }
    let log = gw.daemon.log();
    assert!(
        log.contains("path refused") && log.contains("/status%2F418"),
        "the refusal is logged:\n{log}"
    );
    // The access log shows the path the policy saw and the upstream received.
    assert!(
        !log.contains("path=/status/%34%31%38"),
        "the access log shows the normalized path:\n{log}"
    );
    Ok(())
}

/// The other modes do what Istio's names say: DECODE_AND_MERGE_SLASHES decodes `%2F` (and the
/// DENY then holds); NONE forwards the path untouched (Istio's NONE: the bypass is back, which
/// is why it is not our default).
#[test]
fn path_normalization_modes_are_honoured() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let wt = Walkthrough::prepare_with(tmp.path(), Upstream::PyPiHttpbin)?;
    let decode = wt.start_gateway(&[
        "--admin",
        "off",
        "--path-normalization",
        "DECODE_AND_MERGE_SLASHES",
    ])?;
    for path in ["/status%2F418", "/status%5c418", "/%73tatus%2f%2F418"] {
        assert_eq!(decode.https(path, Identity::Client)?, "403", "{path}");
        assert_eq!(decode.https(path, Identity::Server)?, "418", "{path}");
    }
    assert_eq!(decode.https("/%2573tatus/418", Identity::Server)?, "400");
    drop(decode);
    std::thread::sleep(Duration::from_millis(100));

    let none = wt.start_gateway(&["--admin", "off", "--path-normalization", "NONE"])?;
    assert_eq!(
        none.https_with("/status/%34%31%38", Identity::Client, &["--path-as-is"])?,
        "418",
        "NONE forwards the path as received"
    );
    // Malformed is malformed in every mode.
    assert_eq!(none.https("/status/41%zz8", Identity::Client)?, "400");
    Ok(())
}

/// `explain` normalizes exactly as the daemon does and prints the path it decided on.
#[test]
fn explain_uses_the_same_normalization() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let wt = Walkthrough::prepare(tmp.path())?;
    let explain = |path: &str, extra: &[&str]| -> Result<(Option<i32>, String)> {
        let out = e2e::process::run(
            std::process::Command::new(e2e::portcullis_bin()?)
                .arg("explain")
                .arg("-c")
                .arg(&wt.config)
                .arg("--credentials")
                .arg(&wt.credentials)
                .args(["--principal", "spiffe://test.client", "--host", "test.com"])
                .args(["--path", path])
                .args(extra),
        )
        .context("explain")?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ))
    };
    let (code, out) = explain("/%73tatus//x/../418?q=1", &[])?;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("path: /status/418 (normalized, MERGE_SLASHES)"),
        "{out}"
    );
    assert!(out.contains("DENY"), "{out}");
    let (code, out) = explain("/status%2F418", &[])?;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("400") && out.contains("encoded slash"),
        "{out}"
    );
    let (code, out) = explain(
        "/status%2F418",
        &["--path-normalization", "DECODE_AND_MERGE_SLASHES"],
    )?;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("DENY"), "{out}");
    Ok(())
}
