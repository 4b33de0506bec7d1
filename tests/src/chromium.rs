//! Debian's `chromium`, headless, for the pages the admin listener serves.
//!
//! Every run gets a fresh profile directory and its own process group, so the browser's
//! helper processes (zygote, renderer, GPU) die with it, and a run that hangs is killed after
//! [`TIMEOUT`].

use std::collections::BTreeMap;
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
    dump_dom_in(None, url, scratch)
}

/// [`dump_dom`] with the browser inside network namespace `netns` (`None`: here).
pub fn dump_dom_in(netns: Option<&str>, url: &str, scratch: &Path) -> Result<String> {
    let out = headless(netns, url, &["--dump-dom"], scratch)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `width`×`height` PNG of `url` written to `png`.
pub fn screenshot(url: &str, png: &Path, size: (u32, u32), scratch: &Path) -> Result<()> {
    screenshot_in(None, url, png, size, scratch)
}

/// [`screenshot`] with the browser inside network namespace `netns` (`None`: here).
pub fn screenshot_in(
    netns: Option<&str>,
    url: &str,
    png: &Path,
    (width, height): (u32, u32),
    scratch: &Path,
) -> Result<()> {
    let _ = std::fs::remove_file(png);
    let shot = format!("--screenshot={}", png.display());
    let size = format!("--window-size={width},{height}");
    headless(netns, url, &[&shot, &size, "--hide-scrollbars"], scratch)?;
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

fn headless(netns: Option<&str>, url: &str, args: &[&str], scratch: &Path) -> Result<Output> {
    let profile = tempfile::Builder::new()
        .prefix("chromium-profile")
        .tempdir_in(scratch)?;
    let stdout = scratch.join("chromium.stdout");
    let stderr = scratch.join("chromium.stderr");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("chromium");
            c
        }
        None => Command::new("chromium"),
    };
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

/// An edge of the mesh graph page as Chromium serialized it: its attributes and its markup.
/// One `<g class="edge …">` of the dumped DOM: its attributes and the markup inside it.
#[derive(Debug)]
pub struct DomEdge {
    pub attrs: BTreeMap<String, String>,
    pub inner: String,
}

impl DomEdge {
    pub fn attr(&self, name: &str) -> &str {
        self.attrs.get(name).map_or("", String::as_str)
    }

    pub fn number(&self, name: &str) -> f64 {
        self.attr(name).parse().unwrap_or(f64::NAN)
    }
}

/// `name="value"` pairs of a start tag's text (Chromium serializes every attribute that way).
pub fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some((name, after)) = rest.split_once("=\"") {
        let Some((value, tail)) = after.split_once('"') else {
            break;
        };
        let name = name.rsplit(' ').next().unwrap_or(name).trim();
        out.insert(name.to_owned(), value.replace("&amp;", "&"));
        rest = tail;
    }
    out
}

/// The edges the page drew. Each one's inner markup runs to the next edge or to the nodes.
pub fn edges(dom: &str) -> Vec<DomEdge> {
    let starts: Vec<usize> = dom
        .match_indices("<g class=\"edge ")
        .map(|(i, _)| i)
        .collect();
    let nodes = dom.find("<g class=\"nodes\"").unwrap_or(dom.len());
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let end = starts.get(k + 1).copied().unwrap_or(nodes).max(start);
            let tag_end = dom[start..].find('>').map_or(end, |i| start + i);
            DomEdge {
                attrs: attributes(&dom[start..tag_end]),
                inner: dom[tag_end..end].to_owned(),
            }
        })
        .collect()
}
