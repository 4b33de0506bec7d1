//! Instructions per request: a figure that does not drift with the machine's other load.
//! Hardware counters (`perf stat -e instructions`) are often missing on virtual machines, so
//! each proxy runs under `valgrind --tool=callgrind`; after a warm-up its counters are zeroed
//! (`callgrind_control --zero`), oha sends a fixed number of keep-alive requests, and the
//! dump (`callgrind_control --dump`) holds the instructions those requests cost.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::oha::{self, Load};
use super::peers::{Certs, Lab, Target, Tuning, SMALL_PATH};

#[derive(Clone, Debug, Serialize)]
pub struct InstrRecord {
    pub target: Target,
    pub requests: u64,
    pub instructions: u64,
}

impl InstrRecord {
    pub fn per_request(&self) -> f64 {
        self.instructions as f64 / self.requests.max(1) as f64
    }
}

fn callgrind_control(arg: &str, pid: u32) -> Result<()> {
    let out = Command::new("callgrind_control")
        .arg(arg)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .context("running callgrind_control")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {arg} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The `summary:`/`totals:` instruction count of the newest dump file in `dir`.
fn dumped_instructions(dir: &Path) -> Result<u64> {
    let newest = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("callgrind.out") && n.ends_with(".1"))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .with_context(|| format!("no callgrind dump in {dir:?}"))?;
    let text = std::fs::read_to_string(&newest)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no instruction total in {newest:?}"))
}

/// Waits (bounded) until a dump file appears: callgrind writes it when it next schedules.
fn wait_for_dump(dir: &Path) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match dumped_instructions(dir) {
            Ok(n) => return Ok(n),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Measures every proxy with `requests` keep-alive HTTP/1.1 requests on one connection (its
/// one handshake is in the count, amortized over the requests).
pub fn measure(
    lab: &Lab,
    certs: &Certs,
    raw_dir: &Path,
    requests: u64,
) -> Result<Vec<InstrRecord>> {
    eprintln!("bench: instructions per request under callgrind, {requests} keep-alive requests");
    let mut out = Vec::new();
    for target in Target::PROXIES {
        let rec = measure_one(
            lab,
            certs,
            raw_dir,
            requests,
            target,
            &Tuning::default(),
            target.name(),
        )?;
        eprintln!(
            "bench:   {target:<10} {:.0} instructions/request",
            rec.per_request()
        );
        out.push(rec);
    }
    Ok(out)
}

/// One security default of Portcullis turned off, for scenario 10.
#[derive(Clone, Debug, Serialize)]
pub struct SecurityCost {
    /// What is turned off, as the report names it.
    pub feature: &'static str,
    /// How: the `portcullis run` arguments or the configuration change.
    pub how: String,
    pub off: InstrRecord,
}

/// The security defaults that can be turned off without a bench-only option, each with the
/// tuning that turns it off. The caps (header size and count, connections in total and per
/// source, requests per upstream endpoint, HTTP/2 streams) have no "off": they are numbers
/// whose check runs whatever the number, so they are not in this list.
fn security_variants() -> Vec<(&'static str, String, Tuning)> {
    let args = |a: &[&str]| Tuning {
        portcullis_args: a.iter().map(|s| (*s).to_owned()).collect(),
        ..Tuning::default()
    };
    let deadlines_off = [
        "--tls-handshake-timeout",
        "off",
        "--header-read-timeout",
        "off",
        "--idle-timeout",
        "off",
        "--http2-keepalive",
        "off",
        "--upstream-connect-timeout",
        "off",
    ];
    vec![
        (
            "path normalization (MERGE_SLASHES)",
            "`--path-normalization NONE`".to_owned(),
            args(&["--path-normalization", "NONE"]),
        ),
        (
            "AuthorizationPolicy (one DENY rule, evaluated per request)",
            "the AuthorizationPolicy left out of the configuration".to_owned(),
            Tuning {
                no_authz: true,
                ..Tuning::default()
            },
        ),
        (
            "deadlines (TLS handshake, header read, idle, HTTP/2 PING, upstream connect)",
            format!("`{}`", deadlines_off.join(" ")),
            args(&deadlines_off),
        ),
    ]
}

/// What scenario 10 measured.
#[derive(Clone, Debug, Serialize)]
pub struct SecurityCosts {
    /// Portcullis with its defaults, first and last: the spread is the run-to-run noise
    /// (hash seeds, timers and allocator state differ between two runs of the same build).
    pub defaults: Vec<InstrRecord>,
    pub off: Vec<SecurityCost>,
}

impl SecurityCosts {
    /// The defaults' mean instructions per request.
    pub fn defaults_per_request(&self) -> f64 {
        let n = self.defaults.len().max(1) as f64;
        self.defaults
            .iter()
            .map(InstrRecord::per_request)
            .sum::<f64>()
            / n
    }
}

/// Scenario 10: Portcullis's instructions per request with its defaults, then with each
/// security default off once, then with its defaults again.
pub fn security_costs(
    lab: &Lab,
    certs: &Certs,
    raw_dir: &Path,
    requests: u64,
) -> Result<SecurityCosts> {
    eprintln!(
        "bench: scenario 10: cost of each security default, callgrind, {requests} keep-alive requests"
    );
    let defaults = |label: &str| -> Result<InstrRecord> {
        let rec = measure_one(
            lab,
            certs,
            raw_dir,
            requests,
            Target::Portcullis,
            &Tuning::default(),
            label,
        )?;
        eprintln!(
            "bench:   {:<60} {:.0} instructions/request",
            "defaults",
            rec.per_request()
        );
        Ok(rec)
    };
    let first = defaults("portcullis-defaults-1")?;
    let mut off = Vec::new();
    for (i, (feature, how, tuning)) in security_variants().into_iter().enumerate() {
        let rec = measure_one(
            lab,
            certs,
            raw_dir,
            requests,
            Target::Portcullis,
            &tuning,
            &format!("portcullis-off-{i}"),
        )?;
        eprintln!(
            "bench:   {:<60} {:.0} instructions/request off ({:+.0})",
            feature,
            rec.per_request(),
            first.per_request() - rec.per_request()
        );
        off.push(SecurityCost {
            feature,
            how,
            off: rec,
        });
    }
    let last = defaults("portcullis-defaults-2")?;
    Ok(SecurityCosts {
        defaults: vec![first, last],
        off,
    })
}

/// One target (started with `tuning`) under callgrind; `label` names its files
/// (`callgrind-LABEL/`, `instr-LABEL.json`).
fn measure_one(
    lab: &Lab,
    certs: &Certs,
    raw_dir: &Path,
    requests: u64,
    target: Target,
    tuning: &Tuning,
    label: &str,
) -> Result<InstrRecord> {
    let dir: PathBuf = lab.work.join(format!("callgrind-{label}"));
    std::fs::create_dir_all(&dir)?;
    let wrapper = vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}/callgrind.out.%p", dir.display()),
    ];
    let running = lab.start_wrapped(target, certs, &wrapper, Duration::from_secs(120), tuning)?;
    let pid = running.pid().context("a proxy has a pid")?;
    let load = |n: u64| Load {
        path: SMALL_PATH,
        connections: 1,
        duration: Duration::from_secs(300),
        requests: Some(n),
        http2: false,
        disable_keepalive: false,
        rate: None,
    };
    // Warm-up: connections set up, pools filled, lazy state built.
    oha::run(
        &load(200),
        &running,
        certs,
        &raw_dir.join("instr-warmup.json"),
    )?;
    callgrind_control("--zero", pid)?;
    let raw = raw_dir.join(format!("instr-{label}.json"));
    let s = oha::run(&load(requests), &running, certs, &raw)?;
    if s.count("200") != requests {
        bail!(
            "{target} ({label}): {} of {requests} requests got a 200",
            s.count("200")
        );
    }
    callgrind_control("--dump", pid)?;
    let instructions = wait_for_dump(&dir)?;
    drop(running);
    Ok(InstrRecord {
        target,
        requests,
        instructions,
    })
}
