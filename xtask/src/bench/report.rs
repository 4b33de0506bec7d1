//! BENCHMARKS.md and its SVG charts, from the records of one run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::charts::{bars, grouped_bars};
use super::handshake::HandshakeRecord;
use super::idle::IdleRecord;
use super::instr::InstrRecord;
use super::peers::Target;
use super::scenarios::{Record, Suite};
use super::strict::StrictRecord;
use super::sys::Machine;

/// Istio's published per-proxy figures at 1000 req/s with 1 KB payloads.
const ISTIO_REFERENCES: &[(&str, f64, f64)] = &[
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
struct Verdict {
    name: String,
    met: Option<bool>,
    detail: String,
}

fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn find<'a>(rows: &[&'a Record], t: Target) -> Option<&'a Record> {
    rows.iter().copied().find(|r| r.target == t)
}

/// The better peer by `key` (higher is better when `higher`).
fn best_peer<'a>(
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

fn ratio(a: f64, b: f64) -> String {
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
                    "Portcullis {pv:.0} req/s = {} of {} ({bv:.0})",
                    ratio(pv, bv),
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
            "**{v}, full handshakes**\n\n| target | handshakes/s | × best peer | proxy CPU µs/handshake | server resumes when offered |\n|---|---:|---:|---:|---|"
        )?;
        for r in &rows {
            writeln!(
                md,
                "| {} | {:.0} | {} | {} | {} |",
                r.target,
                r.per_sec(),
                best.map_or("–".into(), |b| ratio(r.per_sec(), b.per_sec())),
                r.cpu_secs.map_or("–".into(), |c| format!(
                    "{:.0}",
                    c * 1e6 / r.handshakes.max(1) as f64
                )),
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
                    "Portcullis {pv:.0}/s = {} of {} ({bv:.0}/s)",
                    ratio(pv, bv),
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

    instr_section(&mut md, inputs.instr)?;
    strict_section(&mut md, inputs.strict, inputs.strict_note, &mut verdicts)?;

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
fn rounds(r: &Record, f: impl Fn(f64) -> f64) -> String {
    if r.rounds.len() < 2 {
        return "–".into();
    }
    r.rounds
        .iter()
        .map(|&k| format!("{:.1}", f(k)))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn fixed_rate_section(
    md: &mut String,
    s: &Suite,
    verdicts: &mut Vec<Verdict>,
    charts: &Path,
) -> Result<()> {
    let rows = s.of(3, "1000 req/s");
    writeln!(
        md,
        "## 3. Added latency at a fixed {} req/s (open loop, `--latency-correction`, 1 KB)\n",
        s.plan.rate
    )?;
    writeln!(md, "![latency](BENCHMARKS/latency_1000rps.svg)\n")?;
    if rows.is_empty() {
        writeln!(md, "Not run.\n")?;
        return Ok(());
    }
    let direct = find(&rows, Target::Direct).map(|r| r.summary.clone());
    let added = |r: &Record, p: fn(&super::oha::Summary) -> f64| {
        direct.as_ref().map(|d| p(&r.summary) - p(d))
    };
    writeln!(
        md,
        "| target | achieved req/s | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 | vCPU | CPU s | peak RSS MB | p99 of every round |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )?;
    let f = |v: Option<f64>, d: usize| v.map_or("–".to_owned(), |v| format!("{v:.d$}"));
    for r in &rows {
        writeln!(
            md,
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.summary.requests_per_sec,
            r.summary.p50_ms,
            r.summary.p99_ms,
            r.summary.p999_ms,
            f(added(r, |s| s.p50_ms), 3),
            f(added(r, |s| s.p99_ms), 3),
            f(added(r, |s| s.p999_ms), 3),
            f(r.vcpu(), 3),
            f(r.cpu_secs, 2),
            f(r.peak_rss_kb.map(|k| k as f64 / 1024.0), 1),
            rounds(r, |k| k),
        )?;
    }
    for (name, vcpu, mb) in ISTIO_REFERENCES {
        writeln!(
            md,
            "| {name} | 1000 | | | | | | | {vcpu:.2} | | {mb:.0} | |"
        )?;
    }
    writeln!(md)?;
    let p = find(&rows, Target::Portcullis);
    if let (Some(p), Some(_)) = (p, &direct) {
        let p_added = added(p, |s| s.p99_ms).unwrap_or(0.0);
        if let Some((b, b_added)) = best_peer(&rows, |r| added(r, |s| s.p99_ms), false) {
            verdicts.push(Verdict {
                name: "added p99 at 1000 req/s ≤ 0.5× best peer".into(),
                met: Some(p_added <= 0.5 * b_added),
                detail: format!(
                    "Portcullis +{p_added:.3} ms, {} +{b_added:.3} ms ({})",
                    b.target,
                    ratio(p_added, b_added)
                ),
            });
        }
    }
    if let (Some(p), Some((b, bv))) = (p, best_peer(&rows, Record::vcpu, false)) {
        let pv = p.vcpu().unwrap_or(f64::NAN);
        verdicts.push(Verdict {
            name: "CPU at 1000 req/s ≤ 0.5× best peer".into(),
            met: Some(pv <= 0.5 * bv),
            detail: format!(
                "Portcullis {pv:.3} vCPU, {} {bv:.3} vCPU ({}; Envoy 0.20, ztunnel 0.06 published)",
                b.target,
                ratio(pv, bv)
            ),
        });
    }
    let rss = |r: &Record| r.peak_rss_kb.map(|k| k as f64 / 1024.0);
    if let (Some(p), Some((b, bv))) = (p, best_peer(&rows, rss, false)) {
        let pv = rss(p).unwrap_or(f64::NAN);
        verdicts.push(Verdict {
            name: "peak RSS at 1000 req/s ≤ best peer".into(),
            met: Some(pv <= bv),
            detail: format!(
                "Portcullis {pv:.1} MB, {} {bv:.1} MB ({}; Envoy 60, ztunnel 12 published)",
                b.target,
                ratio(pv, bv)
            ),
        });
    }
    let pcts = ["p50", "p99", "p99.9"];
    grouped_bars(
        &charts.join("latency_1000rps.svg"),
        "Latency at 1000 req/s (ms)",
        "ms",
        &pcts,
        &|pct, t| {
            rows.iter().find(|r| r.target == t).map(|r| match pct {
                "p50" => r.summary.p50_ms,
                "p99" => r.summary.p99_ms,
                _ => r.summary.p999_ms,
            })
        },
    )
}

fn idle_section(md: &mut String, idle: &[IdleRecord], verdicts: &mut Vec<Verdict>) -> Result<()> {
    writeln!(md, "## 5. Memory per idle mTLS connection\n")?;
    if idle.is_empty() {
        writeln!(md, "Not run.\n")?;
        return Ok(());
    }
    writeln!(
        md,
        "A holder (tokio-rustls, in `xtask/src/bench/idle.rs`) opens N mTLS connections, \
         completes one request on each so every proxy has set up its per-connection state, and \
         keeps them open; the figure is the proxy's RSS growth divided by N. N is 10,000 \
         (1,000 with `--quick`), lowered to fit half the open-file limit when `ulimit -n` cannot \
         be raised far enough (a proxy needs a descriptor per client connection and HAProxy \
         reserves one more per connection for its server side).\n\n\
         | target | connections held | RSS before MB | RSS with N MB | KB per connection |\n|---|---:|---:|---:|---:|"
    )?;
    for r in idle {
        writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {:.1} |",
            r.target,
            r.held,
            r.rss_before_kb as f64 / 1024.0,
            r.rss_after_kb as f64 / 1024.0,
            r.kb_per_conn()
        )?;
    }
    writeln!(md)?;
    if let Some(p) = idle.iter().find(|r| r.target == Target::Portcullis) {
        let best = idle
            .iter()
            .filter(|r| r.target != Target::Portcullis)
            .min_by(|a, b| a.kb_per_conn().total_cmp(&b.kb_per_conn()));
        verdicts.push(Verdict {
            name: "≤ 10 KB per idle connection".into(),
            met: Some(p.kb_per_conn() <= 10.0),
            detail: format!(
                "Portcullis {:.1} KB{}",
                p.kb_per_conn(),
                best.map_or(String::new(), |b| format!(
                    ", {} {:.1} KB",
                    b.target,
                    b.kb_per_conn()
                ))
            ),
        });
    }
    Ok(())
}

fn instr_section(md: &mut String, instr: &[InstrRecord]) -> Result<()> {
    writeln!(
        md,
        "## Instructions per request (callgrind)\n\n\
         `perf stat -e instructions` reports `<not supported>` on this virtual machine (no PMU), \
         so each proxy runs under `valgrind --tool=callgrind`; after 200 warm-up requests its \
         counters are zeroed and oha sends a fixed number of keep-alive HTTP/1.1 requests for \
         the 1 KB file on one mTLS connection (its one handshake is in the count). The count \
         does not depend on the machine's other load, so a regression shows here first.\n"
    )?;
    if instr.is_empty() {
        writeln!(md, "Not run.\n")?;
        return Ok(());
    }
    let best = instr
        .iter()
        .filter(|r| r.target != Target::Portcullis)
        .map(InstrRecord::per_request)
        .reduce(f64::min);
    writeln!(md, "| target | requests | instructions | per request | × best peer |\n|---|---:|---:|---:|---:|")?;
    for r in instr {
        writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} |",
            r.target,
            r.requests,
            r.instructions,
            r.per_request(),
            best.map_or("–".into(), |b| ratio(r.per_request(), b))
        )?;
    }
    writeln!(md)?;
    Ok(())
}

fn strict_section(
    md: &mut String,
    strict: &[StrictRecord],
    note: &str,
    verdicts: &mut Vec<Verdict>,
) -> Result<()> {
    writeln!(
        md,
        "## 7. STRICT rejection of plaintext (kernel path vs userspace)\n\n\
         Two network namespaces made by the suite (10.233.0.1 and .2 on a veth pair). A \
         plaintext app listens on 10.233.0.1:80. {CLIENTS} client threads in the other namespace \
         (core 1) connect, send a plaintext request and read; a reset is a refusal. \
         **Userspace**: the app itself accepts, reads the first bytes and resets (SO_LINGER 0), \
         on core 0. **Kernel**: `portcullis kernel run --iface pcb-srv --port 80=strict` \
         (pinned to core 0) attaches the tc ingress program, which resets the connection on its \
         first plaintext segment before the app reads a byte; the CPU column is the daemon's.\n",
        CLIENTS = 4
    )?;
    if strict.is_empty() {
        writeln!(md, "{note}\n")?;
        return Ok(());
    }
    writeln!(
        md,
        "| path | refused/s | served (must be 0) | CPU s of the refusing process |\n|---|---:|---:|---:|"
    )?;
    for r in strict {
        writeln!(
            md,
            "| {} | {:.0} | {} | {:.3} |",
            r.path,
            r.per_sec(),
            r.served,
            r.cpu_secs
        )?;
    }
    writeln!(md)?;
    let find = |p: &str| strict.iter().find(|r| r.path == p);
    if let (Some(k), Some(u)) = (find("kernel"), find("userspace")) {
        verdicts.push(Verdict {
            name: "kernel STRICT rejections/s ≥ 10× userspace".into(),
            met: Some(k.per_sec() >= 10.0 * u.per_sec()),
            detail: format!(
                "kernel {:.0}/s, userspace {:.0}/s ({}); daemon CPU {:.3} s",
                k.per_sec(),
                u.per_sec(),
                ratio(k.per_sec(), u.per_sec()),
                k.cpu_secs
            ),
        });
    }
    Ok(())
}

fn authz_section(
    md: &mut String,
    authz: &[AuthzRow],
    verdicts: &mut Vec<Verdict>,
    charts: &Path,
) -> Result<()> {
    writeln!(
        md,
        "## 6. AuthorizationPolicy decision cost versus rules (criterion)\n\n\
         `cargo bench -p gateway --bench authz`: one DENY policy with N rules (a mix of exact \
         paths and principals), loaded from generated YAML with `config::load_paths`, compiled \
         with `Authorizer::compile`, then `evaluate` for a request that matches the last rule \
         and one that matches none. Median of criterion's samples.\n"
    )?;
    if authz.is_empty() {
        writeln!(md, "Not run.\n")?;
        return Ok(());
    }
    writeln!(md, "![authz](BENCHMARKS/authz.svg)\n")?;
    writeln!(
        md,
        "| rules | matching ns | non-matching ns | matching × 1-rule |\n|---:|---:|---:|---:|"
    )?;
    let base = authz.first().and_then(|r| r.1);
    let f = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1}"));
    for (n, m, nm) in authz {
        writeln!(
            md,
            "| {n} | {} | {} | {} |",
            f(*m),
            f(*nm),
            match (m, base) {
                (Some(m), Some(b)) => ratio(*m, b),
                _ => "–".into(),
            }
        )?;
    }
    writeln!(md)?;
    let last = authz.last();
    if let (Some(b), Some((n, Some(m), nm))) = (base, last) {
        let worst = nm.map_or(*m, |nm| m.max(nm));
        let one = authz
            .first()
            .map_or(b, |r| r.1.unwrap_or(b).max(r.2.unwrap_or(b)));
        verdicts.push(Verdict {
            name: format!("{n}-rule decision p50 ≤ 3× 1-rule"),
            met: Some(worst <= 3.0 * one),
            detail: format!(
                "{n} rules {worst:.0} ns vs 1 rule {one:.0} ns ({})",
                ratio(worst, one)
            ),
        });
    }
    let labels: Vec<String> = authz.iter().map(|r| format!("{} rules", r.0)).collect();
    let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    bars(
        &charts.join("authz.svg"),
        "AuthorizationPolicy decision, median ns",
        "ns",
        &label_refs,
        &[
            ("matching", authz.iter().map(|r| r.1).collect()),
            ("non-matching", authz.iter().map(|r| r.2).collect()),
        ],
    )
}
