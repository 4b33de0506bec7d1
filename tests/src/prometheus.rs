//! Debian's `prometheus`, started by a test on loopback.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{run, Daemon};
use crate::walkthrough::curl;
use crate::{free_port, wait_for_port};

/// A Prometheus scraping one admin listener every second; killed on drop.
pub struct Prometheus {
    /// `127.0.0.1:PORT` of its HTTP API.
    pub api: String,
    daemon: Daemon,
}

impl Prometheus {
    /// Starts Prometheus with `dir` as its home, scraping `admin`'s `/stats/prometheus` (which
    /// need not be up yet).
    pub fn start(admin: &str, dir: &Path) -> Result<Self> {
        if run(Command::new("prometheus").arg("--version")).is_err() {
            bail!("`prometheus` is not installed (`apt-get install prometheus`; .ci/install-prereqs installs it)");
        }
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: portcullis\n  \
                   metrics_path: /stats/prometheus\n  \
                   static_configs: [{{targets: ['{admin}']}}]\n"
            ),
        )?;
        let api = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={api}"));
        let daemon = Daemon::spawn("prometheus", cmd, dir)?;
        wait_for_port(api.parse()?, Duration::from_secs(30))
            .with_context(|| format!("prometheus did not start:\n{}", daemon.log()))?;
        Ok(Self { api, daemon })
    }

    /// Runs an instant query until its JSON result contains `want` (scrapes are 1s apart);
    /// returns the result.
    pub fn query_until(&self, promql: &str, want: &str) -> Result<String> {
        let url = format!("http://{}/api/v1/query", self.api);
        let mut last = String::new();
        for _ in 0..60 {
            let (code, body) = curl(
                &url,
                &["-G", "--data-urlencode", &format!("query={promql}")],
            )?;
            if code == "200" && body.contains(want) {
                eprintln!("PromQL {promql}\n  => {body}");
                return Ok(body);
            }
            last = body;
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!(
            "PromQL {promql} never returned {want}; last answer: {last}\nprometheus log:\n{}",
            self.daemon.log()
        )
    }
}
