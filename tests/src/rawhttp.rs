//! Raw HTTPS requests, byte for byte, where curl would rewrite or refuse the target: the
//! `fixtures/rawhttp.py` client (Python's `ssl` and the `h2` package), driven from a test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// HTTP/1.1 or HTTP/2 (ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

/// One request: the target is sent exactly as these bytes (`:path` on HTTP/2).
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub method: &'static str,
    /// `Host` on HTTP/1.1, `:authority` on HTTP/2.
    pub authority: String,
    /// HTTP/2 only: a `host` header besides `:authority`. HTTP/1.1: replaces `Host`.
    pub host: Option<String>,
    pub target: Vec<u8>,
}

impl RawRequest {
    pub fn get(authority: &str, target: impl AsRef<[u8]>) -> Self {
        Self {
            method: "GET",
            authority: authority.to_owned(),
            host: None,
            target: target.as_ref().to_vec(),
        }
    }

    /// The request as a line of the fixture's input: the target with every byte that is not
    /// printable ASCII (and space and backslash) as a `\xHH` escape.
    fn line(&self) -> String {
        let mut target = String::new();
        for &b in &self.target {
            if b.is_ascii_graphic() && b != b'\\' {
                target.push(char::from(b));
            } else {
                target.push_str(&format!("\\x{b:02x}"));
            }
        }
        let authority = match &self.host {
            Some(h) => format!("{}|{h}", self.authority),
            None => self.authority.clone(),
        };
        format!("{} {authority} {target}\n", self.method)
    }
}

/// Where the raw client connects and what it presents.
pub struct RawClient {
    pub port: u16,
    pub sni: String,
    pub ca: PathBuf,
    /// Client certificate and key, for a MUTUAL server.
    pub identity: Option<(PathBuf, PathBuf)>,
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rawhttp.py")
}

/// Fails with the install hint when Python's `h2` package is missing.
pub fn require_h2() -> Result<()> {
    let out = Command::new("python3")
        .args(["-c", "import h2"])
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!("Python's h2 package is missing (`pip install h2`; .ci/install-prereqs installs it)");
    }
    Ok(())
}

impl RawClient {
    /// Sends each request on its own connection (or all on one HTTP/2 connection with
    /// `one_connection`); returns one outcome per request: the status code, `reset`,
    /// `closed` or `error:…`.
    pub fn send(
        &self,
        proto: Proto,
        requests: &[RawRequest],
        one_connection: bool,
    ) -> Result<Vec<String>> {
        let mut cmd = Command::new("python3");
        cmd.arg(fixture())
            .args(["--port", &self.port.to_string(), "--sni", &self.sni])
            .arg("--ca")
            .arg(&self.ca)
            .args(["--proto", if proto == Proto::H1 { "h1" } else { "h2" }]);
        if let Some((cert, key)) = &self.identity {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if one_connection {
            cmd.arg("--one-connection");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning the raw HTTP client")?;
        {
            let mut stdin = child.stdin.take().context("raw client stdin")?;
            for r in requests {
                stdin.write_all(r.line().as_bytes())?;
            }
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let outcomes: Vec<String> = stdout.lines().map(str::to_owned).collect();
        if !out.status.success() || outcomes.len() != requests.len() {
            bail!(
                "raw client failed ({}), {} outcomes for {} requests:\n{stdout}\n{}",
                out.status,
                outcomes.len(),
                requests.len(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(outcomes)
    }
}
