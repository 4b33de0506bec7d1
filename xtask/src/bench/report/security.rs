//! Scenario 10 in BENCHMARKS.md: what each security default costs Portcullis per request.

use std::fmt::Write as _;

use anyhow::Result;

use super::super::instr::{InstrRecord, SecurityCosts};
use super::super::peers::Target;

/// `instr` is scenario 8's records: its Portcullis row, when it counted as many requests, is
/// one more run of the defaults for the noise band.
pub(super) fn security_section(
    md: &mut String,
    costs: Option<&SecurityCosts>,
    instr: &[InstrRecord],
) -> Result<()> {
    writeln!(
        md,
        "## 10. What each security default costs (callgrind instructions per request)\n\n\
         Every other scenario runs Portcullis with its security defaults on. Here Portcullis \
         alone runs as in the instructions section (callgrind, one mTLS connection, keep-alive \
         HTTP/1.1, 1 KB, counters zeroed after a warm-up) with its defaults, then once with each \
         default turned off, then with its defaults again; the cost is the defaults' mean minus \
         the run with the feature off. Two runs of the same build differ (hash seeds, timers, \
         allocator state), so the spread of the defaults' runs (with the instructions section's \
         Portcullis count when it used as many requests) is the noise: a cost inside it is not \
         a measured cost. The caps (request header bytes and count, connections in total and per \
         source, requests in flight per upstream endpoint, HTTP/2 streams) are not in the table: \
         each is a number whose check runs whatever the number, there is no switch that removes \
         the check, and the suite adds none.\n"
    )?;
    let Some(costs) = costs else {
        writeln!(md, "Not run.\n")?;
        return Ok(());
    };
    let d = costs.defaults_per_request();
    let mut runs: Vec<f64> = costs
        .defaults
        .iter()
        .map(InstrRecord::per_request)
        .collect();
    let requests = costs.defaults.first().map_or(0, |r| r.requests);
    runs.extend(
        instr
            .iter()
            .filter(|r| r.target == Target::Portcullis && r.requests == requests)
            .map(InstrRecord::per_request),
    );
    let (lo, hi) = runs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let noise = hi - lo;
    let listed: Vec<String> = runs.iter().map(|v| format!("{v:.0}")).collect();
    writeln!(
        md,
        "Defaults: **{d:.0}** instructions per request (runs: {}; {requests} requests each; \
         spread {noise:.0}).\n\n\
         | feature | turned off by | instr/request on | instr/request off | cost | share of defaults | beyond the noise |\n\
         |---|---|---:|---:|---:|---:|---|",
        listed.join(", ")
    )?;
    for c in &costs.off {
        let v = c.off.per_request();
        let cost = d - v;
        writeln!(
            md,
            "| {} | {} | {d:.0} | {v:.0} | {cost:+.0} | {:.1} % | {} |",
            c.feature,
            c.how,
            cost / d.max(f64::EPSILON) * 100.0,
            if cost.abs() > noise { "yes" } else { "no" },
        )?;
    }
    writeln!(md)?;
    Ok(())
}
