//! Child processes that die with the test.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, Result};

/// A spawned child, killed (and reaped) on drop so a failing test leaves nothing behind.
/// Its stderr goes to a log file that is printed on drop when the test panicked.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr appended to `log_dir/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything the child wrote so far.
    pub fn log(&self) -> String {
        // Lossy: a stray non-UTF-8 byte in a log must not hide the rest of it.
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Returns the exit status if the child already exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Runs a command to completion and returns its output (whatever the exit status).
pub fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))
}

/// A helper process driven a line at a time: each [`LineChild::ask`] writes one line to its
/// stdin and reads one line of answer (e.g. a Python client that keeps one connection open
/// and prints each response's status). Killed on drop.
pub struct LineChild {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl LineChild {
    /// Spawns `cmd` with piped stdin and stdout.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        let out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self { child, out })
    }

    /// Sends `line`, returns the next line of output, trimmed.
    pub fn ask(&mut self, line: &str) -> Result<String> {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().context("stdin")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        let mut answer = String::new();
        self.out.read_line(&mut answer)?;
        Ok(answer.trim().to_owned())
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
