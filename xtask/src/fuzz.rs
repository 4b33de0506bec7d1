//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/`, each run for a bounded time on a
//! copy of its committed corpus (the repository is never modified: new inputs go to the
//! copy, crash artifacts under the target directory).
//!
//! `cargo xtask test` calls [`in_test`] after the unit and end-to-end tests. Without nightly
//! or cargo-fuzz the step skips loudly on a developer machine and fails in CI (`CI` set),
//! where `.ci/install-prereqs` installs both.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Seconds per target in `cargo xtask test`.
const TEST_SECONDS: u64 = 60;

/// The libFuzzer seed of `cargo xtask test`. A fixed seed makes the test step replay the same
/// mutations on every machine, so what passed here passes in CI; exploring with fresh seeds is
/// `cargo xtask fuzz`'s job (its default), and whatever it finds becomes a regression test and
/// a corpus entry before it is committed.
const TEST_SEED: u32 = 1;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = TEST_SECONDS)]
    seconds: u64,
    /// libFuzzer's random seed; 0 (the default) picks a fresh one each run. `cargo xtask
    /// test` uses a fixed seed so its bounded run is the same everywhere.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// One target (default: all; `cargo +nightly fuzz list` in fuzz/ names them).
    target: Option<String>,
}

/// libFuzzer options a target needs beyond the defaults.
fn extra_options(target: &str) -> &'static [&'static str] {
    match target {
        // Inputs up to one whole TLS record and a little past it (`sniff::MAX_HELLO`).
        "sniff" => &["-max_len=16500"],
        // A config directory holds whole files with inline certificates.
        "config" => &["-max_len=8192"],
        _ => &[],
    }
}

pub fn run(args: FuzzArgs, ws: &Path, target_dir: &Path) -> Result<()> {
    if !prerequisites()? {
        return Ok(());
    }
    fuzz(
        ws,
        target_dir,
        args.target.as_deref(),
        args.seconds,
        args.seed,
    )
}

/// The bounded run of `cargo xtask test`.
pub fn in_test(ws: &Path, target_dir: &Path) -> Result<()> {
    if !prerequisites()? {
        return Ok(());
    }
    fuzz(ws, target_dir, None, TEST_SECONDS, TEST_SEED)
}

/// Whether nightly and cargo-fuzz are there: false (after a loud notice) on a developer
/// machine without them, an error in CI.
fn prerequisites() -> Result<bool> {
    let missing = [
        (
            "the nightly toolchain",
            nightly().args(["rustc", "--version"]),
        ),
        ("cargo-fuzz", nightly().args(["cargo", "fuzz", "--version"])),
    ]
    .into_iter()
    .filter_map(|(what, cmd)| {
        let ok = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        (!ok).then_some(what)
    })
    .collect::<Vec<_>>();
    if missing.is_empty() {
        return Ok(true);
    }
    let what = missing.join(" and ");
    if std::env::var_os("CI").is_some() {
        bail!("fuzzing needs {what} (.ci/install-prereqs installs them)");
    }
    eprintln!(
        "\n!!!!! xtask: {what} missing: the fuzz targets are SKIPPED; \
         `rustup toolchain install nightly` and `cargo install cargo-fuzz --locked` \
         (CI fails here instead) !!!!!\n"
    );
    Ok(false)
}

fn nightly() -> Command {
    let mut cmd = Command::new("rustup");
    // `cargo xtask` runs under the stable cargo, which exports its own paths; the nightly
    // cargo that cargo-fuzz starts must find its own.
    cmd.args(["run", "nightly"])
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

fn fuzz(ws: &Path, target_dir: &Path, only: Option<&str>, seconds: u64, seed: u32) -> Result<()> {
    let fuzz_dir = ws.join("fuzz");
    let all = list_targets(&fuzz_dir)?;
    let targets: Vec<String> = match only {
        Some(t) if all.iter().any(|a| a == t) => vec![t.to_owned()],
        Some(t) => bail!("no fuzz target {t:?} (there are: {})", all.join(", ")),
        None => all,
    };
    super::status(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["fmt", "--manifest-path"])
            .arg(fuzz_dir.join("Cargo.toml"))
            .args(["--", "--check"]),
    )?;
    let mut build = nightly();
    build
        .current_dir(&fuzz_dir)
        .args(["cargo", "fuzz", "build", "--target-dir"])
        .arg(target_dir);
    if let [one] = targets.as_slice() {
        build.arg(one);
    }
    super::status(&mut build)?;
    let bin_dir = target_dir.join(host_triple()?).join("release");
    let work = target_dir.join("fuzz-run");
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for t in &targets {
        match run_target(&fuzz_dir, &bin_dir, &work, t, seconds, seed)? {
            Outcome::Clean(line) => summary.push(line),
            Outcome::Crashed(line) => {
                summary.push(line);
                failed.push(t.clone());
            }
        }
    }
    let seed = if seed == 0 {
        "a fresh seed".to_owned()
    } else {
        format!("seed {seed}")
    };
    eprintln!("\nxtask fuzz: {seconds} s per target, {seed}");
    for line in &summary {
        eprintln!("  {line}");
    }
    if !failed.is_empty() {
        bail!(
            "fuzz target(s) {} found a failing input (artifacts under {})",
            failed.join(", "),
            work.display()
        );
    }
    Ok(())
}

enum Outcome {
    Clean(String),
    Crashed(String),
}

fn run_target(
    fuzz_dir: &Path,
    bin_dir: &Path,
    work: &Path,
    target: &str,
    seconds: u64,
    seed: u32,
) -> Result<Outcome> {
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let log = work.join(format!("{target}.log"));
    // A fresh copy of the committed corpus each run: what a run learns stays in target/.
    if corpus.exists() {
        fs::remove_dir_all(&corpus).with_context(|| format!("clearing {}", corpus.display()))?;
    }
    copy_dir(&fuzz_dir.join("corpus").join(target), &corpus)?;
    fs::create_dir_all(&artifacts)?;
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut artifact_prefix = artifacts.into_os_string();
    artifact_prefix.push("/");
    let mut cmd = Command::new(bin_dir.join(target));
    cmd.arg(&corpus)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-seed={seed}"))
        .arg("-print_final_stats=1")
        .arg("-timeout=10")
        .arg({
            let mut a = std::ffi::OsString::from("-artifact_prefix=");
            a.push(&artifact_prefix);
            a
        })
        .args(extra_options(target))
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    eprintln!(
        "xtask: fuzzing {target} for {seconds} s (log: {})",
        log.display()
    );
    let started = Instant::now();
    let st = cmd
        .status()
        .with_context(|| format!("running the fuzz target {target}"))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .map_or("?", str::trim)
            .to_owned()
    };
    let line = format!(
        "{target:14} {:>10} executions ({} /s) in {} s, corpus {} -> {} inputs",
        stat("number_of_executed_units"),
        stat("average_exec_per_sec"),
        started.elapsed().as_secs(),
        count_files(&fuzz_dir.join("corpus").join(target)),
        count_files(&corpus),
    );
    if st.success() {
        return Ok(Outcome::Clean(line));
    }
    // The end of the log holds the panic message, the failing input and its path.
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    eprintln!("xtask: fuzz target {target} FAILED ({st}):");
    for l in tail.iter().rev() {
        eprintln!("  | {l}");
    }
    Ok(Outcome::Crashed(format!("{line}  ** FAILED ({st}) **")))
}

fn list_targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let out = nightly()
        .current_dir(fuzz_dir)
        .args(["cargo", "fuzz", "list"])
        .output()
        .context("running cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The triple cargo-fuzz builds for: the host's.
fn host_triple() -> Result<String> {
    let out = nightly()
        .args(["rustc", "-vV"])
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV names no host")
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let entries = match fs::read_dir(from) {
        Ok(e) => e,
        // A target without a committed corpus starts from nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", from.display())),
    };
    for entry in entries {
        let path: PathBuf = entry?.path();
        if path.is_file() {
            if let Some(name) = path.file_name() {
                fs::copy(&path, to.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |e| e.filter(|e| e.is_ok()).count())
}
