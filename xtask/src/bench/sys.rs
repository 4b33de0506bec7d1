//! The machine and the processes under test: what the CPU is, which tools are installed
//! (installing the missing ones), pinning to a core with `taskset`, and a process's CPU
//! seconds and resident memory read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// The core the proxy under test runs on.
pub const PROXY_CORE: u32 = 0;
/// The core the load generator and the upstream share.
pub const LOAD_CORE: u32 = 1;

/// What the report says about the machine.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub date: String,
    pub nginx: String,
    pub haproxy: String,
    pub oha: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            cpu_model,
            cores,
            kernel: first_line("uname", &["-srm"]),
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            nginx: first_line("nginx", &["-v"]),
            haproxy: first_line("haproxy", &["-v"]),
            oha: first_line("oha", &["--version"]),
        }
    }
}

/// The first line a command prints (on stdout, else stderr: `nginx -v` writes to stderr).
fn first_line(cmd: &str, args: &[&str]) -> String {
    let Ok(out) = Command::new(cmd).args(args).output() else {
        return "not installed".to_owned();
    };
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs nginx, HAProxy (Debian packages) and oha (crates.io, through the prerequisites'
/// step) when they are missing, so the suite runs from a fresh clone.
pub fn ensure_tools() -> Result<()> {
    for tool in ["taskset", "openssl"] {
        if !on_path(tool) {
            bail!("{tool} is required (util-linux / openssl)");
        }
    }
    let missing: Vec<&str> = ["nginx", "haproxy"]
        .into_iter()
        .filter(|b| !on_path(b))
        .collect();
    if !missing.is_empty() {
        eprintln!("bench: installing {missing:?} with apt-get");
        run_ok(Command::new("apt-get").arg("update"))?;
        run_ok(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    // The prerequisites' own step (`cargo install oha --locked`, a few minutes when missing).
    crate::prereqs::ensure_oha()
}

pub fn run_ok(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

/// `taskset -c CORE program`: the process and every thread it starts stay on that core.
pub fn pinned(core: u32, program: impl AsRef<Path>) -> Command {
    pinned_to(&core.to_string(), program)
}

/// `taskset -c CPUS program` with a CPU list (`0`, `0,1`, `0-3`).
pub fn pinned_to(cpus: &str, program: impl AsRef<Path>) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(cpus).arg(program.as_ref());
    cmd
}

/// A process started by the suite; killed and reaped when dropped, also on an error path.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {log:?}"))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// The pid of the program itself: `taskset` execs it, so it is the child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has already exited (a bad config, a port in use).
    pub fn check_alive(&mut self, log: &Path) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{} exited with {st}:\n{tail}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A master process (nginx with worker_processes > 1) leaves its workers running when
        // killed, and respawns a worker killed before it: list them, kill it, then them.
        let children = descendants(self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in children {
            // SAFETY: kill only sends a signal; a pid that has gone already gets ESRCH.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name: state, then ppid.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every living descendant of `pid` (children, their children, …).
pub fn descendants(pid: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| Some((p, parent_of(p)?)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    // Bounded by the number of processes: each is added once at most.
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &all {
            if pp == parent && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
        if out.len() > all.len() {
            break;
        }
    }
    out
}

/// [`cpu_seconds`] of a process and its living descendants: a master process and its workers.
pub fn tree_cpu_seconds(pid: u32) -> Result<f64> {
    let mut total = cpu_seconds(pid)?;
    for child in descendants(pid) {
        // A descendant that exits between the listing and the read is not counted.
        total += cpu_seconds(child).unwrap_or(0.0);
    }
    Ok(total)
}

/// user+system CPU seconds of this process's children that have been waited for (what a
/// command run with `output()` used, read before and after it).
pub fn reaped_children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct passed.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// The per-CPU lines of `/proc/stat` at one moment, in USER_HZ ticks: user, nice, system,
/// idle, iowait, irq, softirq, steal (guest time is inside user and nice, so not added).
#[derive(Clone, Debug, Default)]
pub struct CpuTimes {
    pub cpus: Vec<[u64; 8]>,
}

/// Columns of [`CpuTimes`].
const IDLE: usize = 3;
const IOWAIT: usize = 4;
const SOFTIRQ: usize = 6;

impl CpuTimes {
    pub fn read() -> Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/stat")?))
    }

    fn parse(text: &str) -> Self {
        let cpus = text
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .map(|l| {
                let mut row = [0u64; 8];
                for (slot, v) in row.iter_mut().zip(l.split_whitespace().skip(1)) {
                    *slot = v.parse().unwrap_or(0);
                }
                row
            })
            .collect();
        Self { cpus }
    }

    /// What each CPU did between `self` (earlier) and `later`.
    pub fn since(&self, later: &CpuTimes) -> CpuWindow {
        let hz = clock_ticks();
        let cpus = self
            .cpus
            .iter()
            .zip(&later.cpus)
            .map(|(a, b)| {
                let d = |i: usize| b[i].saturating_sub(a[i]) as f64 / hz;
                let total: f64 = (0..8).map(d).sum();
                CpuDelta {
                    total_secs: total,
                    idle_secs: d(IDLE) + d(IOWAIT),
                    softirq_secs: d(SOFTIRQ),
                }
            })
            .collect();
        CpuWindow { cpus }
    }
}

/// One CPU over a window, seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuDelta {
    pub total_secs: f64,
    pub idle_secs: f64,
    pub softirq_secs: f64,
}

impl CpuDelta {
    /// The share of the window this CPU was not idle, 0 to 1.
    pub fn busy(&self) -> f64 {
        if self.total_secs <= 0.0 {
            return f64::NAN;
        }
        1.0 - self.idle_secs / self.total_secs
    }
}

/// Every CPU over a window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuWindow {
    pub cpus: Vec<CpuDelta>,
}

impl CpuWindow {
    pub fn softirq_secs(&self) -> f64 {
        self.cpus.iter().map(|c| c.softirq_secs).sum()
    }
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(proc: &mut Proc, log: &Path, port: u16, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        proc.check_alive(log)?;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!(
        "{} did not listen on 127.0.0.1:{port} within 10 s",
        proc.name
    )
}

/// A free loopback port (the kernel's choice; released before use, so a race is possible but
/// harmless on a machine where nothing else binds ephemeral ports on purpose).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// USER_HZ, the unit of the times in `/proc/PID/stat`.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// user+system CPU seconds of a process and all its threads.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/pid/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// A `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Samples a process's resident set every 20 ms on a thread until stopped: the peak over a
/// window, which `VmHWM` (the peak since start) cannot give.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            // Bounded: at most 30 minutes of samples even if never stopped.
            for _ in 0..90_000 {
                if let Ok(kb) = status_kb(pid, "VmRSS") {
                    peak = peak.max(kb);
                }
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// The peak RSS in kB seen since `start`.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or(0)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Raises the soft open-file limit (`ulimit -n`) of this process, and so of every process it
/// starts, to the hard limit, and returns it. Raising the hard limit needs CAP_SYS_RESOURCE,
/// which a container often lacks, so the hard limit is what the suite works within.
pub fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!(
                    "cannot raise the open-file limit to {} (ulimit -n): {}",
                    lim.rlim_max,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// The 1-minute load average: how busy the machine was apart from the suite.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// `target/bench`, where raw results go.
pub fn out_dir(target: &Path) -> PathBuf {
    target.join("bench")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  30 0 10 100 0 0 6 0 0 0\n\
                        cpu0 10 0 5 50 0 0 4 0 0 0\n\
                        cpu1 20 0 5 50 0 0 2 0 0 0\n\
                        intr 1 2 3\nsoftirq 9 9 9\n";

    #[test]
    fn proc_stat_gives_per_cpu_rows_not_the_total_nor_the_softirq_line() {
        let t = CpuTimes::parse(STAT);
        assert_eq!(t.cpus.len(), 2);
        assert_eq!(t.cpus[0], [10, 0, 5, 50, 0, 0, 4, 0]);
    }

    #[test]
    fn a_window_is_the_difference_per_cpu() {
        let a = CpuTimes::parse(STAT);
        let mut b = a.clone();
        let hz = clock_ticks() as u64;
        // cpu0: one second of softirq, one busy in user, two idle; cpu1 idle throughout.
        b.cpus[0][SOFTIRQ] += hz;
        b.cpus[0][0] += hz;
        b.cpus[0][IDLE] += 2 * hz;
        b.cpus[1][IDLE] += 4 * hz;
        let w = a.since(&b);
        assert!((w.softirq_secs() - 1.0).abs() < 1e-9);
        assert!((w.cpus[0].busy() - 0.5).abs() < 1e-9);
        assert!(w.cpus[1].busy().abs() < 1e-9);
    }

    #[test]
    fn descendants_finds_a_grandchild() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = Vec::new();
        while found.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            found = descendants(child.id());
        }
        let _ = child.kill();
        let _ = child.wait();
        for p in &found {
            // SAFETY: kill only sends a signal.
            unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
        }
        assert_eq!(found.len(), 1, "{found:?}");
    }
}
