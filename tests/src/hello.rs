//! The plaintext app of the kernel tests: answers `Hello World!` on `[::]:80` inside a
//! network namespace and counts what it accepted and read, so a test can prove that the
//! kernel reset a connection before the app saw a byte.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::netns::Topology;

// ---------------------------------------------------------------------------------------------
// The plaintext app: answers `Hello World!`, counts what it accepted and read.

#[derive(Default)]
pub struct AppStats {
    pub accepted: AtomicU64,
    pub bytes_read: AtomicU64,
    pub read_resets: AtomicU64,
    pub served: AtomicU64,
    pub first_bytes: Mutex<Vec<Vec<u8>>>,
}

pub struct HelloApp {
    pub stats: Arc<AppStats>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Option<()>>>,
}

impl HelloApp {
    /// Starts the app on `[::]:80` (IPv4 too) inside `ns`.
    pub fn start(ns: &str) -> Result<Self> {
        let stats = Arc::new(AppStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, st) = (stats.clone(), stop.clone());
        let handle = Topology::spawn_in(ns, move || {
            // [::]:80 takes IPv4 too (bindv6only=0 in a fresh namespace).
            let listener = match TcpListener::bind("[::]:80") {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(listener.set_nonblocking(true).map_err(|e| e.to_string()));
            serve(&listener, &s, &st);
        })?;
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            other => bail!("the app did not start: {other:?}"),
        }
        Ok(Self {
            stats,
            stop,
            handle: Some(handle),
        })
    }

    /// Bytes the app has read from all connections.
    pub fn bytes_read(&self) -> u64 {
        self.stats.bytes_read.load(Ordering::SeqCst)
    }
}

impl Drop for HelloApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(listener: &TcpListener, stats: &AppStats, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let mut conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        stats.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    stats.bytes_read.fetch_add(n as u64, Ordering::SeqCst);
                    got.extend_from_slice(&buf[..n]);
                    // A TLS ClientHello never ends in a blank line: answer at once.
                    if got.windows(4).any(|w| w == b"\r\n\r\n")
                        || got[0] == 0x16
                        || got.len() > 65536
                    {
                        break;
                    }
                }
                Err(e) => {
                    if e.kind() == ErrorKind::ConnectionReset {
                        stats.read_resets.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
            }
        }
        if let Ok(mut first) = stats.first_bytes.lock() {
            first.push(got.iter().take(3).copied().collect());
        }
        if !got.is_empty() {
            let body = "Hello World!";
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if conn.write_all(resp.as_bytes()).is_ok() {
                stats.served.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The recording app of the adversarial tests: every byte of every connection is kept, and it
// speaks a Redis-like line protocol, so "the app executed a command" is observable too.

/// What the recording app saw.
#[derive(Default)]
pub struct Recording {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Every byte read, per connection, in accept order.
    pub conns: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
    /// Newline-terminated lines answered (`+OK`), i.e. commands executed.
    pub executed: AtomicU64,
}

impl Recording {
    /// Total bytes read over all connections.
    pub fn bytes_read(&self) -> usize {
        self.conns
            .lock()
            .map(|c| c.iter().map(|b| b.lock().map_or(0, |b| b.len())).sum())
            .unwrap_or(0)
    }

    /// True when any connection's bytes contain `needle`.
    pub fn saw(&self, needle: &[u8]) -> bool {
        self.conns.lock().is_ok_and(|c| {
            c.iter().any(|b| {
                b.lock()
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            })
        })
    }

    /// How many times `needle` occurs in what the app read, over all connections.
    pub fn count(&self, needle: &[u8]) -> usize {
        self.conns
            .lock()
            .map(|c| {
                c.iter()
                    .map(|b| {
                        b.lock().map_or(0, |b| {
                            b.windows(needle.len()).filter(|w| *w == needle).count()
                        })
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The last connection whose bytes contain `needle`, lossy and cut to 200 characters.
    pub fn last_with(&self, needle: &[u8]) -> String {
        self.conns
            .lock()
            .ok()
            .and_then(|c| {
                c.iter().rev().find_map(|b| {
                    let b = b.lock().ok()?;
                    b.windows(needle.len())
                        .any(|w| w == needle)
                        .then(|| String::from_utf8_lossy(&b).chars().take(200).collect())
                })
            })
            .unwrap_or_default()
    }

    /// Everything read, lossy, for failure messages.
    pub fn dump(&self) -> String {
        self.conns
            .lock()
            .map(|c| {
                c.iter()
                    .map(|b| {
                        b.lock()
                            .map(|b| format!("{:?}", String::from_utf8_lossy(&b)))
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

/// A line-protocol app on `[::]:<port>` that records every byte it reads and answers each
/// newline-terminated line with `+OK` (counted as a command executed). A TLS ClientHello has
/// no reason to contain a newline at a line start, but an attacker's bytes do.
pub struct RecordingApp {
    pub rec: Arc<Recording>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Option<()>>>,
}

impl RecordingApp {
    /// Starts the app on `[::]:port` (IPv4 too) inside `ns`.
    pub fn start(ns: &str, port: u16) -> Result<Self> {
        let rec = Arc::new(Recording::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (r, st) = (rec.clone(), stop.clone());
        let handle = Topology::spawn_in(ns, move || {
            let listener = match TcpListener::bind(("::", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(listener.set_nonblocking(true).map_err(|e| e.to_string()));
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        r.accepted.fetch_add(1, Ordering::SeqCst);
                        let buf = Arc::new(Mutex::new(Vec::new()));
                        if let Ok(mut c) = r.conns.lock() {
                            c.push(buf.clone());
                        }
                        let r = r.clone();
                        std::thread::spawn(move || record(conn, &buf, &r));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => {}
                }
            }
        })?;
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            other => bail!("the recording app did not start: {other:?}"),
        }
        Ok(Self {
            rec,
            stop,
            handle: Some(handle),
        })
    }
}

fn record(mut conn: std::net::TcpStream, buf: &Mutex<Vec<u8>>, rec: &Recording) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(3)));
    let mut chunk = [0u8; 4096];
    let mut line_start = 0usize;
    // Bounded: a connection ends on EOF, error, the read timeout or 1 MiB.
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Ok(mut all) = buf.lock() else { return };
        all.extend_from_slice(&chunk[..n]);
        while let Some(nl) = all[line_start..].iter().position(|b| *b == b'\n') {
            line_start += nl + 1;
            rec.executed.fetch_add(1, Ordering::SeqCst);
            let _ = conn.write_all(b"+OK\r\n");
        }
        if all.len() > 1 << 20 {
            return;
        }
    }
}

impl Drop for RecordingApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
