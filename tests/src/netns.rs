//! Two network namespaces joined by a veth pair — `server` and `outside` — made by a test and
//! removed when it ends (also when it fails: [`Topology`] deletes them on drop).
//!
//! Addresses live only inside these namespaces: `10.231.0.1` / `fd00:231::1` on the server
//! side, `.2` / `::2` outside. Inside `outside`, the name `server` resolves to both (an
//! `/etc/netns/<ns>/hosts` file, which `ip netns exec` bind-mounts over `/etc/hosts`).
//!
//! [`Topology::create_with_probe`] adds a third namespace, `probe`, on its own veth pair to the
//! server (`10.232.0.2` / `fd00:232::2`, routed to the server's addresses): a host that runs
//! no Portcullis at all, for an attacker beside a two-node mesh.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

use crate::process::run;

/// Server-side addresses.
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
/// Server-side IPv6 address.
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x231, 0, 0, 0, 0, 0, 1);
/// Name of the server's veth end, inside the server namespace.
pub const SERVER_IF: &str = "pc-srv";
/// Name of the server's veth end towards the probe namespace.
pub const SERVER_PROBE_IF: &str = "pc-srv-p";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The two namespaces of one test.
pub struct Topology {
    /// The server namespace (runs the app and the daemon).
    pub server: String,
    /// The client namespace outside the mesh.
    pub outside: String,
    /// The third namespace of [`Topology::create_with_probe`].
    pub probe: Option<String>,
    hosts_dir: PathBuf,
}

/// `ip ARGS`, failing with what it printed to stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = run(Command::new("ip").args(args))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Topology {
    /// Creates `pc-<tag>-<pid>-<n>-{s,o}` with the veth pair, addresses and routes.
    pub fn create(tag: &str) -> Result<Self> {
        Self::create_inner(tag, false)
    }

    /// [`Topology::create`] plus `pc-<tag>-<pid>-<n>-p`, a namespace without Portcullis that
    /// reaches the server's addresses over a second veth pair (the server's end is
    /// [`SERVER_PROBE_IF`]).
    pub fn create_with_probe(tag: &str) -> Result<Self> {
        Self::create_inner(tag, true)
    }

    fn create_inner(tag: &str, probe: bool) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("pc-{tag}-{}-{n}", std::process::id());
        let topo = Self {
            server: format!("{base}-s"),
            outside: format!("{base}-o"),
            probe: probe.then(|| format!("{base}-p")),
            hosts_dir: PathBuf::from(format!("/etc/netns/{base}-o")),
        };
        // From here on, Drop cleans up whatever was made.
        topo.build()?;
        if let Some(p) = &topo.probe {
            topo.build_probe(p)?;
        }
        Ok(topo)
    }

    fn build_probe(&self, p: &str) -> Result<()> {
        let s = self.server.as_str();
        ip(&["netns", "add", p])?;
        ip(&[
            "link",
            "add",
            SERVER_PROBE_IF,
            "netns",
            s,
            "type",
            "veth",
            "peer",
            "name",
            "pc-probe",
            "netns",
            p,
        ])?;
        for (ns, dev, v4, v6) in [
            (s, SERVER_PROBE_IF, "10.232.0.1/24", "fd00:232::1/64"),
            (p, "pc-probe", "10.232.0.2/24", "fd00:232::2/64"),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", v4, "dev", dev])?;
            ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // The server's workload addresses are local to it: no forwarding, just routes there.
        ip(&[
            "-n",
            p,
            "route",
            "add",
            "10.231.0.0/24",
            "via",
            "10.232.0.1",
        ])?;
        ip(&[
            "-n",
            p,
            "-6",
            "route",
            "add",
            "fd00:231::/64",
            "via",
            "fd00:232::1",
        ])?;
        Ok(())
    }

    fn build(&self) -> Result<()> {
        let (s, o) = (self.server.as_str(), self.outside.as_str());
        ip(&["netns", "add", s])?;
        ip(&["netns", "add", o])?;
        // Both ends are created directly inside their namespaces: nothing touches the host's.
        ip(&[
            "link", "add", SERVER_IF, "netns", s, "type", "veth", "peer", "name", "pc-out",
            "netns", o,
        ])?;
        for (ns, dev, v4, v6) in [
            (s, SERVER_IF, "10.231.0.1/24", "fd00:231::1/64"),
            (o, "pc-out", "10.231.0.2/24", "fd00:231::2/64"),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", v4, "dev", dev])?;
            // nodad: the address is usable at once instead of after duplicate detection.
            ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        std::fs::create_dir_all(&self.hosts_dir)
            .with_context(|| format!("creating {}", self.hosts_dir.display()))?;
        std::fs::write(
            self.hosts_dir.join("hosts"),
            format!("127.0.0.1 localhost\n{SERVER_V4} server\n{SERVER_V6} server\n"),
        )
        .context("writing the outside namespace's hosts file")?;
        Ok(())
    }

    /// Turns checksum offload off on both veth ends, so every TCP checksum is computed in
    /// software and verified by the receiving stack (a wrong one shows as `TcpInCsumErrors`).
    pub fn checksum_offload_off(&self) -> Result<()> {
        for (ns, dev) in [(&self.server, SERVER_IF), (&self.outside, "pc-out")] {
            let out = run(Self::exec(ns, "ethtool").args(["-K", dev, "tx", "off", "rx", "off"]))?;
            if !out.status.success() {
                bail!(
                    "ethtool -K {dev} tx off rx off: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// A counter from `nstat -az` (e.g. `TcpInCsumErrors`) inside `ns`.
    pub fn nstat(ns: &str, counter: &str) -> Result<u64> {
        let out = run(Self::exec(ns, "nstat").args(["-az", counter]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(counter)).then(|| it.next()?.parse().ok())?
            })
            .with_context(|| format!("no {counter} in nstat output: {text}"))
    }

    /// `ip netns exec <ns> <program> …` (mount namespace changes: fine for curl/openssl).
    pub fn exec(ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        cmd
    }

    /// `nsenter --net=/run/netns/<ns> <program> …`: only the network namespace changes, so
    /// the host's /sys/fs/bpf (and its pins) stay visible — `ip netns exec` would remount /sys.
    pub fn nsenter(ns: &str, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}")).arg(program);
        cmd
    }

    /// Runs `f` on a new thread that has entered `ns` (network namespaces are per thread).
    /// The thread yields `None` (without running `f`) if it could not enter `ns`.
    pub fn spawn_in<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Option<T>>> {
        let path = format!("/run/netns/{ns}");
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            // SAFETY: a valid netns fd; setns only changes this thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            let _ = tx.send(rc);
            // Never run `f` in the wrong namespace.
            (rc == 0).then(f)
        });
        match rx.recv_timeout(std::time::Duration::from_secs(5)) {
            Ok(0) => Ok(handle),
            other => bail!("setns into {ns} failed: {other:?}"),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.server, &self.outside].into_iter().chain(&self.probe) {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
        let _ = std::fs::remove_dir_all(&self.hosts_dir);
    }
}
