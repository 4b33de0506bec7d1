//! `cargo xtask bench`: Portcullis against nginx, HAProxy and no proxy, measured in one run by
//! a load generator nobody here wrote (oha), written up as BENCHMARKS.md with SVG charts.
//!
//! One module per job: `sys` (machine, tools, pinning, /proc), `peers` (the targets and their
//! configurations), `oha` (the load generator), `idle` (the idle-connection holder),
//! `scenarios` (what runs), `report` (BENCHMARKS.md), `charts` (its SVG charts).

mod charts;
mod client;
mod handshake;
mod idle;
mod instr;
mod oha;
mod peers;
mod report;
mod scenarios;
mod strict;
mod sys;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use self::peers::{Certs, KeyType, Lab};
use self::scenarios::{Plan, Suite};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Short runs (the whole suite in under three minutes) and 1,000 idle connections.
    #[arg(long)]
    pub quick: bool,
    /// Scenarios to run (1 keep-alive, 2 handshakes, 3 fixed rate, 4 bulk, 5 idle, 6 authz,
    /// 7 STRICT rejection in network namespaces (root only), 8 instructions per request,
    /// 9 one worker vs two, 10 instructions per request with each security default off).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7,8,9,10")]
    pub scenarios: Vec<u8>,
    /// Use this portcullis binary instead of building `--release` from the workspace.
    #[arg(long, value_name = "PATH")]
    pub portcullis_bin: Option<PathBuf>,
}

pub fn run(args: BenchArgs, workspace: &Path, target_dir: &Path) -> Result<()> {
    sys::ensure_tools()?;
    let wants_authz = args.scenarios.contains(&6);
    // Built before the clock starts (the measuring, not the compiling, is what `--quick` keeps
    // under three minutes), in one cargo invocation so the daemon and the criterion bench
    // share one feature resolution and one compile of the library, and run as those binaries,
    // so a change to the tree mid-run cannot trigger a rebuild.
    let (built, authz_exe) = build_release(args.portcullis_bin.is_none(), wants_authz)?;
    let portcullis = match (&args.portcullis_bin, built) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p,
        (None, None) => anyhow::bail!("cargo named no portcullis executable"),
    };
    let started = Instant::now();
    let raw_dir = sys::out_dir(target_dir);
    let work = raw_dir.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {work:?}"))?;
    }
    std::fs::create_dir_all(&work)?;
    let plan = Plan::new(args.quick);
    let nofile = sys::raise_nofile()?;
    let ecdsa = Certs::make(&portcullis, work.join("certs-ecdsa"), KeyType::EcdsaP256)?;
    let rsa = Certs::make(&portcullis, work.join("certs-rsa"), KeyType::Rsa2048)?;
    let lab = Lab {
        work: work.clone(),
        nofile,
        portcullis,
        upstream_port: sys::free_port()?,
    };
    let machine = sys::Machine::probe();
    eprintln!(
        "bench: {} on {} ({} cores), proxy on core {}, oha and upstream on core {}",
        if args.quick { "quick run" } else { "full run" },
        machine.cpu_model,
        machine.cores,
        sys::PROXY_CORE,
        sys::LOAD_CORE
    );
    let upstream = lab.start_upstream()?;

    let mut suite = Suite {
        plan,
        lab,
        ecdsa,
        rsa,
        raw_dir: raw_dir.clone(),
        records: Vec::new(),
        full_handshakes: Vec::new(),
    };
    let wants = |n: u8| args.scenarios.contains(&n);
    if wants(1) {
        scenarios::timed("scenario 1", || suite.keepalive_rps())?;
    }
    if wants(2) {
        scenarios::timed("scenario 2", || suite.handshakes())?;
    }
    if wants(3) {
        scenarios::timed("scenario 3", || suite.fixed_rate())?;
    }
    if wants(4) {
        scenarios::timed("scenario 4", || suite.bulk())?;
    }
    if wants(9) {
        scenarios::timed("scenario 9", || suite.multicore())?;
    }
    let idle = if wants(5) {
        let n = idle::connections(args.quick, nofile);
        scenarios::timed("scenario 5", || idle::measure(&suite.lab, &suite.ecdsa, n))?
    } else {
        Vec::new()
    };
    let instr = if wants(8) {
        let n = if args.quick { 1_000 } else { 3_000 };
        scenarios::timed("instructions", || {
            instr::measure(&suite.lab, &suite.ecdsa, &suite.raw_dir, n)
        })?
    } else {
        Vec::new()
    };
    let security = if wants(10) {
        let n = if args.quick { 1_000 } else { 3_000 };
        Some(scenarios::timed("scenario 10", || {
            instr::security_costs(&suite.lab, &suite.ecdsa, &suite.raw_dir, n)
        })?)
    } else {
        None
    };
    drop(upstream);
    // The kernel path depends on the host (root, bpffs, tc): a failure here is reported, not
    // fatal to the rest of the run.
    let (strict, strict_note) = if !wants(7) {
        (Vec::new(), "Not run.".to_owned())
    } else if !super::is_root() {
        (
            Vec::new(),
            "Not run: network namespaces and bpffs need root.".to_owned(),
        )
    } else {
        match scenarios::timed("scenario 7", || {
            strict::measure(&suite.lab.portcullis, &work, suite.plan.run)
        }) {
            Ok(r) => (r, String::new()),
            Err(e) => {
                eprintln!("bench: scenario 7 failed: {e:#}");
                (Vec::new(), format!("Failed in this run: `{e:#}`."))
            }
        }
    };
    let authz = if let Some(exe) = &authz_exe {
        scenarios::timed("scenario 6", || authz_bench(exe, args.quick, target_dir))?
    } else {
        Vec::new()
    };

    let results = serde_json::json!({
        "plan": suite.plan,
        "machine": machine,
        "records": suite.records,
        "full_handshakes": suite.full_handshakes,
        "idle": idle,
        "instructions": instr,
        "security_costs": security,
        "strict": strict,
        "authz": authz,
    });
    std::fs::write(
        raw_dir.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;

    let command_line = format!(
        "cargo xtask bench{}{}",
        if args.quick { " --quick" } else { "" },
        if args.scenarios.len() < 10 {
            format!(
                " --scenarios {}",
                args.scenarios
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        } else {
            String::new()
        }
    );
    let sample = |name: &str, file: &str| {
        std::fs::read_to_string(work.join(name).join(file)).unwrap_or_default()
    };
    let notes = std::fs::read_to_string(workspace.join("BENCHMARKS/NOTES.md")).unwrap_or_default();
    let closing = report::write(
        workspace,
        &report::Inputs {
            suite: &suite,
            machine: &machine,
            command_line: &command_line,
            authz: &authz,
            idle: &idle,
            instr: &instr,
            security: security.as_ref(),
            strict: &strict,
            strict_note: &strict_note,
            upstream_conf: &sample("upstream", "nginx.conf"),
            nginx_conf: &sample("nginx", "nginx.conf"),
            haproxy_conf: &sample("haproxy", "haproxy.cfg"),
            notes: &notes,
        },
    )?;
    eprintln!(
        "\nbench: done in {:.0} s: BENCHMARKS.md and BENCHMARKS/*.svg written, raw JSON in {}\n\n{closing}",
        started.elapsed().as_secs_f64(),
        raw_dir.display()
    );
    Ok(())
}

/// Rule counts of scenario 6, the same as `gateway/benches/authz.rs`.
const AUTHZ_RULES: [usize; 3] = [1, 100, 10_000];

/// `cargo build --release` of the daemon and/or the criterion bench; returns their
/// executables.
fn build_release(daemon: bool, authz: bool) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    if !daemon && !authz {
        return Ok((None, None));
    }
    let mut cmd = super::cargo();
    cmd.args(["build", "--release", "-p", "gateway"]);
    if daemon {
        cmd.args(["--bin", "portcullis"]);
    }
    if authz {
        cmd.args(["--bench", "authz"]);
    }
    cmd.args(["--message-format", "json"])
        .stderr(std::process::Stdio::inherit());
    eprintln!("xtask: {cmd:?}");
    let out = cmd.output().context("building the benchmark binaries")?;
    if !out.status.success() {
        anyhow::bail!("{cmd:?} failed with {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exe = |name: &str| {
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"]["name"] == name)
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
    };
    let authz_exe = if authz {
        Some(exe("authz").context("cargo named no executable for the authz bench")?)
    } else {
        None
    };
    Ok((exe("portcullis"), authz_exe))
}

/// Runs the criterion bench and reads each case's median.
fn authz_bench(exe: &Path, quick: bool, target_dir: &Path) -> Result<Vec<report::AuthzRow>> {
    eprintln!("bench: scenario 6: AuthorizationPolicy decision cost, criterion");
    let home = target_dir.join("criterion");
    let mut cmd = Command::new(exe);
    cmd.arg("--bench").env("CRITERION_HOME", &home);
    if quick {
        cmd.args(["--warm-up-time", "0.5", "--measurement-time", "1"]);
    }
    super::status(&mut cmd)?;
    let median = |case: &str, n: usize| -> Option<f64> {
        let p = home
            .join("authz")
            .join(case)
            .join(n.to_string())
            .join("new/estimates.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        v.get("median")?.get("point_estimate")?.as_f64()
    };
    let rows: Vec<report::AuthzRow> = AUTHZ_RULES
        .iter()
        .map(|&n| (n, median("match", n), median("nomatch", n)))
        .collect();
    let ns = |v: &Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1} ns"));
    for (n, m, nm) in &rows {
        eprintln!(
            "bench:   {n:>6} rules: matching {}, non-matching {}",
            ns(m),
            ns(nm)
        );
    }
    Ok(rows)
}
