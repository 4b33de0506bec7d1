//! `--workers` end to end (issue 16): the count reaches the runtime, the default follows the
//! CPU affinity the daemon inherits rather than the machine's count, and 0 is refused.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use e2e::portcullis_bin;
use e2e::process::run;
use e2e::walkthrough::{Gateway, Identity, Walkthrough};

/// The `workers=N` of the daemon's "portcullis started" line, waited for (bounded).
fn started_workers(gw: &Gateway) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gw.daemon.log();
        if let Some(line) = log.lines().find(|l| l.contains("portcullis started")) {
            let n = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("workers="))
                .unwrap_or("");
            return Ok(n.to_owned());
        }
        if Instant::now() > deadline {
            bail!("no 'portcullis started' line:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pins the calling thread to the first CPU it may run on; a child spawned from it inherits
/// that mask, as a daemon started under `taskset -c N` would.
fn pin_this_thread_to_one_cpu() -> Result<()> {
    // SAFETY: sched_getaffinity/sched_setaffinity act on the calling thread and read or write
    // only the set passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let Some(first) = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set))
        else {
            bail!("no CPU in this thread's affinity mask");
        };
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(first, &mut one);
        if libc::sched_setaffinity(0, size, &one) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn workers_reach_the_runtime_and_the_default_follows_the_affinity_mask() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = Walkthrough::prepare(tmp.path())?;

    let gw = w.start_gateway(&["--workers", "3"])?;
    assert_eq!(started_workers(&gw)?, "3");
    assert_eq!(gw.https("/status/200", Identity::Client)?, "200");
    drop(gw);

    // From a thread pinned to one CPU the daemon may run on one CPU only: one worker, however
    // many the machine has. The test runs on its own thread, so the others are not pinned.
    let pinned = std::thread::scope(|s| {
        s.spawn(|| -> Result<Gateway> {
            pin_this_thread_to_one_cpu()?;
            w.start_gateway(&[])
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the pinned thread panicked"))?
    })?;
    assert_eq!(started_workers(&pinned)?, "1");
    assert_eq!(pinned.https("/status/200", Identity::Client)?, "200");
    Ok(())
}

#[test]
fn zero_workers_is_refused_before_anything_starts() -> Result<()> {
    let out =
        run(Command::new(portcullis_bin()?).args(["--workers", "0", "check", "/nonexistent"]))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("0 workers would serve nothing"), "{stderr}");
    Ok(())
}
