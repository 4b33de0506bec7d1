//! The demo's three network namespaces — `client`, `server`, `outside` — and their links,
//! deleted on drop (also after a failure or Ctrl-C). Nothing touches the host's own links.
//!
//! ```text
//!  client 10.231.0.2 [to-server] ──── [to-client] 10.231.0.1  server  10.232.0.1 [to-outside] ──── [to-server] 10.232.0.2 outside
//! ```
//! In `client` and `outside` the name `server` resolves to the server's address on that link.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::sh;

pub const SERVER_ADDR: &str = "10.231.0.1";
pub const CLIENT_ADDR: &str = "10.231.0.2";
const SERVER_OUTSIDE_ADDR: &str = "10.232.0.1";
const OUTSIDE_ADDR: &str = "10.232.0.2";
/// The client's end of the client–server link, where the wire capture listens.
pub const CLIENT_LINK: &str = "to-server";
/// The server's interfaces, both under the in-kernel STRICT reset.
pub const SERVER_IFACES: &str = "to-client to-outside";

pub struct Topology {
    pub client: String,
    pub server: String,
    pub outside: String,
    /// Per-namespace `hosts` files, bind-mounted over /etc/hosts for commands run there.
    hosts: PathBuf,
}

fn ip(args: &[&str]) -> Result<()> {
    sh::ok(Command::new("ip").args(args)).map(drop)
}

impl Topology {
    /// Makes `pc-demo-<pid>-{client,server,outside}` and the two links; `scratch` holds the
    /// hosts files.
    pub fn create(scratch: &Path) -> Result<Self> {
        let base = format!("pc-demo-{}", std::process::id());
        let topo = Self {
            client: format!("{base}-client"),
            server: format!("{base}-server"),
            outside: format!("{base}-outside"),
            hosts: scratch.join("hosts"),
        };
        // From here on, Drop removes whatever was made.
        topo.build()?;
        Ok(topo)
    }

    fn build(&self) -> Result<()> {
        let (c, s, o) = (&*self.client, &*self.server, &*self.outside);
        for ns in [c, s, o] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (a, a_if, a_addr, b, b_if, b_addr) in [
            (c, "to-server", CLIENT_ADDR, s, "to-client", SERVER_ADDR),
            (
                o,
                "to-server",
                OUTSIDE_ADDR,
                s,
                "to-outside",
                SERVER_OUTSIDE_ADDR,
            ),
        ] {
            ip(&[
                "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
            ])?;
            for (ns, dev, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
        }
        std::fs::create_dir_all(&self.hosts)?;
        for (ns, server) in [(c, SERVER_ADDR), (s, "127.0.0.1"), (o, SERVER_OUTSIDE_ADDR)] {
            std::fs::write(
                self.hosts.join(ns),
                format!("127.0.0.1 localhost\n{server} server\n"),
            )
            .context("writing a namespace's hosts file")?;
        }
        Ok(())
    }

    /// `program` inside `ns`, with that namespace's hosts file as /etc/hosts (in a private
    /// mount namespace: nothing changes for the host) and the host's /sys, so cgroups and the
    /// bpffs pins stay visible (`ip netns exec` would remount /sys).
    pub fn exec(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
            .arg(self.hosts.join(ns))
            .arg(program);
        cmd
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server, &self.outside] {
            sh::quietly(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}
