//! `cargo xtask vagrant`: the mesh story's steps 1, 3, 4 and 5 on two Vagrant VMs, on a machine
//! with no Vagrant Cloud and no usable KVM (`/work/shared/VAGRANT-NOTES.md` has the recipe).
//!
//! The box is built locally (`vagrant/build-box.sh`: Debian 12 with the bookworm-backports
//! kernel, whose TCX the tc program needs) and cached in `<target>/vagrant/`. libvirtd and
//! vagrant run inside a network namespace made here, so libvirt's bridges, dnsmasq and iptables
//! rules never touch the host's; the VMs run under software emulation. Everything made for the
//! run — VMs, daemons, the namespace — goes at the end, also after a failure or Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::sh;

const BOX: &str = "portcullis/bookworm";
const SERVER: &str = "192.168.56.10";

type VmStep = fn(&Run) -> Result<()>;

struct Run {
    ns: String,
    vagrant_dir: PathBuf,
    /// `.vagrant` of this run, the mesh bundle, daemon pid files.
    dir: PathBuf,
    bin: PathBuf,
    started: Instant,
    up: bool,
}

pub fn run(bin: &Path, rebuild_box: bool) -> Result<()> {
    if !crate::is_root() {
        bail!("cargo xtask vagrant runs libvirtd and makes a network namespace: run it as root");
    }
    sh::catch_interrupts();
    let started = Instant::now();
    let cache = crate::target_dir().join("vagrant");
    std::fs::create_dir_all(&cache)?;
    ensure_box(&cache, rebuild_box)?;
    let dir = cache.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut run = Run {
        ns: format!("pc-vagrant-{}", std::process::id()),
        vagrant_dir: crate::workspace().join("vagrant"),
        dir,
        bin: bin.to_owned(),
        started,
        up: false,
    };
    let result = run.story();
    drop(run);
    println!(
        "cargo xtask vagrant: {:.0}s in all (VMs destroyed, libvirtd stopped, namespace removed)",
        started.elapsed().as_secs_f64()
    );
    result
}

fn progress(started: Instant, what: &str) {
    println!("[{:>4.0}s] {what}", started.elapsed().as_secs_f64());
}

/// Builds the box once (ten minutes or so under emulation) and adds it to vagrant once. A box
/// Vagrant already has is used as it is, even when the cached file is gone (a cleaned target
/// directory must not cost a rebuild); `--rebuild-box` builds and adds it again.
fn ensure_box(cache: &Path, rebuild: bool) -> Result<()> {
    let file = cache.join("portcullis-bookworm.box");
    let boxes = sh::ok(Command::new("vagrant").args(["box", "list"]))?;
    let added = boxes.lines().any(|l| l.starts_with(&format!("{BOX} ")));
    if added && !rebuild {
        println!("using the box {BOX} Vagrant already has (--rebuild-box builds it again)");
        return Ok(());
    }
    if rebuild || !file.exists() {
        println!("building the box {} (debootstrap; once) …", file.display());
        let t = Instant::now();
        sh::ok(
            Command::new("bash")
                .arg(crate::workspace().join("vagrant/build-box.sh"))
                .arg(&file),
        )?;
        println!("box built in {:.0}s", t.elapsed().as_secs_f64());
    }
    sh::ok(
        Command::new("vagrant")
            .args(["box", "add", "--force", "--name", BOX])
            .arg(&file),
    )?;
    Ok(())
}

impl Run {
    fn in_ns(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns))
            .arg(program);
        cmd
    }

    fn vagrant(&self, args: &[&str]) -> Command {
        let mut cmd = self.in_ns("vagrant");
        cmd.args(args)
            .current_dir(&self.vagrant_dir)
            .env("VAGRANT_DOTFILE_PATH", self.dir.join(".vagrant"))
            .env("PORTCULLIS_BIN", &self.bin)
            .env("PORTCULLIS_BUNDLE", self.dir.join("bundle"))
            .env("PORTCULLIS_LIBVIRT_DRIVER", "qemu")
            .env("VAGRANT_DEFAULT_PROVIDER", "libvirt");
        cmd
    }

    /// `vagrant ssh VM -c SCRIPT`, printed like the demo's commands.
    fn ssh(&self, vm: &str, script: &str) -> Result<(Option<i32>, String)> {
        // 255 is ssh's own failure (the emulated VM too slow to answer), not the command's:
        // try again rather than report it as the step's result.
        let mut out = sh::output(&mut self.vagrant(&["ssh", vm, "-c", script]))?;
        for _ in 0..2 {
            if out.status.code() != Some(255) {
                break;
            }
            println!("  (vagrant ssh {vm}: ssh itself failed; retrying)");
            std::thread::sleep(Duration::from_secs(5));
            out = sh::output(&mut self.vagrant(&["ssh", vm, "-c", script]))?;
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // vagrant ssh adds its own "Connection to … closed." line on stderr.
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("Connection to ") && !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        println!("  $ vagrant ssh {vm} -c '{script}'");
        for line in text.lines() {
            println!("  {line}");
        }
        Ok((out.status.code(), text))
    }

    fn start_libvirt(&self) -> Result<()> {
        sh::ok(Command::new("ip").args(["netns", "add", &self.ns]))?;
        sh::ok(Command::new("ip").args(["-n", &self.ns, "link", "set", "lo", "up"]))?;
        // libvirt re-probes QEMU on every call while /dev/kvm is root-only; a private 0666 node
        // in the daemons' own mount namespace cures that without touching the host's.
        let kvm = self.dir.join("kvm");
        let script = format!(
            "set -e; mkdir -p /var/log/libvirt /var/lib/libvirt/images /run/libvirt; \
             mknod -m 666 {kvm} c 10 232; mount --bind {kvm} /dev/kvm; \
             virtlogd -d -p {dir}/virtlogd.pid; libvirtd -d -p {dir}/libvirtd.pid",
            kvm = kvm.display(),
            dir = self.dir.display()
        );
        sh::ok(self.in_ns("unshare").args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]))?;
        wait(Duration::from_secs(30), || {
            sh::output(
                self.in_ns("virsh")
                    .args(["-c", "qemu:///system", "version"]),
            )
            .is_ok_and(|o| o.status.success())
        })
        .context("libvirtd did not answer")?;
        let pools = sh::ok(self.in_ns("virsh").args(["pool-list", "--all", "--name"]))?;
        if !pools.lines().any(|l| l.trim() == "default") {
            for args in [
                &[
                    "pool-define-as",
                    "default",
                    "dir",
                    "--target",
                    "/var/lib/libvirt/images",
                ][..],
                &["pool-build", "default"],
            ] {
                sh::ok(self.in_ns("virsh").args(args))?;
            }
        }
        // Started by this libvirtd (pools come up inactive in a fresh daemon).
        let _ = sh::output(self.in_ns("virsh").args(["pool-start", "default"]));
        Ok(())
    }

    fn story(&mut self) -> Result<()> {
        progress(
            self.started,
            &format!("namespace {} with libvirtd and virtlogd", self.ns),
        );
        self.start_libvirt()?;
        progress(
            self.started,
            "vagrant up: client and server (software emulation; a few minutes)",
        );
        self.up = true;
        // Minutes of output: to a file beside the cache (kept), its tail on a failure.
        let log = crate::target_dir().join("vagrant/vagrant-up.log");
        println!("         (vagrant's output: {})", log.display());
        let file = std::fs::File::create(&log)?;
        let up = sh::output(
            self.vagrant(&["up", "--provider=libvirt"])
                .stdout(file.try_clone()?)
                .stderr(file),
        )?;
        if !up.status.success() {
            bail!(
                "vagrant up failed ({}):\n{}",
                up.status,
                tail(&std::fs::read_to_string(&log).unwrap_or_default(), 40)
            );
        }
        progress(self.started, "both VMs up and provisioned by node.sh");

        let steps: [(&str, VmStep); 4] = [
            (
                "1: the client's plaintext request is answered through mutual TLS",
                step_hello,
            ),
            (
                "3: STRICT applied; from outside the mesh (the host), plaintext is reset",
                step_outside_reset,
            ),
            ("4: the client is still answered", step_hello),
            (
                "5: an AuthorizationPolicy denies the client's principal /admin",
                step_authz,
            ),
        ];
        for (title, step) in steps {
            println!("\n== Step {title}");
            if let Err(e) = step(self) {
                println!("FAILED: step {title} did not hold: {e:#}");
                bail!("vagrant step {title} did not hold: {e:#}");
            }
            progress(self.started, "held");
        }
        println!("\nSteps 1, 3, 4 and 5 held on the VMs.");
        Ok(())
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !done() {
        sh::check_interrupted()?;
        ensure!(start.elapsed() < timeout, "not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

fn step_hello(run: &Run) -> Result<()> {
    let (code, out) = run.ssh("client", "curl -sS -m 20 http://server/")?;
    ensure!(
        code == Some(0) && out.trim() == "Hello World!",
        "expected Hello World!, got {code:?} {out:?}"
    );
    Ok(())
}

fn step_outside_reset(run: &Run) -> Result<()> {
    for vm in ["server", "client"] {
        run.ssh(
            vm,
            "sudo cp /var/lib/portcullis/strict.yaml /var/lib/portcullis/config/",
        )?;
    }
    // The daemons pick the file up within a second; allow the emulated VMs some slack.
    let mut last = String::new();
    for attempt in 0..20 {
        let out = sh::output(run.in_ns("curl").args([
            "-sS",
            "-m",
            "10",
            &format!("http://{SERVER}:80/"),
        ]))?;
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() == Some(56) && last.contains("Connection reset by peer") {
            println!("  $ curl -sS http://{SERVER}:80/    # from the host, outside the mesh");
            println!("  {}", last.trim());
            return Ok(());
        }
        if attempt == 0 {
            println!("  (waiting for the reload)");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("the outside request was never reset; last: {last}")
}

fn step_authz(run: &Run) -> Result<()> {
    run.ssh(
        "server",
        "sudo cp /var/lib/portcullis/deny-admin.yaml /var/lib/portcullis/config/",
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let (_, denied) = run.ssh("client", "curl -sS -m 20 -i http://server/admin")?;
    ensure!(
        denied.split_whitespace().nth(1) == Some("403") && denied.contains("RBAC: access denied"),
        "expected 403 RBAC: access denied, got {denied:?}"
    );
    let (_, allowed) = run.ssh("client", "curl -sS -m 20 -i http://server/")?;
    ensure!(
        allowed.split_whitespace().nth(1) == Some("200") && allowed.contains("Hello World!"),
        "expected 200 Hello World!, got {allowed:?}"
    );
    Ok(())
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.up {
            sh::quietly(&mut self.vagrant(&["destroy", "-f"]));
        }
        for daemon in ["libvirtd", "virtlogd"] {
            let pidfile = self.dir.join(format!("{daemon}.pid"));
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) on the daemon this run started (its own pid file).
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        sh::quietly(Command::new("ip").args(["netns", "del", &self.ns]));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
