//! Scenario 5: memory per idle mTLS connection. oha cannot hold connections open, so this is
//! a small holder written with tokio-rustls: it opens N mTLS connections to a proxy, completes
//! one request on each (so the proxy has set up everything a live connection needs, including
//! its upstream side), keeps them all open, and reads the proxy's RSS growth.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::client::{client_config, open_from};
use super::peers::{Certs, Lab, Target};
use super::sys;

#[derive(Clone, Debug, Serialize)]
pub struct IdleRecord {
    pub target: Target,
    pub held: usize,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
}

impl IdleRecord {
    pub fn kb_per_conn(&self) -> f64 {
        if self.held == 0 {
            return f64::NAN;
        }
        (self.rss_after_kb as f64 - self.rss_before_kb as f64) / self.held as f64
    }
}

/// Holds `n` connections open against `port` and returns them (dropping closes them).
async fn hold(certs: &Certs, port: u16, n: usize) -> Result<Vec<TlsStream<TcpStream>>> {
    let connector = TlsConnector::from(client_config(certs, true)?);
    let mut held = Vec::with_capacity(n);
    // Batches of 64 concurrent handshakes: fast, and no accept-queue overflow at the proxy.
    while held.len() < n {
        let batch = (n - held.len()).min(64);
        let mut set = tokio::task::JoinSet::new();
        for i in held.len()..held.len() + batch {
            let c = connector.clone();
            set.spawn(tokio::time::timeout(
                Duration::from_secs(10),
                open_from(c, port, source(i)),
            ));
        }
        while let Some(r) = set.join_next().await {
            let stream = r?
                .map_err(|_| anyhow::anyhow!("connection {} timed out", held.len()))?
                .with_context(|| format!("connection {}", held.len()))?;
            held.push(stream);
        }
    }
    Ok(held)
}

/// Connections held from one loopback source address. Portcullis caps connections per
/// source (`--max-connections-per-source`, 256 by default); the bench keeps that default on and
/// spreads its connections over 127.0.0.2, 127.0.0.3, … instead, as many clients would.
const PER_SOURCE: usize = 200;

/// The loopback source of the `i`th held connection.
fn source(i: usize) -> Ipv4Addr {
    let host = u8::try_from(2 + i / PER_SOURCE).unwrap_or(u8::MAX);
    Ipv4Addr::new(127, 0, 0, host)
}

/// How many connections to hold: 10,000 (1,000 with `--quick`), fewer when the open-file
/// limit cannot fit them. A proxy needs a descriptor for the client side of each connection
/// and HAProxy reserves one more for its server side, so half the limit, less a margin, is the
/// most every peer can hold.
pub fn connections(quick: bool, nofile: u64) -> usize {
    let want = if quick { 1_000 } else { 10_000 };
    let fits = (nofile.saturating_sub(1_000) / 2) as usize;
    want.min(fits / 1_000 * 1_000).max(100)
}

/// Measures every proxy with `n` idle connections.
pub fn measure(lab: &Lab, certs: &Certs, n: usize) -> Result<Vec<IdleRecord>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = Vec::new();
    eprintln!("bench: scenario 5: RSS per idle mTLS connection, {n} connections");
    for target in Target::PROXIES {
        let running = lab.start(target, certs)?;
        let pid = running.pid().context("a proxy has a pid")?;
        let start = Instant::now();
        // One connection first, so lazily built state (TLS config, upstream pool) is in `before`.
        let warm = rt.block_on(hold(certs, running.port, 1))?;
        std::thread::sleep(Duration::from_millis(300));
        let before = sys::status_kb(pid, "VmRSS")?;
        let conns = rt.block_on(hold(certs, running.port, n))?;
        std::thread::sleep(Duration::from_millis(500));
        let after = sys::status_kb(pid, "VmRSS")?;
        drop(conns);
        drop(warm);
        drop(running);
        let rec = IdleRecord {
            target,
            held: n,
            rss_before_kb: before,
            rss_after_kb: after,
        };
        eprintln!(
            "bench:   {target:<10} {:.1} KB/connection ({before} kB -> {after} kB, {:.1} s)",
            rec.kb_per_conn(),
            start.elapsed().as_secs_f64()
        );
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_connections_stay_under_the_per_source_cap() {
        assert_eq!(source(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source(PER_SOURCE - 1), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source(PER_SOURCE), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source(9_999), Ipv4Addr::new(127, 0, 0, 51));
    }
}
