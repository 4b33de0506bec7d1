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
