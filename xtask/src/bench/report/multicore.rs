//! Scenario 9 in BENCHMARKS.md: one worker on one core against two on two, and what bound the
//! two-worker run on a machine whose second core the load generator also uses.

use std::fmt::Write as _;

use anyhow::Result;

use super::super::peers::Target;
use super::super::scenarios::{workers_variant, Record, Suite, MULTICORE_WORKERS};
use super::super::sys::{LOAD_CORE, PROXY_CORE};
use super::{ratio, rounds, Verdict};

/// oha at or above this share of its one core is the bound.
const LOAD_GEN_BOUND: f64 = 0.9;
/// Every core at or above this share busy: the machine is the bound.
const MACHINE_BOUND: f64 = 0.95;

/// What bound a run.
enum Bound {
    /// The proxy's workers used their cores.
    Proxy,
    /// oha used this share of its one core.
    LoadGenerator(f64),
    /// The load core (oha and the upstream) was busy this share of the time, oha this vCPU.
    LoadCore(f64, f64),
    /// Every core was busy (this share each), with oha's vCPU.
    Machine(Vec<f64>, f64),
    /// Nothing was saturated (latency, scheduling).
    Nothing,
}

impl Bound {
    fn of(r: &Record) -> Self {
        let cores = f64::from(r.workers.unwrap_or(1));
        if r.vcpu().is_some_and(|v| v >= LOAD_GEN_BOUND * cores) {
            return Self::Proxy;
        }
        let oha = r.load_gen_vcpu();
        let busy: Vec<f64> = r.machine.cpus.iter().map(|c| c.busy()).collect();
        if !busy.is_empty() && busy.iter().all(|&b| b >= MACHINE_BOUND) {
            return Self::Machine(busy, oha.unwrap_or(f64::NAN));
        }
        if let Some(&b) = busy
            .get(LOAD_CORE as usize)
            .filter(|&&b| b >= MACHINE_BOUND)
        {
            return Self::LoadCore(b, oha.unwrap_or(f64::NAN));
        }
        if let Some(v) = oha.filter(|&v| v >= LOAD_GEN_BOUND) {
            return Self::LoadGenerator(v);
        }
        Self::Nothing
    }

    fn short(&self) -> &'static str {
        match self {
            Self::Proxy => "the proxy",
            Self::LoadGenerator(_) => "the load generator",
            Self::LoadCore(..) => "the load core",
            Self::Machine(..) => "the machine",
            Self::Nothing => "nothing saturated",
        }
    }

    /// Why a target was missed, when the proxy was not what bound the run.
    fn reason(&self) -> Option<String> {
        match self {
            Self::Proxy | Self::Nothing => None,
            Self::LoadGenerator(v) => Some(format!(
                "the load generator: oha used {v:.2} vCPU of its one core"
            )),
            Self::LoadCore(b, oha) => Some(format!(
                "the load generator's core: core {LOAD_CORE} {:.0}% busy with oha ({oha:.2} vCPU) and the upstream",
                b * 100.0
            )),
            Self::Machine(busy, oha) => {
                let pct: Vec<String> = busy.iter().map(|b| format!("{:.0}%", b * 100.0)).collect();
                Some(format!(
                    "the machine, not the proxy: every core busy ({}), shared by the proxy, oha ({oha:.2} vCPU), the upstream and any other work on the machine",
                    pct.join(" / ")
                ))
            }
        }
    }
}

pub(super) fn multicore_section(
    md: &mut String,
    s: &Suite,
    verdicts: &mut Vec<Verdict>,
) -> Result<()> {
    let rows: Vec<&Record> = [Target::Portcullis, Target::Nginx]
        .into_iter()
        .flat_map(|t| {
            MULTICORE_WORKERS
                .iter()
                .flat_map(move |&w| s.of(9, &workers_variant(w)).into_iter())
                .filter(move |r| r.target == t)
        })
        .collect();
    writeln!(
        md,
        "## 9. Multi-core: one worker on one core, two on two (keep-alive HTTP/1.1, 1 KB, {} connections)\n\n\
         Portcullis with `--workers 1` pinned to core {PROXY_CORE}, then `--workers 2` on cores \
         {PROXY_CORE} and {next}; nginx for reference with `worker_processes 1` (no master) and \
         `worker_processes 2` (a master and two workers: its CPU is the three processes'). oha and \
         the upstream stay on core {next} in both runs, so the second worker shares its core with \
         the load generator: on this 2-core machine the two-worker figure is what is left once the \
         client has taken its share, and the oha and core columns say whether the load generator \
         (≥ {lg:.0}% of its core) or the machine (every core ≥ {mb:.0}% busy) was the bound when \
         the proxy's workers did not use ≥ {lg:.0}% of their cores. The ≥ 1.8× target applies \
         where neither was.\n",
        s.plan.connections,
        next = PROXY_CORE + 1,
        lg = LOAD_GEN_BOUND * 100.0,
        mb = MACHINE_BOUND * 100.0,
    )?;
    if rows.is_empty() {
        writeln!(md, "Not run.\n")?;
        return Ok(());
    }
    writeln!(
        md,
        "| target | workers | req/s | × 1 worker | p99 ms | proxy vCPU | proxy CPU µs/req | oha vCPU | cores busy | bound | every round |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"
    )?;
    let one = |t: Target| {
        s.of(9, &workers_variant(1))
            .into_iter()
            .find(|r| r.target == t)
    };
    let f = |v: Option<f64>, d: usize| v.map_or("–".to_owned(), |v| format!("{v:.d$}"));
    for r in &rows {
        let base = one(r.target).map(|b| b.summary.requests_per_sec);
        let busy: Vec<String> = r
            .machine
            .cpus
            .iter()
            .map(|c| format!("{:.0}%", c.busy() * 100.0))
            .collect();
        writeln!(
            md,
            "| {} | {} | {:.0} | {} | {:.3} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.workers.unwrap_or(1),
            r.summary.requests_per_sec,
            base.map_or("–".into(), |b| ratio(r.summary.requests_per_sec, b)),
            r.summary.p99_ms,
            f(r.vcpu(), 2),
            f(r.cpu_us_per_request(), 1),
            f(r.load_gen_vcpu(), 2),
            busy.join(" / "),
            Bound::of(r).short(),
            rounds(r, |k| k),
        )?;
    }
    writeln!(md)?;
    let two = |t: Target| {
        s.of(9, &workers_variant(2))
            .into_iter()
            .find(|r| r.target == t)
    };
    let pair = |t: Target| Some((one(t)?, two(t)?));
    if let Some((p1, p2)) = pair(Target::Portcullis) {
        let x = p2.summary.requests_per_sec / p1.summary.requests_per_sec.max(f64::EPSILON);
        let nginx = pair(Target::Nginx).map_or(String::new(), |(n1, n2)| {
            format!(
                "; nginx {}",
                ratio(n2.summary.requests_per_sec, n1.summary.requests_per_sec)
            )
        });
        let why = Bound::of(p2)
            .reason()
            .map_or(String::new(), |b| format!("; bound by {b}"));
        verdicts.push(Verdict {
            name:
                "multi-core: req/s with 2 workers ÷ 1 worker ≥ 1.8× (load generator not the bound)"
                    .into(),
            met: Some(x >= 1.8),
            detail: format!(
                "Portcullis {:.0} → {:.0} req/s ({x:.2}×){nginx}{why}",
                p1.summary.requests_per_sec, p2.summary.requests_per_sec
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::super::oha::Summary;
    use super::super::super::sys::{CpuDelta, CpuWindow};
    use super::*;

    /// A two-worker run of one second: the proxy's and oha's CPU seconds, each core's busy share.
    fn run(proxy: f64, oha: f64, busy: &[f64]) -> Record {
        Record {
            scenario: 9,
            variant: workers_variant(2),
            target: Target::Portcullis,
            summary: Summary {
                total_secs: 1.0,
                ..Summary::default()
            },
            cpu_secs: Some(proxy),
            peak_rss_kb: None,
            raw: PathBuf::new(),
            command: String::new(),
            load1: 0.0,
            rounds: Vec::new(),
            workers: Some(2),
            load_gen_cpu_secs: Some(oha),
            machine: CpuWindow {
                cpus: busy
                    .iter()
                    .map(|b| CpuDelta {
                        total_secs: 1.0,
                        idle_secs: 1.0 - b,
                        softirq_secs: 0.0,
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn what_bound_a_run() {
        assert_eq!(Bound::of(&run(1.9, 0.5, &[1.0, 1.0])).short(), "the proxy");
        let lg = Bound::of(&run(1.2, 0.95, &[0.5, 0.5]));
        assert_eq!(lg.short(), "the load generator");
        assert!(lg.reason().is_some_and(|r| r.contains("0.95 vCPU")));
        assert_eq!(
            Bound::of(&run(1.2, 0.5, &[0.99, 0.97])).short(),
            "the machine"
        );
        let mut busy = [0.5, 0.5];
        busy[LOAD_CORE as usize] = 0.99;
        assert_eq!(Bound::of(&run(1.2, 0.5, &busy)).short(), "the load core");
        let none = Bound::of(&run(1.2, 0.5, &[0.6, 0.6]));
        assert_eq!(none.short(), "nothing saturated");
        assert!(none.reason().is_none());
    }
}
