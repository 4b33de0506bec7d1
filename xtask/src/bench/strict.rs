//! Scenario 7: STRICT rejection. Plaintext connection attempts refused per second by the
//! kernel path (`portcullis kernel run`, tc ingress reset) versus a userspace listener that
//! accepts, reads the first bytes and resets, with the daemon's CPU during the kernel run.
//! Both runs also read the kernel's softirq time from `/proc/stat` over the measured window,
//! so the CPU each path spends per refused connection can be compared even when the client is
//! what bounds the rate.
//!
//! Runs in two network namespaces made here (`pcb-<pid>-s` with 10.233.0.1, `pcb-<pid>-o` with
//! 10.233.0.2, joined by a veth pair) and removed on drop; traffic goes nowhere else. Needs
//! root (namespaces, bpffs).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::sys::{self, pinned, CpuTimes, CpuWindow, Proc, LOAD_CORE, PROXY_CORE};

const SERVER: &str = "10.233.0.1";
const PORT: u16 = 80;
/// Client threads in the outside namespace.
const CLIENTS: usize = 4;

#[derive(Clone, Debug, Serialize)]
pub struct StrictRecord {
    /// `kernel` or `userspace`.
    pub path: &'static str,
    pub refused: u64,
    /// Attempts the server answered with data (must be 0).
    pub served: u64,
    pub secs: f64,
    /// CPU seconds of what refuses in userspace: the daemon for the kernel path (it only
    /// holds the maps), the listener thread for the userspace path.
    pub cpu_secs: f64,
    /// What the app's first read on each accepted connection saw: bytes of the plaintext
    /// request (userspace) or a reset (kernel: it never sees a byte).
    pub app_read_data: u64,
    pub app_read_reset: u64,
    /// CPU seconds of the app's thread (for the userspace path, the refusing process itself;
    /// for the kernel path, the app accepting children the kernel has already reset).
    pub app_cpu_secs: f64,
    /// Every CPU over the measured window, softirq time included.
    pub cpus: CpuWindow,
}

impl StrictRecord {
    pub fn per_sec(&self) -> f64 {
        self.refused as f64 / self.secs.max(f64::EPSILON)
    }

    /// Seconds per refused connection, in µs.
    fn per_refusal_us(&self, secs: f64) -> f64 {
        if self.refused == 0 {
            return f64::NAN;
        }
        secs * 1e6 / self.refused as f64
    }

    /// Kernel softirq time, all CPUs, per refused connection, µs. On a veth pair a packet is
    /// received on the CPU that sent it, so the server side's receive path (tc ingress, TCP)
    /// runs in softirq on the client's core as much as on the server's.
    pub fn softirq_us(&self) -> f64 {
        self.per_refusal_us(self.cpus.softirq_secs())
    }

    /// The refusing process's CPU per refused connection, µs.
    pub fn refuser_us(&self) -> f64 {
        self.per_refusal_us(self.cpu_secs)
    }

    /// The app thread's CPU per refused connection, µs.
    pub fn app_us(&self) -> f64 {
        self.per_refusal_us(self.app_cpu_secs)
    }

    /// What a refusal costs the server side: the processes that took part (the app once,
    /// also when it is the refuser) and the kernel's softirq work.
    pub fn total_us(&self) -> f64 {
        let processes = if self.path == USERSPACE {
            self.app_cpu_secs
        } else {
            self.cpu_secs + self.app_cpu_secs
        };
        self.per_refusal_us(processes + self.cpus.softirq_secs())
    }
}

pub const USERSPACE: &str = "userspace";
pub const KERNEL: &str = "kernel";

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The two namespaces; deleting them on drop also deletes the veth pair.
struct Netns {
    server: String,
    outside: String,
}

impl Netns {
    fn create() -> Result<Self> {
        let base = format!("pcb-{}", std::process::id());
        let ns = Self {
            server: format!("{base}-s"),
            outside: format!("{base}-o"),
        };
        let (s, o) = (ns.server.as_str(), ns.outside.as_str());
        ip(&["netns", "add", s])?;
        ip(&["netns", "add", o])?;
        ip(&[
            "link", "add", "pcb-srv", "netns", s, "type", "veth", "peer", "name", "pcb-out",
            "netns", o,
        ])?;
        for (n, dev, addr) in [
            (s, "pcb-srv", "10.233.0.1/24"),
            (o, "pcb-out", "10.233.0.2/24"),
        ] {
            ip(&["-n", n, "link", "set", "lo", "up"])?;
            ip(&["-n", n, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", n, "link", "set", dev, "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.server]);
        let _ = ip(&["netns", "del", &self.outside]);
    }
}

/// Moves the calling thread into network namespace `ns` and pins it to `core`.
fn enter(ns: &str, core: u32) -> Result<()> {
    let f =
        File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
    // SAFETY: setns/sched_setaffinity act on the calling thread and read only what is passed.
    unsafe {
        if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
            bail!("setns {ns}: {}", std::io::Error::last_os_error());
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    Ok(())
}

/// This thread's user+system CPU seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct passed.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// What the app did while it ran.
#[derive(Default)]
struct AppOutcome {
    cpu_secs: f64,
    read_data: u64,
    read_reset: u64,
}

/// The app on the server: accepts, reads the first bytes, and closes. With `reset` it closes
/// with SO_LINGER 0, which sends an RST: the userspace version of a STRICT check.
fn server_app(
    ns: String,
    reset: bool,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) -> AppOutcome {
    let listener = match enter(&ns, PROXY_CORE)
        .and_then(|_| Ok(TcpListener::bind((SERVER, PORT))?))
        .and_then(|l| {
            // A blocking accept that gives up every 50 ms (Linux honours SO_RCVTIMEO on
            // accept), so `stop` is seen without polling.
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: setsockopt reads the struct passed, on a socket this owns.
            let rc = unsafe {
                libc::setsockopt(
                    l.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
            }
            // A deep accept queue, as a server under a connection flood would have (std
            // listens with 128); calling listen again on a listening socket resizes it.
            // SAFETY: listen on a socket this owns.
            if unsafe { libc::listen(l.as_raw_fd(), 4096) } != 0 {
                bail!("listen: {}", std::io::Error::last_os_error());
            }
            Ok(l)
        }) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return AppOutcome::default();
        }
    };
    let _ = ready.send(Ok(()));
    let cpu0 = thread_cpu();
    let mut buf = [0u8; 512];
    let mut out = AppOutcome::default();
    while !stop.load(Ordering::Relaxed) {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            // A TLS ClientHello starts 16 03 0x; anything else is plaintext.
            match s.read(&mut buf) {
                Ok(n) if n > 0 => out.read_data += 1,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => out.read_reset += 1,
                _ => {}
            }
            if reset {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt reads the struct passed, on a socket this owns.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
            }
        }
    }
    out.cpu_secs = thread_cpu() - cpu0;
    out
}

/// What [`drive`] counted: refused, served, seconds, and the CPUs over that time.
type Driven = (u64, u64, f64, CpuWindow);

/// `CLIENTS` threads in the outside namespace: connect, send a plaintext request, read; a
/// reset (or a close with no data) is a refusal. Until `duration` passes.
fn drive(outside: &str, duration: Duration) -> Result<Driven> {
    let before = CpuTimes::read()?;
    let refused = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let addr: SocketAddr = format!("{SERVER}:{PORT}").parse()?;
    let mut handles = Vec::new();
    for _ in 0..CLIENTS {
        let (ns, r, s) = (outside.to_owned(), refused.clone(), served.clone());
        handles.push(std::thread::spawn(move || -> Result<()> {
            enter(&ns, LOAD_CORE)?;
            let mut buf = [0u8; 256];
            // Bounded by the deadline and by a count no machine reaches in the time.
            for _ in 0..100_000_000u64 {
                if Instant::now() >= deadline {
                    break;
                }
                let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                    continue;
                };
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: server\r\n\r\n");
                match c.read(&mut buf) {
                    Ok(0) => r.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => s.fetch_add(1, Ordering::Relaxed),
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                        r.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => 0,
                };
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpus = before.since(&CpuTimes::read()?);
    Ok((
        refused.load(Ordering::Relaxed),
        served.load(Ordering::Relaxed),
        secs,
        cpus,
    ))
}

/// The kernel daemon in the server namespace (nsenter keeps the host's /sys/fs/bpf visible).
struct Daemon {
    proc: Option<Proc>,
    bin: PathBuf,
    ns: String,
    pin_dir: PathBuf,
}

impl Daemon {
    fn kernel(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns))
            .arg(&self.bin)
            .arg("kernel")
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir);
        cmd
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Stop the daemon first, then detach and unpin what it installed.
        drop(self.proc.take());
        let _ = self.kernel(&["uninstall"]).output();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

fn start_daemon(bin: &Path, ns: &str, log: &Path) -> Result<Daemon> {
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/portcullis-bench-{}",
        std::process::id()
    ));
    let mut cmd = pinned(PROXY_CORE, "nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .arg(bin)
        .args(["kernel", "run", "--iface", "pcb-srv", "--port", "80=strict"])
        .arg("--pin-dir")
        .arg(&pin_dir);
    let mut proc = Proc::spawn("portcullis kernel run", &mut cmd, log)?;
    proc.check_alive(log)?;
    let d = Daemon {
        proc: Some(proc),
        bin: bin.to_owned(),
        ns: ns.to_owned(),
        pin_dir,
    };
    // Up when status shows port 80 as STRICT.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let out = d.kernel(&["status"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text
            .lines()
            .any(|l| l.trim().eq_ignore_ascii_case("port 80: strict"))
        {
            return Ok(d);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the kernel daemon did not put port 80 in STRICT within 20 s (log: {log:?})")
}

fn userspace_run(ns: &Netns, duration: Duration) -> Result<StrictRecord> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let (server, st) = (ns.server.clone(), stop.clone());
    let app = std::thread::spawn(move || server_app(server, true, st, tx));
    rx.recv().context("the listener thread ended")??;
    let driven = drive(&ns.outside, duration);
    stop.store(true, Ordering::Relaxed);
    let app = app.join().unwrap_or_default();
    let (refused, served, secs, cpus) = driven?;
    Ok(StrictRecord {
        path: USERSPACE,
        refused,
        served,
        secs,
        cpu_secs: app.cpu_secs,
        app_read_data: app.read_data,
        app_read_reset: app.read_reset,
        app_cpu_secs: app.cpu_secs,
        cpus,
    })
}

fn kernel_run(ns: &Netns, bin: &Path, log: &Path, duration: Duration) -> Result<StrictRecord> {
    // The plaintext app still listens: the kernel resets its connections before it reads.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let (server, st) = (ns.server.clone(), stop.clone());
    let app = std::thread::spawn(move || server_app(server, false, st, tx));
    rx.recv().context("the app thread ended")??;
    let result = (|| -> Result<(Driven, f64)> {
        let daemon = start_daemon(bin, &ns.server, log)?;
        let pid = daemon
            .proc
            .as_ref()
            .map(Proc::pid)
            .context("the daemon runs")?;
        let cpu0 = sys::cpu_seconds(pid)?;
        let driven = drive(&ns.outside, duration)?;
        let cpu_secs = sys::cpu_seconds(pid)? - cpu0;
        Ok((driven, cpu_secs))
    })();
    stop.store(true, Ordering::Relaxed);
    let app = app.join().unwrap_or_default();
    let ((refused, served, secs, cpus), cpu_secs) = result?;
    Ok(StrictRecord {
        path: KERNEL,
        refused,
        served,
        secs,
        cpu_secs,
        app_read_data: app.read_data,
        app_read_reset: app.read_reset,
        app_cpu_secs: app.cpu_secs,
        cpus,
    })
}

/// Both paths, userspace first.
pub fn measure(bin: &Path, work: &Path, duration: Duration) -> Result<Vec<StrictRecord>> {
    eprintln!("bench: scenario 7: STRICT rejection of plaintext, kernel vs userspace, in netns");
    let ns = Netns::create()?;
    let kernel = kernel_run(&ns, bin, &work.join("kernel-daemon.log"), duration)?;
    let user = userspace_run(&ns, duration)?;
    for r in [&user, &kernel] {
        let per_cpu: Vec<String> = r
            .cpus
            .cpus
            .iter()
            .map(|c| format!("{:.2}", c.softirq_secs))
            .collect();
        eprintln!(
            "bench:   {:<10} {:>8.0} refused/s  served {}  cpu {:.2} s  app read data {} / reset {}  softirq {:.2} s ({} per CPU)  per refusal: refuser {:.1} µs, app {:.1} µs, softirq {:.1} µs, total {:.1} µs",
            r.path,
            r.per_sec(),
            r.served,
            r.cpu_secs,
            r.app_read_data,
            r.app_read_reset,
            r.cpus.softirq_secs(),
            per_cpu.join("/"),
            r.refuser_us(),
            r.app_us(),
            r.softirq_us(),
            r.total_us(),
        );
        if r.served > 0 {
            bail!(
                "{} path: {} plaintext requests were served",
                r.path,
                r.served
            );
        }
    }
    Ok(vec![user, kernel])
}

#[cfg(test)]
mod tests {
    use super::super::sys::CpuDelta;
    use super::*;

    fn record(
        path: &'static str,
        refused: u64,
        cpu: f64,
        app: f64,
        softirq: &[f64],
    ) -> StrictRecord {
        StrictRecord {
            path,
            refused,
            served: 0,
            secs: 1.0,
            cpu_secs: cpu,
            app_read_data: 0,
            app_read_reset: 0,
            app_cpu_secs: app,
            cpus: CpuWindow {
                cpus: softirq
                    .iter()
                    .map(|&s| CpuDelta {
                        total_secs: 1.0,
                        idle_secs: 0.0,
                        softirq_secs: s,
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn a_refusal_costs_the_processes_once_and_the_softirq_of_every_core() {
        // Userspace: the app is the refuser, counted once.
        let u = record(USERSPACE, 1_000, 0.02, 0.02, &[0.001, 0.004]);
        assert!((u.total_us() - 25.0).abs() < 1e-9, "{}", u.total_us());
        // Kernel: the daemon and the app are different processes.
        let k = record(KERNEL, 1_000, 0.001, 0.003, &[0.0, 0.004]);
        assert!((k.total_us() - 8.0).abs() < 1e-9, "{}", k.total_us());
        assert!((k.softirq_us() - 4.0).abs() < 1e-9);
        assert!(record(KERNEL, 0, 0.0, 0.0, &[]).total_us().is_nan());
    }
}
