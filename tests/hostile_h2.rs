//! HTTP/2 clients that misbehave on purpose (issue 14 part 1), driven frame by frame by
//! `tests/fixtures/h2/abuse.py` (hyperframe + hpack from the PyPI `h2` package): the rapid-reset
//! flood, a CONTINUATION flood that never ends its header block, more concurrent streams than
//! the gateway allows, and an idle HTTP/2 connection. Each time the daemon must stay up with
//! bounded memory, end the abusive connection (GOAWAY or close), and keep serving a normal
//! mTLS client.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use e2e::hostile::{proc_status_kb, wait_limit, Setup};
use e2e::process::run;
use serde_json::Value;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/h2/abuse.py")
}

/// Runs the abusive client in `mode` against the gateway; returns its JSON report.
fn abuse(s: &Setup, mode: &str, extra: &[&str]) -> Result<Value> {
    let check = run(Command::new("python3").args(["-c", "import h2, hpack, hyperframe"]))?;
    if !check.status.success() {
        bail!("the PyPI h2 package is not installed (`pip install h2`; .ci/install-prereqs installs it)");
    }
    let certs = &s.w.certs;
    let out = run(Command::new("timeout")
        .arg("60")
        .arg("python3")
        .arg(script())
        .arg(mode)
        .args(["--port", &s.gw.https_port.to_string()])
        .arg("--ca")
        .arg(certs.ca_cert())
        .arg("--cert")
        .arg(certs.client_cert())
        .arg("--key")
        .arg(certs.client_key())
        .args(extra))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "abuse.py {mode} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("abuse.py {mode} printed {stdout:?}"))?;
    eprintln!("abuse.py {mode} {extra:?}: {report}");
    Ok(report)
}

/// The abusive connection ended from the gateway's side: a GOAWAY, or a close (not a stall).
fn ended_by_gateway(r: &Value) -> bool {
    !r["goaway"].is_null() || (r["closed"] == true && r["stalled"] != true)
}

fn check_daemon(s: &mut Setup, when: &str, rss_limit_kb: u64) -> Result<()> {
    let pid = s.gw.daemon.pid();
    let rss = proc_status_kb(pid, "VmRSS")?;
    let hwm = proc_status_kb(pid, "VmHWM")?;
    eprintln!("daemon RSS {when}: {rss} kB (peak {hwm} kB)");
    assert!(
        hwm < rss_limit_kb,
        "memory stays bounded {when}: peak {hwm} kB >= {rss_limit_kb} kB"
    );
    s.assert_alive_and_serving(when)
}

/// Generous: the debug build idles near 20 MB; an unbounded header buffer or stream table
/// under these floods grows past this.
const RSS_LIMIT_KB: u64 = 300 * 1024;

#[test]
fn rapid_reset_flood_is_cut_off() -> Result<()> {
    let mut s = Setup::start(&[])?;
    let r = abuse(&s, "rapid-reset", &["--count", "20000"])?;
    assert!(
        ended_by_gateway(&r),
        "the gateway ends a rapid-reset connection: {r}"
    );
    assert!(
        r["sent"].as_u64().unwrap_or(0) < 20000,
        "the flood is cut off before it completes: {r}"
    );
    wait_limit(&s.admin, "http2_rapid_reset", 1.0)?;
    check_daemon(&mut s, "after the rapid-reset flood", RSS_LIMIT_KB)
}

#[test]
fn continuation_flood_is_cut_off() -> Result<()> {
    let mut s = Setup::start(&[])?;
    // Big fragments: the header list passes the size limit long before 20 MB.
    let r = abuse(&s, "continuation", &["--count", "20000", "--size", "1024"])?;
    assert!(ended_by_gateway(&r), "a CONTINUATION flood is ended: {r}");
    assert!(
        r["sent"].as_u64().unwrap_or(0) < 20000,
        "the flood is cut off before it completes: {r}"
    );
    // Empty fragments: no size ever accumulates, only the frame count.
    let r = abuse(&s, "continuation", &["--count", "200000", "--size", "0"])?;
    assert!(
        ended_by_gateway(&r),
        "a flood of empty CONTINUATION frames is ended: {r}"
    );
    check_daemon(&mut s, "after the CONTINUATION floods", RSS_LIMIT_KB)
}

/// Opens 300 concurrent slow streams; at most `cap` may run.
fn streams_over(s: &mut Setup, cap: u64) -> Result<()> {
    let r = abuse(s, "streams", &["--count", "300", "--wait", "1"])?;
    assert_eq!(
        r["server_max_streams"], cap,
        "the gateway advertises its cap in SETTINGS: {r}"
    );
    let ok = r["statuses"]["200"].as_u64().unwrap_or(0);
    let refused = r["resets"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>());
    eprintln!("300 concurrent streams, cap {cap}: {ok} answered 200, {refused} reset");
    assert!(
        ok <= cap,
        "no more than the cap run at once ({ok} answered): {r}"
    );
    assert!(
        refused > 0 || !r["goaway"].is_null(),
        "streams over the cap are refused: {r}"
    );
    check_daemon(s, "after the stream flood", RSS_LIMIT_KB)
}

#[test]
fn streams_over_the_concurrency_cap_are_refused() -> Result<()> {
    // The default first (so this shows the old code's cap), then the flag.
    streams_over(&mut Setup::start(&[])?, 100)?;
    streams_over(
        &mut Setup::start(&["--http2-max-concurrent-streams", "50"])?,
        50,
    )
}

#[test]
fn idle_http2_connection_is_closed_by_the_idle_timeout() -> Result<()> {
    let mut s = Setup::start(&["--idle-timeout", "2s", "--http2-keepalive", "60s"])?;
    let r = abuse(&s, "idle", &["--wait", "15"])?;
    assert!(
        ended_by_gateway(&r),
        "an idle HTTP/2 connection is closed: {r}"
    );
    wait_limit(&s.admin, "idle_timeout", 1.0)?;
    check_daemon(&mut s, "after the idle HTTP/2 connection", RSS_LIMIT_KB)
}
