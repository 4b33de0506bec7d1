//! A packet capture on one link, to show what crosses it: `tshark` writes every frame to a
//! file while a step runs; afterwards its summary lines are printed and the raw bytes searched
//! for plaintext HTTP.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::netns::Topology;
use super::sh;

pub struct Capture {
    child: Option<Child>,
    pub file: PathBuf,
    pub command: String,
}

/// What the capture saw.
pub struct Seen {
    /// `tshark -r` summary lines, port 80 decoded as TLS.
    pub summary: Vec<String>,
    pub bytes: Vec<u8>,
}

impl Seen {
    pub fn contains(&self, needle: &str) -> bool {
        self.bytes
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }
}

impl Capture {
    /// Starts `tshark` on `iface` inside `ns`, writing to `dir/<name>.pcapng`; returns once it
    /// captures.
    pub fn start(topo: &Topology, ns: &str, iface: &str, dir: &Path, name: &str) -> Result<Self> {
        sh::check_interrupted()?;
        let file = dir.join(format!("{name}.pcapng"));
        let log = dir.join(format!("{name}.tshark.log"));
        let mut cmd = topo.exec(ns, "tshark");
        cmd.args(["-q", "-i", iface, "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let command = format!("tshark -i {iface} -w {}", file.display());
        let child = cmd.spawn().context("starting tshark")?;
        let mut this = Self {
            child: Some(child),
            file,
            command,
        };
        let start = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Capturing on")
        {
            if start.elapsed() > Duration::from_secs(20) {
                this.kill();
                bail!(
                    "tshark did not start capturing: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // "Capturing on" is printed before dumpcap's capture is live: a request sent at once
        // can be missed (seen right after the daemons reload). A datagram to the link's
        // all-nodes address until one lands in the file proves the capture live.
        let empty = std::fs::metadata(&this.file).map_or(0, |m| m.len());
        let probe = format!(
            "import socket; socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\
             .sendto(b'capture probe', ('ff02::1%{iface}', 9))"
        );
        let start = Instant::now();
        while std::fs::metadata(&this.file).map_or(0, |m| m.len()) <= empty {
            if start.elapsed() > Duration::from_secs(10) {
                this.kill();
                bail!("tshark on {iface} captured nothing of a probe in 10 s");
            }
            let _ = topo
                .exec(ns, "python3")
                .args(["-c", &probe])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(this)
    }

    /// Stops the capture (after the last packets had a moment to arrive) and reads it.
    pub fn finish(mut self, topo: &Topology, ns: &str) -> Result<Seen> {
        std::thread::sleep(Duration::from_millis(500));
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child; SIGINT makes tshark flush and close the file.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let out = sh::ok(
            topo.exec(ns, "tshark")
                .args(["-n", "-d", "tcp.port==80,tls", "-r"])
                .arg(&self.file),
        )?;
        Ok(Seen {
            summary: out.lines().map(|l| l.trim().to_owned()).collect(),
            bytes,
        })
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}
