//! Developer workflows for Portcullis: `cargo xtask build|run|demo|test|bench|fuzz|prereqs`.

mod bench;
mod demo;
mod fuzz;
mod prereqs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Portcullis developer workflows")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the daemon with its kernel programs embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, make demo certificates if absent, start the built-in httpbin and the gateway on
    /// `policies/`, and print the curl commands of the walkthrough. Ctrl-C stops everything.
    Run {
        #[arg(long)]
        release: bool,
        /// Added to the Gateway ports 80/443 (default: 0 as root, 8000 otherwise).
        #[arg(long)]
        port_offset: Option<u16>,
    },
    /// The whole test suite, as CI runs it: fmt, clippy, build, unit and end-to-end tests,
    /// `demo mesh`, each fuzz target for 60 s, then (as root) the two-VM `vagrant` story.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the two-VM Vagrant story (installs Vagrant/libvirt/QEMU and builds the box on
        /// first use: about 15 minutes on a fresh machine, 4 with the box cached). CI runs it.
        #[arg(long)]
        no_vagrant: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// The demos: `demo mesh` (the mesh story in network namespaces, checked step by step) and
    /// `demo ingress` (the walkthrough with the admin listener and its graph page).
    Demo(demo::DemoArgs),
    /// Benchmarks against nginx, HAProxy and no proxy, written to BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// The mesh story's steps 1, 3, 4, 5 on two Vagrant VMs (local box, libvirt in a network
    /// namespace, software emulation), then everything torn down. Root; several minutes.
    Vagrant {
        /// Build the box again from vagrant/build-box.sh even when Vagrant already has one
        /// (after changing the script).
        #[arg(long)]
        rebuild_box: bool,
    },
    /// Check every prerequisite (Debian packages, nightly rust-src, bpf-linker, …) and install
    /// what is missing; `build`, `run`, `demo` and `test` do this first.
    Prereqs {
        /// Also what `cargo xtask vagrant` needs (Vagrant, libvirt, QEMU, debootstrap).
        #[arg(long)]
        vagrant: bool,
    },
    /// The cargo-fuzz targets in fuzz/, each for a bounded time on a copy of its corpus.
    Fuzz(fuzz::FuzzArgs),
}

fn workspace() -> PathBuf {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    ws.canonicalize().unwrap_or(ws)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace());
    cmd
}

fn status(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let st: ExitStatus = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "gateway", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join("portcullis"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `admin`: the admin listener's address, passed on and its graph page announced (`demo`).
fn run(release: bool, port_offset: Option<u16>, admin: Option<std::net::SocketAddr>) -> Result<()> {
    let bin = build(release)?;
    let ws = workspace();
    let certs = ws.join("demo/certs");
    if !certs.join("test.com/tls.crt").exists() {
        status(Command::new(&bin).arg("certs").arg("--out").arg(&certs))?;
    }
    let offset = port_offset.unwrap_or(if is_root() { 0 } else { 8000 });
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(&bin)
            .args(["httpbin", "--listen", "127.0.0.1:8000"])
            .spawn()
            .context("starting the built-in httpbin")?,
    );
    let mut gateway = Command::new(&bin);
    gateway
        .arg("run")
        .arg("-c")
        .arg(ws.join("policies"))
        .arg("--credentials")
        .arg(&certs)
        .args(["--port-offset", &offset.to_string()]);
    if let Some(admin) = admin {
        gateway.arg("--admin").arg(admin.to_string());
    }
    children
        .0
        .push(gateway.spawn().context("starting the gateway")?);
    let (http, https) = (80 + offset, 443 + offset);
    let c = certs.display();
    println!(
        "\nPortcullis is running (Ctrl-C stops it). Try the walkthrough:\n\n\
         # 1. no client certificate: the TLS handshake fails\n\
         curl --resolve test.com:{https}:127.0.0.1 --cacert {c}/cacert.pem https://test.com:{https}/status/200\n\
         # 2. the client identity spiffe://test.client: HTTP/2 200\n\
         curl --resolve test.com:{https}:127.0.0.1 --cacert {c}/cacert.pem --cert {c}/clientcert.pem --key {c}/client.key.pem https://test.com:{https}/status/200 -I\n\
         # 3. the same identity on /status/418: 403 RBAC: access denied\n\
         curl --resolve test.com:{https}:127.0.0.1 --cacert {c}/cacert.pem --cert {c}/clientcert.pem --key {c}/client.key.pem https://test.com:{https}/status/418\n\
         # 4. another identity (no SPIFFE id) gets the teapot\n\
         curl --resolve test.com:{https}:127.0.0.1 --cacert {c}/cacert.pem --cert {c}/servercert.pem --key {c}/serverkey.pem https://test.com:{https}/status/418\n\
         # 5. plain HTTP on the port-80 server\n\
         curl http://127.0.0.1:{http}/status/200 -i\n"
    );
    if let Some(admin) = admin {
        println!("Mesh graph (locks on the mutual-TLS edges): http://{admin}/graph\n");
    }
    // The gateway is the main process: when it exits (Ctrl-C reaches the whole process
    // group), stop the backend too.
    let st = children.0[1].wait()?;
    if !st.success() {
        bail!("the gateway exited with {st}");
    }
    Ok(())
}

fn test(no_lint: bool, no_vagrant: bool, extra: &[String]) -> Result<()> {
    if !no_lint {
        status(cargo().args(["fmt", "--all", "--", "--check"]))?;
        status(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    let bin = build(false)?;
    if !is_root() {
        eprintln!("\n!!!!! xtask test: not root: the kernel and network-namespace tests will SKIP; CI runs them as root !!!!!\n");
    }
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"])
        .env("PORTCULLIS_BIN", &bin);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    status(&mut cmd)?;
    // The whole mesh story, as a newcomer runs it (only the full suite, and only as root).
    if extra.is_empty() && is_root() {
        demo::mesh(&bin, None)?;
    } else if !is_root() {
        eprintln!("\n!!!!! xtask test: not root: `cargo xtask demo mesh` SKIPPED !!!!!\n");
    }
    fuzz::in_test(&workspace(), &target_dir())?;
    // Last: the longest step and the one that needs the most of the machine (two VMs under
    // software emulation), so every other result is already printed if it fails.
    if extra.is_empty() && is_root() && !no_vagrant {
        prereqs::ensure_vagrant()?;
        demo::vagrant(&bin, false)?;
    } else if !no_vagrant && extra.is_empty() {
        eprintln!("\n!!!!! xtask test: not root: `cargo xtask vagrant` SKIPPED !!!!!\n");
    }
    Ok(())
}

/// Errors print as one cause chain, not a backtrace: the failing command is the message.
fn main() -> std::process::ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Bench(_) | Cmd::Prereqs { .. } => {}
        Cmd::Vagrant { .. } => prereqs::ensure_vagrant()?,
        _ => prereqs::ensure(true)?,
    }
    match cli.command {
        Cmd::Build { release } => build(release).map(|p| println!("{}", p.display())),
        Cmd::Run {
            release,
            port_offset,
        } => run(release, port_offset, None),
        Cmd::Demo(args) => demo::run(args),
        Cmd::Test {
            no_lint,
            no_vagrant,
            cargo_test_args,
        } => test(no_lint, no_vagrant, &cargo_test_args),
        Cmd::Bench(args) => bench::run(args, &workspace(), &target_dir()),
        Cmd::Vagrant { rebuild_box } => demo::vagrant(&build(false)?, rebuild_box),
        Cmd::Prereqs { vagrant: false } => prereqs::ensure(false),
        Cmd::Prereqs { vagrant: true } => prereqs::ensure_vagrant(),
        Cmd::Fuzz(args) => fuzz::run(args, &workspace(), &target_dir()),
    }
}
