//! Tools for the hostile-load tests: client sockets from chosen loopback source addresses, a
//! hand-built TLS ClientHello, slow clients of several shapes and a poller that sees which of
//! them the gateway closed and when, the daemon's memory and descriptors, and the
//! `portcullis_limits_total` counters on the admin listener.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::free_port;
use crate::walkthrough::{curl, Gateway, Identity, Walkthrough};

/// Raises this process's `RLIMIT_NOFILE` soft limit to its hard limit (a test that holds
/// thousands of sockets needs it); returns the new soft limit.
pub fn raise_nofile() -> Result<u64> {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        rlim.rlim_cur = rlim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(rlim.rlim_cur)
}

/// The `i`-th attacker source address, cycling through 127.0.0.2–127.0.0.50 (the whole of
/// 127/8 is loopback on Linux, so no setup is needed), keeping 127.0.0.1 for the normal client.
pub fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 49) as u8))
}

/// A TCP connection to `dst` from `src` (any port).
pub fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&dst.into(), Duration::from_secs(5))?;
    Ok(sock.into())
}

/// A TLS 1.3 (and 1.2) ClientHello for `sni`, built by hand so a test can send exactly it, or
/// part of it, and then stall the way a slow attacker does.
pub fn client_hello(sni: &str) -> Vec<u8> {
    fn u16be(n: usize) -> [u8; 2] {
        (n as u16).to_be_bytes()
    }
    fn ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend(u16be(body.len()));
        out.extend(body);
    }
    let mut exts = Vec::new();
    let name = sni.as_bytes();
    let mut sni_body = Vec::new();
    sni_body.extend(u16be(name.len() + 3));
    sni_body.push(0); // host_name
    sni_body.extend(u16be(name.len()));
    sni_body.extend(name);
    ext(&mut exts, 0x0000, &sni_body);
    ext(&mut exts, 0x000a, &[0, 2, 0x00, 0x1d]); // supported_groups: x25519
    ext(
        &mut exts,
        0x000d,
        &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    ); // signature_algorithms
    ext(&mut exts, 0x0010, b"\x00\x0c\x02h2\x08http/1.1"); // ALPN
    ext(&mut exts, 0x002b, &[4, 0x03, 0x04, 0x03, 0x03]); // supported_versions: 1.3, 1.2
    let mut share = vec![0, 36, 0x00, 0x1d, 0, 32];
    share.extend([9u8; 32]); // any 32 bytes are an X25519 public key
    ext(&mut exts, 0x0033, &share);

    let mut body = vec![0x03, 0x03];
    body.extend([0x42u8; 32]); // random
    body.push(32);
    body.extend([0x17u8; 32]); // legacy session id (middlebox compatibility)
    body.extend([0, 8, 0x13, 0x01, 0x13, 0x02, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend([1, 0]); // null compression
    body.extend(u16be(exts.len()));
    body.extend(exts);

    let mut hs = vec![0x01, 0];
    hs.extend(u16be(body.len()));
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16be(hs.len()));
    record.extend(hs);
    record
}

/// What a slow client does after connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shape {
    /// TLS port: connects and sends nothing.
    TlsSilent,
    /// TLS port: sends the first half of a ClientHello, then nothing.
    TlsHalfHello,
    /// TLS port: sends a whole ClientHello, reads the server's flight, never answers it.
    TlsHelloThenStall,
    /// Plain HTTP port: connects and sends nothing.
    HttpSilent,
    /// Plain HTTP port: a request line, then one header line per second, never the blank line.
    HttpDribble,
    /// Plain HTTP port: one whole request, reads the answer, then keeps the connection idle.
    HttpIdleKeepAlive,
}

impl Shape {
    pub const ALL: [Shape; 6] = [
        Shape::TlsSilent,
        Shape::TlsHalfHello,
        Shape::TlsHelloThenStall,
        Shape::HttpSilent,
        Shape::HttpDribble,
        Shape::HttpIdleKeepAlive,
    ];

    pub fn is_tls(self) -> bool {
        matches!(
            self,
            Shape::TlsSilent | Shape::TlsHalfHello | Shape::TlsHelloThenStall
        )
    }
}

/// One slow client and what became of it.
pub struct Slow {
    pub shape: Shape,
    pub src: IpAddr,
    stream: TcpStream,
    pub opened: Instant,
    /// When the gateway closed it (EOF, reset, or a write that failed), after `opened`.
    pub closed: Option<Duration>,
    /// Bytes the gateway sent (a ServerHello flight, an HTTP answer).
    pub received: usize,
    next_write: Instant,
    lines: usize,
}

impl Slow {
    /// Connects from `src` to `dst` and sends what `shape` sends first.
    pub fn open(shape: Shape, src: IpAddr, dst: SocketAddr) -> std::io::Result<Self> {
        let mut stream = connect_from(src, dst)?;
        let first: Vec<u8> = match shape {
            Shape::TlsSilent | Shape::HttpSilent => Vec::new(),
            Shape::TlsHalfHello => {
                let hello = client_hello("test.com");
                hello[..hello.len() / 2].to_vec()
            }
            Shape::TlsHelloThenStall => client_hello("test.com"),
            Shape::HttpDribble => b"GET /get HTTP/1.1\r\nHost: test.com\r\n".to_vec(),
            Shape::HttpIdleKeepAlive => b"GET /get HTTP/1.1\r\nHost: test.com\r\n\r\n".to_vec(),
        };
        let mut this = Self {
            shape,
            src,
            stream: stream.try_clone()?,
            opened: Instant::now(),
            closed: None,
            received: 0,
            next_write: Instant::now() + Duration::from_secs(1),
            lines: 0,
        };
        if !first.is_empty() && stream.write_all(&first).is_err() {
            this.closed = Some(Duration::ZERO);
        }
        this.stream.set_nonblocking(true)?;
        Ok(this)
    }

    /// One non-blocking look: reads what arrived, dribbles the next header line when due.
    /// Returns true while the connection is still open.
    pub fn step(&mut self, now: Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed = Some(self.opened.elapsed());
                    return false;
                }
                Ok(n) => self.received += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.closed = Some(self.opened.elapsed());
                    return false;
                }
            }
        }
        if self.shape == Shape::HttpDribble && now >= self.next_write {
            self.lines += 1;
            let line = format!("X-Slow-{}: 1\r\n", self.lines);
            match self.stream.write(line.as_bytes()) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.closed = Some(self.opened.elapsed());
                    return false;
                }
            }
            self.next_write = now + Duration::from_secs(1);
        }
        true
    }
}

/// Steps every client until all are closed or `limit` has passed; returns how many are open.
pub fn step_until_closed(clients: &mut [Slow], limit: Duration) -> usize {
    let end = Instant::now() + limit;
    loop {
        let now = Instant::now();
        let open = clients
            .iter_mut()
            .map(|c| c.step(now))
            .filter(|&open| open)
            .count();
        if open == 0 || now >= end {
            return open;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Blocks until the gateway closes `stream` (EOF or reset), reading and discarding what it
/// sends; `None` if still open after `limit`.
pub fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        if stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .is_err()
        {
            return Some(start.elapsed());
        }
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if start.elapsed() >= limit {
                    return None;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Open descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Waits (bounded, 10s) until the accept queue of the listener on `port` is empty (`ss`'s
/// Recv-Q of a listening socket): the connections a test opened were accepted and admitted or
/// refused, not just queued by the kernel.
pub fn wait_accepted(port: u16) -> Result<()> {
    let mut last = String::new();
    for _ in 0..200 {
        let out =
            crate::process::run(Command::new("ss").args(["-Hltn", &format!("sport = :{port}")]))?;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        let queued: Option<u64> = last.split_whitespace().nth(1).and_then(|q| q.parse().ok());
        if queued == Some(0) {
            // The accept loop admits right after accepting; give the last one a moment.
            std::thread::sleep(Duration::from_millis(200));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the accept queue of port {port} never emptied: {last}")
}

/// `portcullis_limits_total` by reason, from the admin listener at `admin` (`ADDR:PORT`).
pub fn limits(admin: &str) -> Result<BTreeMap<String, f64>> {
    let (code, body) = curl(&format!("http://{admin}/stats/prometheus"), &[])?;
    if code != "200" {
        bail!("admin {admin} answered {code}: {body}");
    }
    let mut out = BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("portcullis_limits_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(reason) = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("reason=\""))
            .and_then(|r| r.strip_suffix('"'))
        else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(reason.to_owned()).or_insert(0.0) += v;
        }
    }
    Ok(out)
}

/// Waits (bounded) until `portcullis_limits_total{reason}` reaches `at_least`; returns it.
pub fn wait_limit(admin: &str, reason: &str, at_least: f64) -> Result<f64> {
    let mut last = BTreeMap::new();
    for _ in 0..50 {
        last = limits(admin)?;
        let v = last.get(reason).copied().unwrap_or(0.0);
        if v >= at_least {
            eprintln!("portcullis_limits_total{{reason=\"{reason}\"}} = {v}");
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("portcullis_limits_total{{reason=\"{reason}\"}} never reached {at_least}; counters: {last:?}")
}

/// A walkthrough gateway with its admin listener; fields drop gateway first.
pub struct Setup {
    pub gw: Gateway,
    pub admin: String,
    pub w: Walkthrough,
    _tmp: tempfile::TempDir,
}

impl Setup {
    pub fn start(extra: &[&str]) -> Result<Self> {
        Self::start_with(extra, None)
    }

    pub fn start_with(extra: &[&str], nofile: Option<(u64, u64)>) -> Result<Self> {
        Self::start_custom(extra, nofile, |_| Ok(()))
    }

    /// [`Self::start_with`], after `prepare` has changed the walkthrough's files.
    pub fn start_custom(
        extra: &[&str],
        nofile: Option<(u64, u64)>,
        prepare: impl FnOnce(&Walkthrough) -> Result<()>,
    ) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let w = Walkthrough::prepare(tmp.path())?;
        prepare(&w)?;
        let admin = format!("127.0.0.1:{}", free_port()?);
        let mut args = vec!["--admin", &admin];
        args.extend(extra);
        // Tests run in parallel and each picks free ports a moment before binding them: a
        // gateway that lost the race exits (while its port answers for another test's
        // gateway), so a start is only good when the daemon is still alive; else retry.
        let mut attempt = 0;
        let gw = loop {
            let mut gw = w.start_gateway_with(&args, nofile)?;
            std::thread::sleep(Duration::from_millis(300));
            if gw.daemon.try_wait().is_none() || attempt == 3 {
                break gw;
            }
            eprintln!(
                "gateway exited at start (port race?), retrying:\n{}",
                gw.daemon.log()
            );
            attempt += 1;
        };
        Ok(Self {
            gw,
            admin,
            w,
            _tmp: tmp,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.gw.http_port))
    }

    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.gw.https_port))
    }

    /// The walkthrough's mTLS client: status code and total time.
    pub fn normal_client(&self) -> Result<(String, Duration)> {
        let start = Instant::now();
        let code = self.gw.https("/status/200", Identity::Client)?;
        Ok((code, start.elapsed()))
    }

    pub fn assert_alive_and_serving(&mut self, when: &str) -> Result<()> {
        assert!(
            self.gw.daemon.try_wait().is_none(),
            "the daemon died {when}:\n{}",
            self.gw.daemon.log()
        );
        let (code, took) = self.normal_client()?;
        eprintln!("normal mTLS client {when}: {code} in {took:?}");
        assert_eq!(code, "200", "the normal client is served {when}");
        Ok(())
    }

    /// `openssl s_client` with the walkthrough's client certificate, stdin piped.
    pub fn s_client(&self, alpn: &str) -> Result<std::process::Child> {
        let certs = &self.w.certs;
        Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-servername",
                "test.com",
                "-alpn",
                alpn,
            ])
            .arg("-connect")
            .arg(self.https_addr().to_string())
            .arg("-CAfile")
            .arg(certs.ca_cert())
            .arg("-cert")
            .arg(certs.client_cert())
            .arg("-key")
            .arg(certs.client_key())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning openssl s_client")
    }
}
