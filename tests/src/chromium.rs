//! Debian's `chromium`, headless, for the pages the admin listener serves.
//!
//! Every run gets a fresh profile directory and its own process group, so the browser's
//! helper processes (zygote, renderer, GPU) die with it, and a run that hangs is killed after
//! [`TIMEOUT`].

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The longest one headless run may take.
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// Virtual time the page gets to run its scripts before the DOM or the picture is taken:
/// enough for the first fetch and a couple of polls.
const VIRTUAL_TIME_MS: u32 = 5000;

/// Fails with the install hint when `chromium` is missing.
pub fn check_installed() -> Result<()> {
    let out = Command::new("chromium")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        _ => bail!("`chromium` is not installed (`apt-get install chromium`; .ci/install-prereqs installs it)"),
    }
}

/// The DOM of `url` after its scripts ran (`--dump-dom`).
pub fn dump_dom(url: &str, scratch: &Path) -> Result<String> {
    let out = headless(url, &["--dump-dom"], scratch)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `width`×`height` PNG of `url` written to `png`.
pub fn screenshot(
    url: &str,
    png: &Path,
    (width, height): (u32, u32),
    scratch: &Path,
) -> Result<()> {
    let _ = std::fs::remove_file(png);
    let shot = format!("--screenshot={}", png.display());
    let size = format!("--window-size={width},{height}");
    headless(url, &[&shot, &size, "--hide-scrollbars"], scratch)?;
    if !png.exists() {
        bail!("chromium wrote no {}", png.display());
    }
    Ok(())
}

/// Kills the browser's whole process group on drop.
struct Group(Option<Child>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: kill(2) on the group this child leads; no memory is involved.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

fn headless(url: &str, args: &[&str], scratch: &Path) -> Result<Output> {
    let profile = tempfile::Builder::new()
        .prefix("chromium-profile")
        .tempdir_in(scratch)?;
    let stdout = scratch.join("chromium.stdout");
    let stderr = scratch.join("chromium.stderr");
    let mut cmd = Command::new("chromium");
    // Root needs --no-sandbox; the rest keeps the browser off the network and quiet.
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&stdout)?)
    .stderr(std::fs::File::create(&stderr)?)
    .process_group(0);
    let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let mut group = Group(Some(child));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        let child = group.0.as_mut().context("chromium child")?;
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!(
                "chromium did not finish {url} within {TIMEOUT:?}:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Helpers may outlive the main process; the group goes now, not at the end of the test.
    drop(group);
    let out = Output {
        status,
        stdout: std::fs::read(&stdout)?,
        stderr: std::fs::read(&stderr)?,
    };
    if !out.status.success() {
        bail!(
            "chromium exited with {} on {url}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
