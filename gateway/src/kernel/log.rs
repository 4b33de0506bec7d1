//! The kernel programs' aya-log lines, forwarded into the daemon's own log.
//!
//! The programs log only when loaded with `--kernel-log` (their level gate is set at load
//! time, so an adopted install keeps the level it was loaded with). Lines arrive through the
//! programs' ring buffer and leave through the `log` facade, which `tracing` picks up.

use std::path::Path;

use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

use super::bpffs::PinLayout;

/// Starts one reader task per pinned program; returns how many started. Must be called
/// inside a tokio runtime.
pub fn spawn_readers(pin_dir: &Path) -> usize {
    let ids = super::loader::program_ids(&PinLayout::new(pin_dir));
    let mut started = 0;
    for (program, id) in ids {
        let logger = match EbpfLogger::init_from_id(id) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(program, error = %e, "kernel log lines of this program cannot be read");
                continue;
            }
        };
        // SAFETY: the logger owns its ring buffer's map fd for its whole life, and the
        // AsyncFd owns the logger, so the fd stays open and the same until both drop.
        let mut fd = match unsafe { AsyncFd::register(logger) } {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(program, error = %e, "kernel log ring buffer cannot be polled");
                continue;
            }
        };
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        started += 1;
    }
    started
}
