//! Scenario 10 in BENCHMARKS.md: what each security default costs Portcullis per request.

use std::fmt::Write as _;

use anyhow::Result;

use super::super::instr::{InstrRecord, SecurityCost};
use super::super::peers::Target;

/// `instr` is scenario 8's records: its Portcullis row is a second count of the defaults,
/// which shows how far two runs of the same build differ.
pub(super) fn security_section(
    md: &mut String,
    costs: Option<&(InstrRecord, Vec<SecurityCost>)>,
    instr: &[InstrRecord],
) -> Result<()> {
    writeln!(
        md,
        "## 10. What each security default costs (callgrind instructions per request)\n\n\
         Every other scenario runs Portcullis with its security defaults on. Here Portcullis \
         alone runs as in the instructions section (callgrind, one mTLS connection, keep-alive \
         HTTP/1.1, 1 KB, counters zeroed after a warm-up) with its defaults, then once with each \
         default turned off; the cost is the difference. The caps (request header bytes and \
         count, connections in total and per source, requests in flight per upstream endpoint, \
         HTTP/2 streams) are not in the table: each is a number whose check runs whatever the \
         number, there is no switch that removes the check, and the suite adds none.\n"
    )?;
    let Some((on, off)) = costs else {
        writeln!(md, "Not run.\n")?;
        return Ok(());
    };
    let d = on.per_request();
    writeln!(
        md,
        "Defaults: **{d:.0}** instructions per request ({} requests).\n\n\
         | feature | turned off by | instr/request on | instr/request off | cost | share of defaults |\n\
         |---|---|---:|---:|---:|---:|",
        on.requests
    )?;
    for c in off {
        let v = c.off.per_request();
        writeln!(
            md,
            "| {} | {} | {d:.0} | {v:.0} | {:+.0} | {:.1} % |",
            c.feature,
            c.how,
            d - v,
            (d - v) / d.max(f64::EPSILON) * 100.0
        )?;
    }
    writeln!(md)?;
    let again = instr
        .iter()
        .find(|r| r.target == Target::Portcullis && r.requests == on.requests);
    if let Some(again) = again {
        let a = again.per_request();
        writeln!(
            md,
            "The instructions section counted the same build with the same defaults at {a:.0} \
             per request ({:+.0}): a cost smaller than that difference is within the noise of \
             two runs.\n",
            a - d
        )?;
    }
    Ok(())
}
