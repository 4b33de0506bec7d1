//! Shared harness for the end-to-end tests: the real `portcullis` binary, real `openssl` and
//! `curl`, child processes that are killed when the test ends, and (as root) network namespaces.

pub mod certs;
pub mod chromium;
pub mod craft;
pub mod hello;
pub mod hostile;
pub mod load;
pub mod mesh;
pub mod netns;
pub mod oha;
pub mod process;
pub mod prometheus;
pub mod rawhttp;
pub mod recorder;
pub mod walkthrough;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The `portcullis` binary under test: `$PORTCULLIS_BIN`, or the workspace's debug build.
/// `cargo xtask test` builds it first; a missing binary is an error, never a skip.
pub fn portcullis_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PORTCULLIS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path = target_dir().join("debug").join("portcullis");
    if !path.exists() {
        bail!(
            "{} does not exist: build it first (`cargo build -p gateway`), or run the suite with `cargo xtask test`",
            path.display()
        );
    }
    Ok(path)
}

/// The workspace's target directory: `$CARGO_TARGET_DIR`, or `target/`.
pub fn target_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when the tests run as root (netns, eBPF). Tests that need it print a loud skip otherwise.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Prints the loud skip line for a test that needs root.
pub fn skip_not_root(test: &str) {
    eprintln!(
        "\n!!!!! SKIPPED {test}: needs root (network namespaces, eBPF); CI runs it as root !!!!!\n"
    );
}

/// True when `tool --version` runs. When it does not: in CI (`CI` set) an error naming the
/// install command; elsewhere a loud skip line for `test` and `false`.
pub fn tool_or_skip(test: &str, tool: &str, install: &str) -> Result<bool> {
    let runs = std::process::Command::new(tool)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if runs {
        return Ok(true);
    }
    if std::env::var_os("CI").is_some() {
        bail!("{test} needs `{tool}` ({install}; `cargo xtask prereqs` installs it)");
    }
    eprintln!(
        "\n!!!!! SKIPPED {test}: `{tool}` is missing ({install}, or `cargo xtask prereqs`); \
         CI fails here instead !!!!!\n"
    );
    Ok(false)
}
