//! The scenarios: which targets run under which load, in what order, and what is measured
//! besides oha's figures (the proxy's CPU seconds and peak RSS from `/proc`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::handshake::{self, HandshakeRecord};
use super::oha::{self, Load, Summary};
use super::peers::{Certs, KeyType, Lab, Running, Target, Tuning, BULK_PATH, SMALL_PATH};
use super::sys::{self, CpuTimes, CpuWindow, RssSampler};

/// How long things run: `--quick` keeps the whole suite under three minutes.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Plan {
    pub quick: bool,
    pub run: Duration,
    pub warmup: Duration,
    pub latency_run: Duration,
    pub connections: u32,
    pub rate: u32,
    /// Each target runs this many times, interleaved with the others; the best run is kept.
    pub rounds: u32,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        let secs = |q: u64, f: u64| Duration::from_secs(if quick { q } else { f });
        Self {
            quick,
            run: secs(3, 8),
            warmup: Duration::from_millis(if quick { 500 } else { 1000 }),
            latency_run: secs(6, 20),
            connections: 32,
            rate: 1000,
            rounds: if quick { 1 } else { 3 },
        }
    }
}

/// One measured run of one target.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub scenario: u8,
    /// `http1`, `http2`, `ecdsa-p256`, `1 conn`, …
    pub variant: String,
    pub target: Target,
    pub summary: Summary,
    /// CPU seconds the proxy used over the measured window.
    pub cpu_secs: Option<f64>,
    /// Peak resident memory of the proxy over the measured window, kB.
    pub peak_rss_kb: Option<u64>,
    pub raw: PathBuf,
    pub command: String,
    /// The 1-minute load average when the measured run started.
    pub load1: f64,
    /// The scenario's key figure in every round, in run order (the record is the best one).
    pub rounds: Vec<f64>,
    /// `--workers` / `worker_processes` when the run set it (scenario 9).
    pub workers: Option<u32>,
    /// CPU seconds oha used over the measured window: near one per second means the load
    /// generator, pinned to one core, was the bound.
    pub load_gen_cpu_secs: Option<f64>,
    /// What every CPU of the machine did over the measured window.
    pub machine: CpuWindow,
}

impl Record {
    /// vCPU used over the window: CPU seconds per wall second.
    pub fn vcpu(&self) -> Option<f64> {
        let wall = self.summary.total_secs;
        self.cpu_secs.filter(|_| wall > 0.0).map(|c| c / wall)
    }

    /// oha's vCPU over the window.
    pub fn load_gen_vcpu(&self) -> Option<f64> {
        let wall = self.summary.total_secs;
        self.load_gen_cpu_secs
            .filter(|c| wall > 0.0 && c.is_finite())
            .map(|c| c / wall)
    }

    /// The proxy's CPU time per response, µs: what a request costs the proxy whether or not
    /// the proxy was the bottleneck.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        let n = self.summary.responses();
        self.cpu_secs.filter(|_| n > 0).map(|c| c * 1e6 / n as f64)
    }

    /// The figure a scenario is judged by: req/s, handshakes/s, p99 or bytes/s.
    pub fn key(&self) -> f64 {
        match self.scenario {
            3 => self.summary.p99_ms,
            4 => self.summary.bytes_per_sec,
            _ => self.summary.requests_per_sec,
        }
    }
}

/// The shared state of a suite run.
pub struct Suite {
    pub plan: Plan,
    pub lab: Lab,
    pub ecdsa: Certs,
    pub rsa: Certs,
    pub raw_dir: PathBuf,
    pub records: Vec<Record>,
    /// Scenario 2 with resumption off (the suite's own client).
    pub full_handshakes: Vec<HandshakeRecord>,
}

/// Every target in the order it runs: the ceiling first, then the proxies.
const ALL: [Target; 4] = [
    Target::Direct,
    Target::Portcullis,
    Target::Nginx,
    Target::Haproxy,
];

impl Suite {
    fn certs(&self, key: KeyType) -> &Certs {
        match key {
            KeyType::EcdsaP256 => &self.ecdsa,
            KeyType::Rsa2048 => &self.rsa,
        }
    }

    /// Starts `target`, checks it serves the file and denies the DENY path, warms it up,
    /// then measures `load`.
    fn measure(
        &mut self,
        scenario: u8,
        variant: &str,
        target: Target,
        key: KeyType,
        load: Load,
    ) -> Result<()> {
        self.measure_tuned(scenario, variant, target, key, load, &Tuning::default())
    }

    /// [`Suite::measure`] with the target started with `tuning`.
    fn measure_tuned(
        &mut self,
        scenario: u8,
        variant: &str,
        target: Target,
        key: KeyType,
        load: Load,
        tuning: &Tuning,
    ) -> Result<()> {
        let certs = self.certs(key).clone();
        let running = self.lab.start_tuned(target, &certs, tuning)?;
        self.check_behaviour(&running, &certs, &load)
            .with_context(|| format!("{target} does not behave as configured"))?;
        let warm = Load {
            duration: self.plan.warmup,
            requests: None,
            rate: None,
            ..load.clone()
        };
        let warm_raw = self.raw_dir.join("warmup.json");
        oha::run(&warm, &running, &certs, &warm_raw)?;

        let name = format!(
            "s{scenario}-{}-{}",
            variant.replace([' ', '/'], "_"),
            target
        );
        let raw = oha::raw_path(&self.raw_dir, &name);
        let pid = running.pid();
        let load1 = sys::load1();
        // The whole process tree: nginx with several workers is a master and its children.
        let cpu_before = pid.map(sys::tree_cpu_seconds).transpose()?;
        let sampler = pid.map(RssSampler::start);
        let oha_before = sys::reaped_children_cpu_seconds();
        let machine_before = CpuTimes::read()?;
        let summary = oha::run(&load, &running, &certs, &raw)?;
        let machine = machine_before.since(&CpuTimes::read()?);
        // oha is the only child reaped in the window (the targets are reaped when dropped).
        let load_gen_cpu_secs =
            Some(sys::reaped_children_cpu_seconds() - oha_before).filter(|c| c.is_finite());
        let cpu_secs = match (pid, cpu_before) {
            (Some(pid), Some(before)) => Some(sys::tree_cpu_seconds(pid)? - before),
            _ => None,
        };
        let peak_rss_kb = sampler.map(RssSampler::finish);
        let command = oha::shell_line(&oha::command(&load, &running, &certs));
        drop(running);

        let ok = summary.count("200");
        let wall = summary.total_secs.max(f64::EPSILON);
        let busy: Vec<String> = machine
            .cpus
            .iter()
            .map(|c| format!("{:.0}%", c.busy() * 100.0))
            .collect();
        eprintln!(
            "bench:   {target:<10} {:>10.0} req/s  {:>9.1} MB/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  200s {ok}/{}{}  oha {:.2} vCPU  cores busy {}",
            summary.requests_per_sec,
            summary.bytes_per_sec / 1e6,
            summary.p50_ms,
            summary.p99_ms,
            summary.p999_ms,
            summary.responses(),
            cpu_secs.map_or(String::new(), |c| format!("  cpu {c:.2} s  rss {} kB", peak_rss_kb.unwrap_or(0))),
            load_gen_cpu_secs.unwrap_or(f64::NAN) / wall,
            busy.join("/"),
        );
        if ok == 0 {
            bail!(
                "{target}: no request succeeded in {raw:?}: {:?}",
                summary.errors
            );
        }
        self.records.push(Record {
            scenario,
            variant: variant.to_owned(),
            target,
            summary,
            cpu_secs,
            peak_rss_kb,
            raw,
            command,
            load1,
            rounds: Vec::new(),
            workers: tuning.workers,
            load_gen_cpu_secs,
            machine,
        });
        Ok(())
    }

    /// Keeps, of every target's rounds in `scenario`, its best run (highest throughput, or
    /// lowest p99 for the fixed-rate scenario); all rounds' figures stay on it. Best, not
    /// median: on a shared machine other work only ever makes a run slower, so the best round
    /// is the one closest to what the target can do, for every target alike.
    fn keep_best(&mut self, scenario: u8) {
        let (mine, rest): (Vec<Record>, Vec<Record>) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| r.scenario == scenario);
        self.records = rest;
        let mut groups: Vec<Vec<Record>> = Vec::new();
        for r in mine {
            match groups
                .iter_mut()
                .find(|g| g[0].variant == r.variant && g[0].target == r.target)
            {
                Some(g) => g.push(r),
                None => groups.push(vec![r]),
            }
        }
        for mut g in groups {
            let rounds: Vec<f64> = g.iter().map(Record::key).collect();
            g.sort_by(|a, b| a.key().total_cmp(&b.key()));
            // Sorted ascending: p99 is best first, throughput best last.
            let mut best = if scenario == 3 {
                g.swap_remove(0)
            } else {
                g.pop().expect("a group has a record")
            };
            best.rounds = rounds;
            self.records.push(best);
        }
    }

    /// One request for the file (200) and, through a proxy, one for the DENY path (403): the
    /// peers are configured to do what Portcullis does, and this proves it.
    fn check_behaviour(&self, running: &Running, certs: &Certs, load: &Load) -> Result<()> {
        let mut probes = vec![(load.path, "200")];
        if running.target != Target::Direct {
            probes.push(("/status/418", "403"));
        }
        for (path, want) in probes {
            let probe = Load {
                path,
                connections: 1,
                requests: Some(1),
                rate: None,
                ..load.clone()
            };
            let raw = self.raw_dir.join("probe.json");
            let s = oha::run(&probe, running, certs, &raw)?;
            if s.count(want) != 1 {
                bail!(
                    "{} {path}: wanted one {want}, got {:?} {:?}",
                    running.target,
                    s.status,
                    s.errors
                );
            }
        }
        Ok(())
    }

    fn keepalive(&self, http2: bool) -> Load {
        Load {
            path: SMALL_PATH,
            connections: self.plan.connections,
            duration: self.plan.run,
            requests: None,
            http2,
            disable_keepalive: false,
            rate: None,
        }
    }

    /// Scenario 1: keep-alive mTLS requests per second, 1 KB responses, 32 connections.
    pub fn keepalive_rps(&mut self) -> Result<()> {
        for (variant, http2) in [("HTTP/1.1", false), ("HTTP/2", true)] {
            eprintln!(
                "bench: scenario 1: keep-alive req/s, {variant}, {} connections",
                self.plan.connections
            );
            for _ in 0..self.plan.rounds {
                for target in ALL {
                    let load = self.keepalive(http2);
                    self.measure(1, variant, target, KeyType::EcdsaP256, load)?;
                }
            }
        }
        self.keep_best(1);
        Ok(())
    }

    /// Scenario 2: one full mTLS handshake per request.
    pub fn handshakes(&mut self) -> Result<()> {
        for key in [KeyType::EcdsaP256, KeyType::Rsa2048] {
            eprintln!(
                "bench: scenario 2: handshakes/s, {} certificates, one request per connection",
                key.cli_name()
            );
            let targets: &[Target] = if key == KeyType::EcdsaP256 {
                &ALL
            } else {
                &Target::PROXIES
            };
            for _ in 0..self.plan.rounds {
                for &target in targets {
                    let load = Load {
                        disable_keepalive: true,
                        connections: 16,
                        ..self.keepalive(false)
                    };
                    self.measure(2, key.cli_name(), target, key, load)?;
                }
            }
        }
        self.keep_best(2);
        for key in [KeyType::EcdsaP256, KeyType::Rsa2048] {
            eprintln!(
                "bench: scenario 2: full handshakes/s, {} certificates, resumption off",
                key.cli_name()
            );
            let certs = self.certs(key).clone();
            let recs = handshake::measure(&self.lab, &certs, key, self.plan.run)?;
            self.full_handshakes.extend(recs);
        }
        Ok(())
    }

    /// Scenario 3: a fixed 1000 req/s open loop; latency over direct, CPU and peak RSS.
    pub fn fixed_rate(&mut self) -> Result<()> {
        eprintln!(
            "bench: scenario 3: {} req/s open loop for {:?}, latency-corrected",
            self.plan.rate, self.plan.latency_run
        );
        for _ in 0..self.plan.rounds {
            for target in ALL {
                let load = Load {
                    duration: self.plan.latency_run,
                    rate: Some(self.plan.rate),
                    ..self.keepalive(false)
                };
                self.measure(3, "1000 req/s", target, KeyType::EcdsaP256, load)?;
            }
        }
        self.keep_best(3);
        Ok(())
    }

    /// Scenario 4: bulk throughput, 10 MB responses, 1 and 16 connections.
    pub fn bulk(&mut self) -> Result<()> {
        for conns in [1u32, 16] {
            eprintln!("bench: scenario 4: bulk MB/s, 10 MB responses, {conns} connection(s)");
            for _ in 0..self.plan.rounds {
                for target in ALL {
                    let load = Load {
                        path: BULK_PATH,
                        connections: conns,
                        ..self.keepalive(false)
                    };
                    let variant = format!("{conns} conn");
                    self.measure(4, &variant, target, KeyType::EcdsaP256, load)?;
                }
            }
        }
        self.keep_best(4);
        Ok(())
    }

    /// Scenario 9: keep-alive HTTP/1.1 req/s with one worker on one core and two workers on
    /// both, for Portcullis (`--workers`) and nginx (`worker_processes`, for reference). oha
    /// and the upstream stay on the load core, which the second worker shares with them: the
    /// report says whether the load generator or the machine was the bound.
    pub fn multicore(&mut self) -> Result<()> {
        eprintln!(
            "bench: scenario 9: keep-alive HTTP/1.1 req/s, 1 worker on 1 core vs 2 workers on 2 cores, {} connections",
            self.plan.connections
        );
        for _ in 0..self.plan.rounds {
            for target in [Target::Portcullis, Target::Nginx] {
                for workers in MULTICORE_WORKERS {
                    let load = self.keepalive(false);
                    let tuning = Tuning::workers(workers);
                    let variant = workers_variant(workers);
                    self.measure_tuned(9, &variant, target, KeyType::EcdsaP256, load, &tuning)?;
                }
            }
        }
        self.keep_best(9);
        Ok(())
    }

    /// The records of one scenario and variant.
    pub fn of(&self, scenario: u8, variant: &str) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| r.scenario == scenario && r.variant == variant)
            .collect()
    }
}

/// The worker counts scenario 9 compares.
pub const MULTICORE_WORKERS: [u32; 2] = [1, 2];

/// Scenario 9's variant name for a worker count.
pub fn workers_variant(workers: u32) -> String {
    if workers == 1 {
        "1 worker".to_owned()
    } else {
        format!("{workers} workers")
    }
}

/// Runs one scenario and says how long it took.
pub fn timed<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let out = f();
    eprintln!("bench: {name} took {:.1} s", start.elapsed().as_secs_f64());
    out
}
