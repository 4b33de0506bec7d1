//! An HTTP/1.1 upstream that records each request head byte for byte, for tests that check
//! what the gateway forwards (which headers, how many `cookie` lines, which `Host`) rather than
//! what an httpbin chooses to echo: the built-in httpbin, like Werkzeug, hides names with `_`.
//! A chunked body is recorded too, up to its end, so its trailer section can be checked.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// A request head larger than this is recorded truncated.
const MAX_HEAD: usize = 64 * 1024;

/// The recording upstream on 127.0.0.1; stops when dropped.
pub struct Recorder {
    pub port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Listens on a free loopback port. Every connection gets one request answered
    /// `200 recorded` with `Connection: close`, so the gateway never reuses it and each
    /// request the gateway forwards is one head here.
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the recorder")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (heads, stop) = (heads.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => serve_one(stream, &heads),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Ok(Self {
            port,
            heads,
            stop,
            thread: Some(thread),
        })
    }

    /// The heads recorded since the last call, oldest first.
    pub fn take_heads(&self) -> Vec<String> {
        self.take_requests()
            .into_iter()
            .map(|mut r| {
                if let Some(end) = r.find("\r\n\r\n") {
                    r.truncate(end);
                }
                r
            })
            .collect()
    }

    /// The whole requests recorded since the last call (head, and a chunked body with its
    /// trailer section), oldest first.
    pub fn take_requests(&self) -> Vec<String> {
        self.heads
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request head and a chunked body (bounded in size and time), records it, then
/// answers it: recorded first, so a test that has its answer always finds the head.
fn serve_one(mut stream: TcpStream, heads: &Mutex<Vec<String>>) {
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .is_err()
    {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_HEAD {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    if buf.is_empty() {
        return;
    }
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let head_end = head.map_or(buf.len(), |p| p + 4);
    let chunked = String::from_utf8_lossy(&buf[..head_end])
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if chunked {
        while chunked_len(&buf[head_end..]).is_none() && buf.len() < MAX_HEAD {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    let end = if chunked {
        chunked_len(&buf[head_end..]).map_or(buf.len(), |n| head_end + n)
    } else {
        head.unwrap_or(buf.len())
    };
    if let Ok(mut h) = heads.lock() {
        h.push(String::from_utf8_lossy(&buf[..end]).into_owned());
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 8\r\nconnection: close\r\n\r\nrecorded",
    );
}

/// The length of a complete chunked body (chunks, last chunk, trailer section, empty line)
/// at the start of `body`; `None` while it is incomplete.
fn chunked_len(body: &[u8]) -> Option<usize> {
    let line_end = |from: usize| {
        body.get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p)
    };
    let mut at = 0;
    loop {
        let end = line_end(at)?;
        let size_text = String::from_utf8_lossy(&body[at..end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = end + 2;
        if size == 0 {
            break;
        }
        at += size + 2;
    }
    // Trailer fields, then the empty line.
    loop {
        let end = line_end(at)?;
        let empty = end == at;
        at = end + 2;
        if empty {
            return Some(at);
        }
    }
}

/// The header fields of a recorded head, names lowercased, in order (the request line skipped).
pub fn fields(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}
