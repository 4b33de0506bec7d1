//! BENCHMARKS.md and its SVG charts, from the records of one run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

mod multicore;
mod sections;
mod security;

use self::multicore::multicore_section;
use self::sections::{
    authz_section, fixed_rate_section, idle_section, instr_section, strict_section,
};
use self::security::security_section;
use super::charts::grouped_bars;
use super::handshake::HandshakeRecord;
use super::idle::IdleRecord;
use super::instr::{InstrRecord, SecurityCosts};
use super::peers::Target;
use super::scenarios::{Record, Suite};
use super::strict::StrictRecord;
use super::sys::Machine;

/// Istio's published per-proxy figures at 1000 req/s with 1 KB payloads.
pub(super) const ISTIO_REFERENCES: &[(&str, f64, f64)] = &[
    ("Envoy sidecar (Istio, published)", 0.20, 60.0),
    ("ztunnel (Istio, published)", 0.06, 12.0),
];

/// The criterion figures of scenario 6: (rules, matching median ns, non-matching median ns).
pub type AuthzRow = (usize, Option<f64>, Option<f64>);

/// Everything the report is made of.
pub struct Inputs<'a> {
    pub suite: &'a Suite,
    pub machine: &'a Machine,
    pub command_line: &'a str,
    pub authz: &'a [AuthzRow],
    pub idle: &'a [IdleRecord],
    pub instr: &'a [InstrRecord],
    /// Scenario 10: Portcullis with its defaults, and with each security default off.
    pub security: Option<&'a SecurityCosts>,
    pub strict: &'a [StrictRecord],
    /// Why scenario 7 has no figures, when it has none.
    pub strict_note: &'a str,
    pub upstream_conf: &'a str,
    pub nginx_conf: &'a str,
    pub haproxy_conf: &'a str,
    /// Hand-written analysis (`BENCHMARKS/NOTES.md`), kept across runs.
    pub notes: &'a str,
}

/// A target met or missed, for the closing list.
pub(super) struct Verdict {
    pub(super) name: String,
    pub(super) met: Option<bool>,
    pub(super) detail: String,
}

fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

pub(super) fn find<'a>(rows: &[&'a Record], t: Target) -> Option<&'a Record> {
    rows.iter().copied().find(|r| r.target == t)
}

/// The better peer by `key` (higher is better when `higher`).
pub(super) fn best_peer<'a>(
    rows: &[&'a Record],
    key: impl Fn(&Record) -> Option<f64>,
    higher: bool,
) -> Option<(&'a Record, f64)> {
    Target::PEERS
        .iter()
        .filter_map(|&t| find(rows, t))
        .filter_map(|r| key(r).map(|v| (r, v)))
        .reduce(|a, b| if (b.1 > a.1) == higher { b } else { a })
}

pub(super) fn ratio(a: f64, b: f64) -> String {
    if b.abs() < f64::EPSILON {
        "–".to_owned()
    } else {
        format!("{:.2}×", a / b)
    }
}

pub fn write(root: &Path, inputs: &Inputs<'_>) -> Result<String> {
    let charts = root.join("BENCHMARKS");
    std::fs::create_dir_all(&charts)?;
    let s = inputs.suite;
    let m = inputs.machine;
    let mut md = String::new();
    let mut verdicts = Vec::new();
    let mode = if s.plan.quick { "quick" } else { "full" };
    writeln!(
        md,
        "# Benchmarks\n\n\
         Portcullis against nginx and HAProxy as mTLS-terminating reverse proxies, and against no \
         proxy at all (\"direct\": oha in plaintext straight at the upstream, the ceiling), all \
         measured in **one run** of `{cmd}` ({mode} mode) on the same machine. Every figure that \
         counts is a ratio between targets of this run; the absolute numbers drift from run to \
         run on a shared 2-core machine and are references only.\n\n\
         | | |\n|---|---|\n\
         | date | {date} |\n| CPU | {cpu} |\n| cores | {cores} |\n| kernel | {kernel} |\n\
         | nginx | {nginx} |\n| HAProxy | {haproxy} |\n| load generator | {oha} |\n",
        cmd = inputs.command_line,
        date = m.date,
        cpu = m.cpu_model,
        cores = m.cores,
        kernel = m.kernel,
        nginx = m.nginx,
        haproxy = m.haproxy,
        oha = m.oha,
    )?;
    writeln!(
        md,
        "## Setup\n\n\
         - **Pinning** (`taskset`): the proxy under test runs alone on core 0; the load \
         generator (oha) and the upstream share core 1. Direct runs put oha and the upstream on \
         core 1 only, so the ceiling is conservative: it is what one core does for both.\n\
         - **Upstream**: nginx, one process, serving a static 1 KB file (`/1k`) and a 10 MB file \
         (`/10m`) from 127.0.0.1, keep-alive, `sendfile on`.\n\
         - **Proxies**, one worker each, the same ECDSA P-256 (or RSA-2048 for scenario 2) \
         certificates made by `portcullis certs`, client certificates required: Portcullis \
         (`--release`, the walkthrough's MUTUAL Gateway and DENY AuthorizationPolicy, access \
         log off); nginx (`master_process off`, `worker_processes 1`, `ssl_verify_client on`, \
         upstream `keepalive 64`, `location = /status/418 {{ return 403 \"RBAC: access denied\"; }}` \
         standing in for the DENY rule, access log off, `proxy_max_temp_file_size 0`, and \
         `ssl_protocols TLSv1.2 TLSv1.3` because Debian's nginx 1.22 leaves TLS 1.3 out by \
         default and every other target speaks it); HAProxy \
         (`nbthread 1`, `verify required`, `http-reuse always`, `http-request return status \
         403 … if {{ path /status/418 }}`). Before every measured run the harness checks that the \
         target answers 200 on the file and 403 on `/status/418` for the client identity \
         `spiffe://test.client`.\n\
         - **Load**: oha with `--cacert/--cert/--key` (mTLS) and `--connect-to \
         test.com:443:127.0.0.1:PORT`, so SNI and the server name stay `test.com`; a warm-up of \
         {warm:?} before each measured run of {run:?} ({lat:?} for the fixed-rate scenario). \
         Direct is always HTTP/1.1 plaintext (the upstream speaks no h2c).\n\
         - Raw oha JSON of every run: `target/bench/`; every record: `target/bench/results.json`.\n\
         - **Other load**: the 1-minute load average when each measured run started ranged \
         from {lmin:.2} to {lmax:.2} (the suite itself keeps about 2 busy); higher means other \
         work shared the cores.\n",
        warm = s.plan.warmup,
        run = s.plan.run,
        lat = s.plan.latency_run,
        lmin = s.records.iter().map(|r| r.load1).fold(f64::INFINITY, f64::min),
        lmax = s.records.iter().map(|r| r.load1).fold(f64::NEG_INFINITY, f64::max),
    )?;

    // Scenario 1.
    writeln!(
        md,
        "## 1. Keep-alive mTLS requests per second (1 KB, {} connections)\n",
        s.plan.connections
    )?;
    writeln!(md, "![req/s](BENCHMARKS/keepalive_rps.svg)\n")?;
    let variants = ["HTTP/1.1", "HTTP/2"];
    for v in variants {
        let rows = s.of(1, v);
        if rows.is_empty() {
            continue;
        }
        throughput_table(&mut md, v, &rows, |r| r.summary.requests_per_sec, "req/s")?;
        let best = best_peer(&rows, |r| Some(r.summary.requests_per_sec), true);
        let (p, d) = (find(&rows, Target::Portcullis), find(&rows, Target::Direct));
        if let (Some(p), Some((b, bv))) = (p, best) {
            let pv = p.summary.requests_per_sec;
            verdicts.push(Verdict {
                name: format!("keep-alive {v} req/s ≥ 1.2× best peer"),
                met: Some(pv >= 1.2 * bv),
                detail: format!(
                    "Portcullis {pv:.0} req/s = {} of {} ({bv:.0}); proxy CPU per request {} of {}'s",
                    ratio(pv, bv),
                    b.target,
                    match (p.cpu_us_per_request(), b.cpu_us_per_request()) {
                        (Some(a), Some(c)) => ratio(a, c),
                        _ => "–".into(),
                    },
                    b.target
                ),
            });
        }
        if let (Some(p), Some(d)) = (p, d) {
            let (pv, dv) = (p.summary.requests_per_sec, d.summary.requests_per_sec);
            verdicts.push(Verdict {
                name: format!("keep-alive {v} req/s ≥ 0.6× direct"),
                met: Some(pv >= 0.6 * dv),
                detail: format!(
                    "Portcullis {pv:.0} req/s = {} of direct ({dv:.0})",
                    ratio(pv, dv)
                ),
            });
        }
    }
    grouped_bars(
        &charts.join("keepalive_rps.svg"),
        "Keep-alive mTLS, 1 KB, 32 connections",
        "requests/s",
        &variants,
        &|v, t| {
            s.of(1, v)
                .iter()
                .find(|r| r.target == t)
                .map(|r| r.summary.requests_per_sec)
        },
    )?;

    // Scenario 2.
    writeln!(
        md,
        "## 2. mTLS handshakes per second (one request per connection, 16 connections)\n\n\
         **Full handshakes** (resumption off): the suite's own tokio-rustls client \
         (`xtask/src/bench/handshake.rs`, pinned to core 1) connects, completes a full mTLS \
         handshake (checked: `HandshakeKind::Full`), sends one request for the 1 KB file, reads \
         the answer and closes, on 16 concurrent loops. oha cannot turn resumption off, so its \
         figure follows below for reference: it resumes wherever the server offers tickets.\n"
    )?;
    writeln!(md, "![full handshakes/s](BENCHMARKS/handshakes.svg)\n")?;
    let keys = ["ecdsa-p256", "rsa-2048"];
    for v in keys {
        let rows: Vec<&HandshakeRecord> = s.full_handshakes.iter().filter(|r| r.key == v).collect();
        if rows.is_empty() {
            continue;
        }
        let best = rows
            .iter()
            .filter(|r| r.target != Target::Portcullis)
            .max_by(|a, b| a.per_sec().total_cmp(&b.per_sec()));
        writeln!(
            md,
            "**{v}, full handshakes**\n\n| target | handshakes/s | × best peer | proxy CPU µs/handshake | one core's worth (10⁶ / CPU µs) | server resumes when offered |\n|---|---:|---:|---:|---:|---|"
        )?;
        for r in &rows {
            writeln!(
                md,
                "| {} | {:.0} | {} | {} | {} | {} |",
                r.target,
                r.per_sec(),
                best.map_or("–".into(), |b| ratio(r.per_sec(), b.per_sec())),
                r.cpu_us().map_or("–".into(), |c| format!("{c:.0}")),
                r.cpu_us().map_or("–".into(), |c| format!("{:.0}", 1e6 / c)),
                if r.server_resumes { "yes" } else { "no" },
            )?;
        }
        writeln!(md)?;
        if let (Some(p), Some(b)) = (rows.iter().find(|r| r.target == Target::Portcullis), best) {
            let (pv, bv) = (p.per_sec(), b.per_sec());
            verdicts.push(Verdict {
                name: format!("full handshakes/s ({v}) ≥ 1.3× best peer"),
                met: Some(pv >= 1.3 * bv),
                detail: format!(
                    "Portcullis {pv:.0}/s = {} of {} ({bv:.0}/s); proxy CPU per handshake {} of {}'s",
                    ratio(pv, bv),
                    b.target,
                    match (p.cpu_us(), b.cpu_us()) {
                        (Some(a), Some(c)) => ratio(a, c),
                        _ => "–".into(),
                    },
                    b.target
                ),
            });
        }
    }
    writeln!(
        md,
        "**With oha** (its client resumes sessions the server offers, so these mix full and \
         resumed handshakes; the direct row is plaintext connection setup, for scale):\n"
    )?;
    for v in keys {
        let rows = s.of(2, v);
        if rows.is_empty() {
            continue;
        }
        throughput_table(
            &mut md,
            v,
            &rows,
            |r| r.summary.requests_per_sec,
            "connections/s",
        )?;
    }
    writeln!(
        md,
        "The client side of every handshake (also signing with its client key) shares core 1 \
         with the upstream.\n"
    )?;
    grouped_bars(
        &charts.join("handshakes.svg"),
        "Full mTLS handshakes per second (resumption off)",
        "handshakes/s",
        &keys,
        &|v, t| {
            s.full_handshakes
                .iter()
                .find(|r| r.key == v && r.target == t)
                .map(HandshakeRecord::per_sec)
        },
    )?;

    // Scenario 3.
    fixed_rate_section(&mut md, s, &mut verdicts, &charts)?;

    // Scenario 4.
    writeln!(
        md,
        "## 4. Bulk throughput (10 MB responses, HTTP/1.1 keep-alive)\n"
    )?;
    writeln!(md, "![MB/s](BENCHMARKS/bulk.svg)\n")?;
    let conns = ["1 conn", "16 conn"];
    for v in conns {
        let rows = s.of(4, v);
        if !rows.is_empty() {
            throughput_table(&mut md, v, &rows, |r| r.summary.bytes_per_sec / 1e6, "MB/s")?;
        }
    }
    grouped_bars(
        &charts.join("bulk.svg"),
        "Bulk throughput, 10 MB responses",
        "MB/s",
        &conns,
        &|v, t| {
            s.of(4, v)
                .iter()
                .find(|r| r.target == t)
                .map(|r| r.summary.bytes_per_sec / 1e6)
        },
    )?;

    // Scenario 5.
    idle_section(&mut md, inputs.idle, &mut verdicts)?;

    // Scenario 6.
    authz_section(&mut md, inputs.authz, &mut verdicts, &charts)?;

    instr_section(&mut md, inputs.instr, &mut verdicts)?;
    security_section(&mut md, inputs.security, inputs.instr)?;
    strict_section(&mut md, inputs.strict, inputs.strict_note, &mut verdicts)?;
    multicore_section(&mut md, s, &mut verdicts)?;

    writeln!(
        md,
        "## Targets\n\n| target | result | figures |\n|---|---|---|"
    )?;
    for v in &verdicts {
        writeln!(md, "| {} | {} | {} |", v.name, mark(v.met), v.detail)?;
    }
    writeln!(md)?;

    if !inputs.notes.trim().is_empty() {
        writeln!(
            md,
            "## Analysis\n\n_Hand-written in `BENCHMARKS/NOTES.md` and copied here by every run; \
             its figures are from the run it names._\n\n{}\n",
            inputs.notes.trim()
        )?;
    }
    writeln!(md, "## Reproduce\n\n```sh\n{}\n```\n", inputs.command_line)?;
    writeln!(
        md,
        "Each measured run is one oha command; for example (ports are chosen per run):\n"
    )?;
    writeln!(md, "```sh")?;
    for (scenario, variant) in [
        (1, "HTTP/1.1"),
        (1, "HTTP/2"),
        (2, "ecdsa-p256"),
        (3, "1000 req/s"),
        (4, "16 conn"),
    ] {
        if let Some(r) = s
            .of(scenario, variant)
            .iter()
            .find(|r| r.target == Target::Portcullis)
        {
            writeln!(md, "{}", r.command)?;
        }
    }
    writeln!(md, "```\n")?;
    writeln!(
        md,
        "<details><summary>Generated peer configurations</summary>\n\n\
         Upstream nginx:\n```nginx\n{}```\nnginx proxy:\n```nginx\n{}```\nHAProxy:\n```\n{}```\n</details>",
        inputs.upstream_conf, inputs.nginx_conf, inputs.haproxy_conf
    )?;
    let path = root.join("BENCHMARKS.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {path:?}"))?;

    let mut closing = String::new();
    for v in &verdicts {
        writeln!(
            closing,
            "{:<48} {:<12} {}",
            v.name,
            mark(v.met).trim_matches('*'),
            v.detail
        )?;
    }
    Ok(closing)
}

/// A table of one variant: each target's figure and its ratio to the best peer and to direct.
fn throughput_table(
    md: &mut String,
    variant: &str,
    rows: &[&Record],
    value: impl Fn(&Record) -> f64,
    unit: &str,
) -> Result<()> {
    let best = best_peer(rows, |r| Some(value(r)), true).map(|(_, v)| v);
    let direct = find(rows, Target::Direct).map(&value);
    writeln!(
        md,
        "**{variant}**\n\n| target | {unit} | p50 ms | p99 ms | × best peer | × direct | proxy CPU µs/req | 200s / responses | every round |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )?;
    for r in rows {
        let v = value(r);
        writeln!(
            md,
            "| {} | {v:.1} | {:.3} | {:.3} | {} | {} | {} | {} / {} | {} |",
            r.target,
            r.summary.p50_ms,
            r.summary.p99_ms,
            best.map_or("–".into(), |b| ratio(v, b)),
            direct.map_or("–".into(), |d| ratio(v, d)),
            r.cpu_us_per_request()
                .map_or("–".into(), |c| format!("{c:.1}")),
            r.summary.count("200"),
            r.summary.responses(),
            rounds(r, |k| value_of_key(r, k, &value)),
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// A round's key figure in the table's unit: `value` is linear in the key for every table.
fn value_of_key(r: &Record, key: f64, value: &impl Fn(&Record) -> f64) -> f64 {
    let k = r.key();
    if k.abs() < f64::EPSILON {
        key
    } else {
        key * value(r) / k
    }
}

/// Every round's figure, for judging the noise.
pub(super) fn rounds(r: &Record, f: impl Fn(f64) -> f64) -> String {
    if r.rounds.len() < 2 {
        return "–".into();
    }
    r.rounds
        .iter()
        .map(|&k| {
            let v = f(k);
            // Latencies are milliseconds below one; throughputs are thousands.
            if v.abs() < 10.0 {
                format!("{v:.3}")
            } else {
                format!("{v:.1}")
            }
        })
        .collect::<Vec<_>>()
        .join(" / ")
}
