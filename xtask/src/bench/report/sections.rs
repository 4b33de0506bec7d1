//! The per-scenario sections of BENCHMARKS.md that carry their own tables, charts and
//! targets: fixed-rate latency, idle memory, instructions, STRICT rejection, authz.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::super::charts::{bars, grouped_bars};
use super::super::idle::IdleRecord;
use super::super::instr::InstrRecord;
use super::super::oha::Summary;
use super::super::peers::Target;
use super::super::scenarios::{Record, Suite};
use super::super::strict::{StrictRecord, KERNEL, USERSPACE};
use super::{best_peer, find, ratio, rounds, AuthzRow, Verdict, ISTIO_REFERENCES};

pub(super) fn fixed_rate_section(
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
    let added = |r: &Record, p: fn(&Summary) -> f64| direct.as_ref().map(|d| p(&r.summary) - p(d));
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

pub(super) fn idle_section(
    md: &mut String,
    idle: &[IdleRecord],
    verdicts: &mut Vec<Verdict>,
) -> Result<()> {
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
         reserves one more per connection for its server side). The connections come from \
         200 per loopback address (127.0.0.2, .3, …), so Portcullis's per-source cap stays at \
         its default of 256.\n\n\
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
        if let Some(n) = idle.iter().find(|r| r.target == Target::Nginx) {
            verdicts.push(Verdict {
                name: "memory per idle connection ≤ 0.5× nginx".into(),
                met: Some(p.kb_per_conn() <= 0.5 * n.kb_per_conn()),
                detail: format!(
                    "Portcullis {:.1} KB, nginx {:.1} KB ({})",
                    p.kb_per_conn(),
                    n.kb_per_conn(),
                    ratio(p.kb_per_conn(), n.kb_per_conn())
                ),
            });
            let mb = |r: &IdleRecord| r.rss_after_kb as f64 / 1024.0;
            let fewer = if p.held < 10_000 {
                " (fewer than 10,000: `--quick`, or the open-file limit)"
            } else {
                ""
            };
            verdicts.push(Verdict {
                name: format!("RSS with {} idle mTLS connections ≤ 0.5× nginx's", p.held),
                met: Some(mb(p) <= 0.5 * mb(n)),
                detail: format!(
                    "Portcullis {:.1} MB, nginx {:.1} MB ({}){fewer}",
                    mb(p),
                    mb(n),
                    ratio(mb(p), mb(n))
                ),
            });
        }
    }
    Ok(())
}

pub(super) fn instr_section(
    md: &mut String,
    instr: &[InstrRecord],
    verdicts: &mut Vec<Verdict>,
) -> Result<()> {
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
    let of = |t: Target| instr.iter().find(|r| r.target == t);
    if let (Some(p), Some(n)) = (of(Target::Portcullis), of(Target::Nginx)) {
        let (pv, nv) = (p.per_request(), n.per_request());
        verdicts.push(Verdict {
            name: "instructions per request ≤ 0.8× nginx".into(),
            met: Some(pv <= 0.8 * nv),
            detail: format!(
                "Portcullis {pv:.0}, nginx {nv:.0} ({}) over {} keep-alive requests",
                ratio(pv, nv),
                p.requests
            ),
        });
    }
    Ok(())
}

pub(super) fn strict_section(
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
         first plaintext segment before the app reads a byte; the CPU column is the daemon's. The \
         app listens with a 4096-deep accept queue in both runs (see the analysis for what a \
         128-deep one does to the kernel path).\n",
        CLIENTS = 4
    )?;
    if strict.is_empty() {
        writeln!(md, "{note}\n")?;
        return Ok(());
    }
    writeln!(
        md,
        "| path | refused/s | served (must be 0) | CPU s of the refusing process | app's first read: data / reset |\n|---|---:|---:|---:|---|"
    )?;
    for r in strict {
        writeln!(
            md,
            "| {} | {:.0} | {} | {:.3} | {} / {} |",
            r.path,
            r.per_sec(),
            r.served,
            r.cpu_secs,
            r.app_read_data,
            r.app_read_reset
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "**CPU per refused connection.** The refusal rate above is bound by the clients on \
         core 1, so this compares what each path costs the server side instead: the refusing \
         process's CPU, the app thread's (in the kernel run it still accepts the children the \
         kernel has reset, and reads ECONNRESET), and the kernel's softirq time on every core \
         from `/proc/stat` over the measured window (a veth pair delivers a packet on the CPU \
         that sent it, so the server's receive path, tc program included, runs in softirq on \
         the client's core 1 as much as on core 0; the client side's own packets are in both \
         runs alike). Total = the processes (the app once) + softirq. Unless the kernel has \
         `CONFIG_IRQ_TIME_ACCOUNTING`, softirq time is sampled at each timer tick, so it is a \
         statistical figure over the window.\n\n\
         | path | refused | refusing process µs | app µs | softirq µs (all cores) | softirq s per core | total µs | × kernel |\n\
         |---|---:|---:|---:|---:|---|---:|---:|"
    )?;
    let kernel_total = strict
        .iter()
        .find(|r| r.path == KERNEL)
        .map(StrictRecord::total_us);
    for r in strict {
        let per_core: Vec<String> = r
            .cpus
            .cpus
            .iter()
            .map(|c| format!("{:.2}", c.softirq_secs))
            .collect();
        writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {} |",
            r.path,
            r.refused,
            r.refuser_us(),
            r.app_us(),
            r.softirq_us(),
            per_core.join(" / "),
            r.total_us(),
            kernel_total.map_or("–".into(), |k| ratio(r.total_us(), k)),
        )?;
    }
    writeln!(md)?;
    let find = |p: &str| strict.iter().find(|r| r.path == p);
    if let (Some(k), Some(u)) = (find(KERNEL), find(USERSPACE)) {
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
        // The rate is the client's bound on this machine; the CPU per refusal is not.
        verdicts.push(Verdict {
            name: "kernel STRICT server CPU per refusal ≤ 0.1× userspace".into(),
            met: Some(k.total_us() <= 0.1 * u.total_us()),
            detail: format!(
                "kernel {:.2} µs (softirq {:.2}, daemon {:.2}, app {:.2}), userspace {:.2} µs (softirq {:.2}, app {:.2}): {}",
                k.total_us(),
                k.softirq_us(),
                k.refuser_us(),
                k.app_us(),
                u.total_us(),
                u.softirq_us(),
                u.app_us(),
                ratio(k.total_us(), u.total_us())
            ),
        });
    }
    Ok(())
}

pub(super) fn authz_section(
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
