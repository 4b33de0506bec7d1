//! Runs the load generator, `oha`, on the load core and reads its JSON summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::peers::{Certs, Running, Target};
use super::sys::{pinned, LOAD_CORE};

/// One oha run.
#[derive(Clone, Debug)]
pub struct Load {
    pub path: &'static str,
    pub connections: u32,
    /// Stop after this long, or after `requests` when set.
    pub duration: Duration,
    pub requests: Option<u64>,
    pub http2: bool,
    pub disable_keepalive: bool,
    /// Open loop at this many requests per second, with latency correction.
    pub rate: Option<u32>,
}

/// What the report needs from oha's JSON.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub requests_per_sec: f64,
    pub bytes_per_sec: f64,
    pub success_rate: f64,
    pub total_secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub status: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    /// Responses of one status code.
    pub fn count(&self, code: &str) -> u64 {
        self.status.get(code).copied().unwrap_or(0)
    }
    pub fn responses(&self) -> u64 {
        self.status.values().sum()
    }
}

/// The oha command line for `load` against `run` (shown in the report as the way to reproduce).
pub fn command(load: &Load, run: &Running, certs: &Certs) -> Command {
    let mut cmd = pinned(LOAD_CORE, "oha");
    cmd.args(["--no-tui", "--output-format", "json", "-t", "10s"])
        .args(["-c", &load.connections.to_string()]);
    match load.requests {
        Some(n) => cmd.args(["-n", &n.to_string()]),
        None => cmd.args(["-z", &format!("{}ms", load.duration.as_millis())]),
    };
    if let Some(rate) = load.rate {
        cmd.args(["-q", &rate.to_string(), "--latency-correction"]);
    }
    if load.disable_keepalive {
        cmd.arg("--disable-keepalive");
    }
    if run.target == Target::Direct {
        cmd.arg(format!("http://127.0.0.1:{}{}", run.port, load.path));
        return cmd;
    }
    if load.http2 {
        cmd.arg("--http2");
    }
    cmd.arg("--cacert")
        .arg(certs.ca())
        .arg("--cert")
        .arg(certs.client_cert())
        .arg("--key")
        .arg(certs.client_key())
        .arg("--connect-to")
        .arg(format!("test.com:443:127.0.0.1:{}", run.port))
        .arg(format!("https://test.com{}", load.path));
    cmd
}

/// Shell-quoted form of a command, for the report.
pub fn shell_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let s = a.to_string_lossy();
            if s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%".contains(c))
            {
                s.into_owned()
            } else {
                format!("'{s}'")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs oha, saves its JSON as `raw`, and parses it.
pub fn run(load: &Load, target: &Running, certs: &Certs, raw: &Path) -> Result<Summary> {
    let mut cmd = command(load, target, certs);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", shell_line(&cmd)))?;
    std::fs::write(raw, &out.stdout).with_context(|| format!("writing {raw:?}"))?;
    if !out.status.success() {
        bail!(
            "oha failed ({}): {}\n{}",
            out.status,
            shell_line(&cmd),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&out.stdout).with_context(|| format!("parsing oha's JSON in {raw:?}"))
}

fn num(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn counts(v: Option<&Value>) -> BTreeMap<String, u64> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn parse(json: &[u8]) -> Result<Summary> {
    let v: Value = serde_json::from_slice(json)?;
    if v.get("summary").is_none() {
        bail!("no summary in oha's output");
    }
    Ok(Summary {
        requests_per_sec: num(&v, &["summary", "requestsPerSec"]),
        bytes_per_sec: num(&v, &["summary", "sizePerSec"]),
        success_rate: num(&v, &["summary", "successRate"]),
        total_secs: num(&v, &["summary", "total"]),
        p50_ms: num(&v, &["latencyPercentiles", "p50"]) * 1e3,
        p99_ms: num(&v, &["latencyPercentiles", "p99"]) * 1e3,
        p999_ms: num(&v, &["latencyPercentiles", "p99.9"]) * 1e3,
        status: counts(v.get("statusCodeDistribution")),
        errors: counts(v.get("errorDistribution")),
    })
}

/// `target/bench/<name>.json`.
pub fn raw_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_the_report_uses() {
        let json = br#"{"summary":{"successRate":1.0,"total":2.0,"requestsPerSec":1500.5,
            "sizePerSec":1024.0},"latencyPercentiles":{"p50":0.001,"p99":0.002,"p99.9":0.004},
            "statusCodeDistribution":{"200":3000,"403":1},"errorDistribution":{}}"#;
        let s = parse(json).unwrap();
        assert_eq!(s.requests_per_sec, 1500.5);
        assert_eq!(s.p50_ms, 1.0);
        assert_eq!(s.p999_ms, 4.0);
        assert_eq!(s.count("200"), 3000);
        assert_eq!(s.responses(), 3001);
    }

    #[test]
    fn refuses_output_without_a_summary() {
        assert!(parse(b"{}").is_err());
        assert!(parse(b"not json").is_err());
    }
}
