//! The one list of what Portcullis needs on a machine, checked before `run`, `demo`, `test`
//! and `build`, and installed when missing (`cargo xtask prereqs`; `.ci/install-prereqs` calls
//! it too).
//!
//! Each [`Step`] has a cheap check and an install. A warm machine costs a second of checks; a
//! fresh Debian one gets everything, one progress line per step with the time it took. Steps
//! that change the system (apt, pip, mounts) need root: as another user the missing ones are
//! named with the one command to run, and nothing else happens.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Debian packages: what the build, the end-to-end tests and the demos run.
/// - build-essential: a C compiler for the host crates (ring) — `.ci/install-prereqs` makes sure
///   of it before xtask itself builds;
/// - llvm-22-dev: bpf-linker links the kernel programs against it;
/// - curl, openssl, iproute2, ethtool, procps, psmisc: the end-to-end tests' tools;
/// - prometheus, chromium: the mesh graph tests and the demo's screenshot;
/// - tshark: the demo's proof that only TLS crosses the link;
/// - iptables: the kernel tests' DNAT of wire traffic to a loopback address;
/// - python3-pip: the PyPI step below.
const APT_PACKAGES: &[&str] = &[
    "build-essential",
    "llvm-22-dev",
    "curl",
    "openssl",
    "iproute2",
    "ethtool",
    "procps",
    "psmisc",
    "prometheus",
    "chromium",
    "tshark",
    "iptables",
    "python3-pip",
];

/// One prerequisite: how to tell it is there, and how to get it.
struct Step {
    name: &'static str,
    /// Installing changes the system (apt, pip, mounts), not just the user's toolchains.
    needs_root: bool,
    /// `Ok(None)`: present. `Ok(Some(what))`: missing, `what` says which part.
    check: fn() -> Result<Option<String>>,
    install: fn(&str) -> Result<()>,
}

const STEPS: &[Step] = &[
    Step {
        name: "Debian packages",
        needs_root: true,
        check: missing_apt,
        install: install_apt,
    },
    Step {
        name: "Rust nightly toolchain with rust-src (the kernel crate's build-std)",
        needs_root: false,
        check: missing_nightly_src,
        install: install_nightly_src,
    },
    Step {
        name: "bpf-linker (against LLVM 22)",
        needs_root: false,
        check: missing_bpf_linker,
        install: install_bpf_linker,
    },
    Step {
        name: "cargo-fuzz (the bounded fuzz run of `cargo xtask test`, `cargo xtask fuzz`)",
        needs_root: false,
        check: missing_cargo_fuzz,
        install: install_cargo_fuzz,
    },
    OHA,
    Step {
        name: "PyPI httpbin and gunicorn (one end-to-end upstream)",
        needs_root: true,
        check: missing_httpbin,
        install: install_httpbin,
    },
    Step {
        name: "PyPI h2, hpack, hyperframe (raw and hostile HTTP/2 clients of the e2e tests)",
        needs_root: true,
        check: missing_h2,
        install: install_h2,
    },
    Step {
        name: "bpffs on /sys/fs/bpf (pinned programs and maps)",
        needs_root: true,
        check: missing_bpffs,
        install: mount_bpffs,
    },
];

/// The load generator of the reload-under-load end-to-end test and of `cargo xtask bench`.
const OHA: Step = Step {
    name: "oha (the load generator of the e2e reload test and of `cargo xtask bench`)",
    needs_root: false,
    check: missing_oha,
    install: install_oha,
};

/// The [`OHA`] step alone, for `cargo xtask bench` (which skips the full list: it needs
/// neither the kernel toolchain nor the browsers).
pub fn ensure_oha() -> Result<()> {
    run_steps(&[OHA], true)
}

/// What `cargo xtask vagrant` needs on top (only that command checks these): Vagrant with its
/// libvirt provider, libvirt, QEMU (software emulation), debootstrap for the local box.
const VAGRANT_PACKAGES: &[&str] = &[
    "vagrant",
    "vagrant-libvirt",
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    // Makes the libvirt-qemu user and brings iptables, which libvirt's NAT networks need.
    "libvirt-daemon-system",
    "libvirt-clients",
    "qemu-system-x86",
    "qemu-block-extra",
    "qemu-utils",
    "debootstrap",
    "dnsmasq-base",
    "fdisk",
];

const VAGRANT_STEPS: &[Step] = &[Step {
    name: "Vagrant, vagrant-libvirt, libvirt, QEMU 7.2, debootstrap (cargo xtask vagrant)",
    needs_root: true,
    check: missing_vagrant,
    install: install_vagrant,
}];

/// [`ensure`] for `cargo xtask vagrant`: the common steps, then Vagrant's.
pub fn ensure_vagrant() -> Result<()> {
    ensure(true)?;
    run_steps(VAGRANT_STEPS, false)
}

/// Checks every step and installs what is missing. With `quiet`, steps already satisfied
/// print nothing (the check before `run`/`test`); `cargo xtask prereqs` prints them all.
pub fn ensure(quiet: bool) -> Result<()> {
    run_steps(STEPS, quiet)
}

fn run_steps(steps: &[Step], quiet: bool) -> Result<()> {
    let started = Instant::now();
    let root = crate::is_root();
    let total = steps.len();
    let mut for_root = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let t = Instant::now();
        let missing = (step.check)().with_context(|| format!("checking {}", step.name))?;
        let Some(what) = missing else {
            if !quiet {
                eprintln!(
                    "prereqs [{}/{total}] {}: present ({:.1}s)",
                    i + 1,
                    step.name,
                    t.elapsed().as_secs_f64()
                );
            }
            continue;
        };
        if step.needs_root && !root {
            eprintln!("prereqs [{}/{total}] {}: MISSING {what}", i + 1, step.name);
            for_root.push(step.name);
            continue;
        }
        eprintln!(
            "prereqs [{}/{total}] {}: installing {what} …",
            i + 1,
            step.name
        );
        (step.install)(&what).with_context(|| format!("installing {}", step.name))?;
        if let Some(still) = (step.check)()? {
            bail!("{}: still missing after the install: {still}", step.name);
        }
        eprintln!(
            "prereqs [{}/{total}] {}: installed ({:.1}s)",
            i + 1,
            step.name,
            t.elapsed().as_secs_f64()
        );
    }
    if !for_root.is_empty() {
        bail!(
            "missing prerequisites that need root ({}). Run, once:\n\n    sudo env \"PATH=$PATH\" cargo xtask prereqs\n",
            for_root.join("; ")
        );
    }
    if !quiet {
        eprintln!(
            "prereqs: all {total} steps ok ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Runs `cmd` with its output passed through; fails with the command on a non-zero exit.
fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("prereqs: {cmd:?}");
    let st = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

/// True when `cmd` runs and exits 0 (output discarded).
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The standard output of `cmd`, or empty when it cannot run.
fn stdout_of(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The packages of `wanted` that dpkg does not have installed, and the installed versions.
fn dpkg_missing(wanted: &[&str]) -> (Vec<String>, String) {
    // One dpkg-query for all of them: `<name> <version> <status>` per known package.
    let out = stdout_of(
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Package} ${Version} ${Status}\\n"])
            .args(wanted),
    );
    let missing = wanted
        .iter()
        .filter(|p| {
            !out.lines()
                .any(|l| l.starts_with(&format!("{p} ")) && l.ends_with("install ok installed"))
        })
        .map(|p| (*p).to_owned())
        .collect();
    (missing, out)
}

fn missing_apt() -> Result<Option<String>> {
    let (missing, _) = dpkg_missing(APT_PACKAGES);
    Ok((!missing.is_empty()).then(|| missing.join(" ")))
}

fn missing_vagrant() -> Result<Option<String>> {
    let (mut missing, out) = dpkg_missing(VAGRANT_PACKAGES);
    // Debian's qemu-system 7.2 cannot sit beside the backports qemu-utils 10 some machines
    // ship: the 7.2 one is part of the set.
    if !missing.iter().any(|p| p == "qemu-utils")
        && !out.lines().any(|l| l.starts_with("qemu-utils 1:7.2"))
    {
        missing.push("qemu-utils".to_owned());
    }
    Ok((!missing.is_empty()).then(|| missing.join(" ")))
}

fn install_vagrant(what: &str) -> Result<()> {
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    let madison = stdout_of(Command::new("apt-cache").args(["madison", "qemu-utils"]));
    let qemu_utils = madison
        .lines()
        .filter_map(|l| l.split('|').nth(1).map(str::trim))
        .find(|v| v.starts_with("1:7.2"))
        .context("apt offers no qemu-utils 7.2 (Debian 12's), which qemu-system-x86 7.2 needs")?;
    sh(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "--allow-downgrades",
        ])
        .args(what.split(' ').filter(|p| *p != "qemu-utils"))
        .arg(format!("qemu-utils={qemu_utils}"))
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn install_apt(what: &str) -> Result<()> {
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(what.split(' '))
        // tshark asks whether non-root users may capture: the default (no) is fine.
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn missing_nightly_src() -> Result<Option<String>> {
    let installed = stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    Ok((!installed.lines().any(|l| l.starts_with("rust-src")))
        .then(|| "nightly rust-src".to_owned()))
}

fn install_nightly_src(_: &str) -> Result<()> {
    // An installed nightly only gets the component: updating it could move the kernel crate's
    // compiler under its pinned aya.
    if succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        return sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]));
    }
    sh(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn missing_bpf_linker() -> Result<Option<String>> {
    Ok((!succeeds(Command::new("bpf-linker").arg("--version"))).then(|| "bpf-linker".to_owned()))
}

fn missing_cargo_fuzz() -> Result<Option<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Ok((!succeeds(Command::new(cargo).args(["fuzz", "--version"])))
        .then(|| "cargo-fuzz".to_owned()))
}

fn install_cargo_fuzz(_: &str) -> Result<()> {
    sh(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "cargo-fuzz",
            "--locked",
        ]),
    )
}

fn missing_oha() -> Result<Option<String>> {
    Ok((!succeeds(Command::new("oha").arg("--version"))).then(|| "oha".to_owned()))
}

fn install_oha(_: &str) -> Result<()> {
    sh(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "oha", "--locked"]),
    )
}

fn install_bpf_linker(_: &str) -> Result<()> {
    // Its build links LLVM 22 (the Debian package above) and takes a few minutes.
    sh(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

fn missing_httpbin() -> Result<Option<String>> {
    Ok(
        (!succeeds(Command::new("python3").args(["-c", "import httpbin, gunicorn"])))
            .then(|| "httpbin gunicorn".to_owned()),
    )
}

fn install_httpbin(_: &str) -> Result<()> {
    // Debian's own python3 refuses pip installs into it (PEP 668) unless told to.
    sh(Command::new("python3")
        .args(["-m", "pip", "install", "-q", "httpbin", "gunicorn"])
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1"))
}

fn missing_h2() -> Result<Option<String>> {
    Ok(
        (!succeeds(Command::new("python3").args(["-c", "import h2, hpack, hyperframe"])))
            .then(|| "h2".to_owned()),
    )
}

fn install_h2(_: &str) -> Result<()> {
    sh(Command::new("python3")
        .args(["-m", "pip", "install", "-q", "h2"])
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1"))
}

fn missing_bpffs() -> Result<Option<String>> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, at, kind) = (f.next(), f.next(), f.next());
        at == Some("/sys/fs/bpf") && kind == Some("bpf")
    });
    Ok((!mounted).then(|| "the bpf mount".to_owned()))
}

fn mount_bpffs(_: &str) -> Result<()> {
    std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
    sh(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_a_distinct_name() {
        let mut names: Vec<&str> = STEPS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), STEPS.len());
    }

    #[test]
    fn apt_packages_are_listed_once() {
        let mut p = APT_PACKAGES.to_vec();
        p.sort_unstable();
        p.dedup();
        assert_eq!(p.len(), APT_PACKAGES.len());
    }
}
