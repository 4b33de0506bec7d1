//! Scenario 2's strict form: full mTLS handshakes per second with session resumption off.
//! oha's client resumes sessions whenever a server offers tickets (and each peer does by
//! default), so its one-request-per-connection figure mixes full and resumed handshakes; this
//! driver (the suite's tokio-rustls client, pinned to the load core) never resumes, checks
//! that every handshake was full, and also probes whether each server would resume.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustls::HandshakeKind;
use serde::Serialize;
use tokio_rustls::TlsConnector;

use super::client::{client_config, open};
use super::peers::{Certs, KeyType, Lab, Target};
use super::sys::{self, LOAD_CORE};

#[derive(Clone, Debug, Serialize)]
pub struct HandshakeRecord {
    pub target: Target,
    pub key: &'static str,
    pub handshakes: u64,
    pub secs: f64,
    pub cpu_secs: Option<f64>,
    /// Whether the server resumed a session the client offered (probed separately).
    pub server_resumes: bool,
}

impl HandshakeRecord {
    pub fn per_sec(&self) -> f64 {
        self.handshakes as f64 / self.secs.max(f64::EPSILON)
    }

    /// The proxy's CPU time per handshake, µs.
    pub fn cpu_us(&self) -> Option<f64> {
        self.cpu_secs
            .filter(|_| self.handshakes > 0)
            .map(|c| c * 1e6 / self.handshakes as f64)
    }
}

/// Pins the calling thread to `core` (the driver runs on a current-thread runtime) and
/// restores its previous mask when dropped.
struct Pin(libc::cpu_set_t);

impl Pin {
    fn to(core: u32) -> Result<Self> {
        // SAFETY: cpu_set_t is plain data; the calls only read and write the sets passed.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            if libc::sched_getaffinity(0, size, &mut old) != 0 {
                bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
            }
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core as usize, &mut set);
            if libc::sched_setaffinity(0, size, &set) != 0 {
                bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
            }
            Ok(Self(old))
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0);
        }
    }
}

/// Connects twice with resumption on: did the second connection resume the first's session?
async fn probe_resumption(certs: &Certs, port: u16) -> Result<bool> {
    let connector = TlsConnector::from(client_config(certs, true)?);
    // The first connection completes a request, so any session ticket has arrived.
    drop(open(connector.clone(), port).await?);
    let second = open(connector, port).await?;
    Ok(second.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed))
}

/// `concurrency` loops of connect + full handshake + one request + close, until `duration`.
async fn drive(certs: &Certs, port: u16, duration: Duration, concurrency: usize) -> Result<u64> {
    let connector = TlsConnector::from(client_config(certs, false)?);
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (c, n) = (connector.clone(), count.clone());
        set.spawn(async move {
            // Bounded by the deadline and by a count no machine reaches in the time.
            for _ in 0..10_000_000u64 {
                if Instant::now() >= deadline {
                    break;
                }
                let conn = tokio::time::timeout(Duration::from_secs(10), open(c.clone(), port))
                    .await
                    .context("handshake timed out")??;
                if conn.get_ref().1.handshake_kind() != Some(HandshakeKind::Full) {
                    bail!(
                        "a handshake was not full: {:?}",
                        conn.get_ref().1.handshake_kind()
                    );
                }
                n.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(count.load(Ordering::Relaxed))
}

/// Full handshakes per second for every proxy with `key` certificates.
pub fn measure(
    lab: &Lab,
    certs: &Certs,
    key: KeyType,
    duration: Duration,
) -> Result<Vec<HandshakeRecord>> {
    let _pin = Pin::to(LOAD_CORE)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = Vec::new();
    for target in Target::PROXIES {
        let running = lab.start(target, certs)?;
        let pid = running.pid().context("a proxy has a pid")?;
        let server_resumes = rt.block_on(probe_resumption(certs, running.port))?;
        // Warm-up, then the measured window.
        rt.block_on(drive(certs, running.port, Duration::from_millis(300), 16))?;
        let cpu0 = sys::cpu_seconds(pid)?;
        let start = Instant::now();
        let handshakes = rt.block_on(drive(certs, running.port, duration, 16))?;
        let secs = start.elapsed().as_secs_f64();
        let cpu_secs = sys::cpu_seconds(pid)? - cpu0;
        drop(running);
        let rec = HandshakeRecord {
            target,
            key: key.cli_name(),
            handshakes,
            secs,
            cpu_secs: Some(cpu_secs),
            server_resumes,
        };
        eprintln!(
            "bench:   {target:<10} {:>8.0} full handshakes/s (resumption off)  cpu {:.2} s  server resumes by default: {}",
            rec.per_sec(),
            cpu_secs,
            if server_resumes { "yes" } else { "no" }
        );
        out.push(rec);
    }
    Ok(out)
}
