//! Debian's `prometheus`, started by a test on loopback.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::free_port;
use crate::process::{run, Daemon};
use crate::walkthrough::curl_in;

/// A Prometheus scraping admin listeners every second; killed on drop.
pub struct Prometheus {
    /// `127.0.0.1:PORT` of its HTTP API.
    pub api: String,
    /// The network namespace it runs in (queries run there too); `None`: this one.
    netns: Option<String>,
    daemon: Daemon,
}

impl Prometheus {
    /// Starts Prometheus with `dir` as its home, scraping `admin`'s `/stats/prometheus` (which
    /// need not be up yet).
    pub fn start(admin: &str, dir: &Path) -> Result<Self> {
        Self::start_in(None, &[admin], dir)
    }

    /// Starts Prometheus inside `netns` (or here), scraping every address in `targets`.
    pub fn start_in(netns: Option<&str>, targets: &[&str], dir: &Path) -> Result<Self> {
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
                   static_configs: [{{targets: [{}]}}]\n",
                targets
                    .iter()
                    .map(|t| format!("'{t}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )?;
        let api = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("prometheus");
                c
            }
            None => Command::new("prometheus"),
        };
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={api}"));
        let daemon = Daemon::spawn("prometheus", cmd, dir)?;
        let this = Self {
            api,
            netns: netns.map(str::to_owned),
            daemon,
        };
        let ready = format!("http://{}/-/ready", this.api);
        let up = (0..60).any(|_| {
            let ok = this.curl(&ready, &[]).is_ok_and(|(code, _)| code == "200");
            if !ok {
                std::thread::sleep(Duration::from_millis(500));
            }
            ok
        });
        if !up {
            bail!("prometheus did not start:\n{}", this.daemon.log());
        }
        Ok(this)
    }

    fn curl(&self, url: &str, extra: &[&str]) -> Result<(String, String)> {
        curl_in(self.netns.as_deref(), url, extra)
    }

    /// Runs an instant query until its JSON result contains `want` (scrapes are 1s apart);
    /// returns the result.
    pub fn query_until(&self, promql: &str, want: &str) -> Result<String> {
        let url = format!("http://{}/api/v1/query", self.api);
        let mut last = String::new();
        for _ in 0..60 {
            let (code, body) = self.curl(
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
