//! oha (a load generator nobody here wrote) as the load of the lifecycle tests: each worker
//! runs one bounded `oha -n` after another against the walkthrough gateway until stopped, and
//! every run's JSON summary is added up. Short runs on purpose: each starts new connections,
//! so handshakes keep happening across reloads, not only requests on old connections.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process::run;

/// One worker's oha command line, without the target.
#[derive(Clone, Debug)]
pub struct OhaWorker {
    /// For reports: "mTLS HTTP/2", …
    pub name: String,
    /// `http://…` or `https://test.com…` (then `--connect-to` points at the port).
    pub url: String,
    pub args: Vec<String>,
}

impl OhaWorker {
    /// Plain HTTP/1.1 to `127.0.0.1:port`.
    pub fn plain(port: u16, path: &str) -> Self {
        Self {
            name: format!("plain HTTP/1.1 {path}"),
            url: format!("http://127.0.0.1:{port}{path}"),
            args: Vec::new(),
        }
    }

    /// mTLS to `test.com` at `127.0.0.1:port` with the given client certificate.
    pub fn mtls(port: u16, path: &str, (ca, cert, key): (PathBuf, PathBuf, PathBuf)) -> Self {
        let mut args = vec![
            "--connect-to".to_owned(),
            format!("test.com:{port}:127.0.0.1:{port}"),
        ];
        for (flag, file) in [("--cacert", ca), ("--cert", cert), ("--key", key)] {
            args.push(flag.to_owned());
            args.push(file.display().to_string());
        }
        Self {
            name: format!("mTLS HTTP/1.1 {path}"),
            url: format!("https://test.com:{port}{path}"),
            args,
        }
    }

    /// HTTP/2 instead of HTTP/1.1.
    pub fn http2(mut self) -> Self {
        self.name = self.name.replace("HTTP/1.1", "HTTP/2");
        self.args.push("--http2".to_owned());
        self
    }

    /// A new connection (and TLS handshake) for every request.
    pub fn no_keepalive(mut self) -> Self {
        self.name.push_str(", a connection per request");
        self.args.push("--disable-keepalive".to_owned());
        self
    }

    /// `-c` connections, `-n` requests per run, at most `-q` per second.
    pub fn shape(mut self, connections: u32, requests: u32, per_second: u32) -> Self {
        for (flag, v) in [("-c", connections), ("-n", requests), ("-q", per_second)] {
            self.args.push(flag.to_owned());
            self.args.push(v.to_string());
        }
        self
    }
}

/// What oha runs reported, added up.
#[derive(Clone, Debug, Default)]
pub struct OhaTally {
    pub runs: u64,
    /// Responses per status code.
    pub statuses: BTreeMap<String, u64>,
    /// Failed requests per oha error message (connection errors, timeouts, …).
    pub errors: BTreeMap<String, u64>,
    /// Runs that exited non-zero or printed no summary, with what they said.
    pub broken_runs: Vec<String>,
}

impl OhaTally {
    pub fn responses(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Responses other than `status`, plus errors.
    pub fn failed(&self, status: &str) -> u64 {
        self.responses() - self.statuses.get(status).copied().unwrap_or(0) + self.errors()
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &OhaTally) {
        self.runs += other.runs;
        for (k, v) in &other.statuses {
            *self.statuses.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        self.broken_runs.extend(other.broken_runs.iter().cloned());
    }
}

/// Reads the status and error counts of one oha JSON summary.
pub fn parse(json: &[u8]) -> Result<OhaTally> {
    let v: Value = serde_json::from_slice(json).context("oha's output is not JSON")?;
    if v.get("summary").is_none() {
        bail!("no summary in oha's output");
    }
    let counts = |key: &str| -> Result<BTreeMap<String, u64>> {
        let Some(map) = v.get(key) else {
            return Ok(BTreeMap::new());
        };
        map.as_object()
            .with_context(|| format!("{key} is not an object"))?
            .iter()
            .map(|(k, n)| {
                n.as_u64()
                    .map(|n| (k.clone(), n))
                    .with_context(|| format!("{key}.{k} is not a count: {n}"))
            })
            .collect()
    };
    Ok(OhaTally {
        runs: 1,
        statuses: counts("statusCodeDistribution")?,
        errors: counts("errorDistribution")?,
        broken_runs: Vec::new(),
    })
}

/// Running workers; [`OhaLoad::stop`] joins them and returns each one's tally.
pub struct OhaLoad {
    stop: Arc<AtomicBool>,
    tallies: Vec<(String, Arc<Mutex<OhaTally>>)>,
    workers: Vec<JoinHandle<()>>,
}

impl OhaLoad {
    /// One thread per worker, each running oha after oha until stopped or after `limit`.
    pub fn start(workers: &[OhaWorker], limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tallies = Vec::new();
        let mut handles = Vec::new();
        for w in workers.iter().cloned() {
            let tally = Arc::new(Mutex::new(OhaTally::default()));
            tallies.push((w.name.clone(), tally.clone()));
            let stop = stop.clone();
            handles.push(std::thread::spawn(move || {
                let begin = Instant::now();
                while !stop.load(Ordering::SeqCst) && begin.elapsed() < limit {
                    let one = run_once(&w);
                    if let Ok(mut t) = tally.lock() {
                        t.add(&one);
                    }
                }
            }));
        }
        Self {
            stop,
            tallies,
            workers: handles,
        }
    }

    /// Stops the workers after their current run; returns (worker name, tally) for each.
    pub fn stop(self) -> Vec<(String, OhaTally)> {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            let _ = w.join();
        }
        self.tallies
            .into_iter()
            .map(|(name, t)| (name, t.lock().map(|t| t.clone()).unwrap_or_default()))
            .collect()
    }
}

fn run_once(w: &OhaWorker) -> OhaTally {
    // `timeout` bounds a run whatever oha does; `-t` bounds each request.
    let mut cmd = Command::new("timeout");
    cmd.args([
        "60",
        "oha",
        "--no-tui",
        "--output-format",
        "json",
        "-t",
        "10s",
    ])
    .args(&w.args)
    .arg(&w.url);
    let broken = |what: String| OhaTally {
        runs: 1,
        broken_runs: vec![format!("{}: {what}", w.name)],
        ..OhaTally::default()
    };
    let out = match run(&mut cmd) {
        Ok(out) => out,
        Err(e) => return broken(format!("{e:#}")),
    };
    if !out.status.success() {
        return broken(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse(&out.stdout).unwrap_or_else(|e| {
        broken(format!(
            "{e:#}: {}",
            String::from_utf8_lossy(&out.stdout)
                .chars()
                .take(300)
                .collect::<String>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_statuses_and_errors() {
        let t = parse(
            br#"{"summary":{"successRate":0.5},"statusCodeDistribution":{"200":3,"503":1},
            "errorDistribution":{"connection closed":2}}"#,
        )
        .unwrap();
        assert_eq!(t.responses(), 4);
        assert_eq!(t.errors(), 2);
        assert_eq!(t.failed("200"), 3);
    }

    #[test]
    fn refuses_output_without_a_summary() {
        assert!(parse(b"{}").is_err());
        assert!(parse(b"oops").is_err());
        assert!(parse(br#"{"summary":{},"statusCodeDistribution":{"200":"x"}}"#).is_err());
    }
}
