//! The eBPF side of the daemon: loads, attaches and pins the kernel programs, and writes
//! policy into their maps.
//!
//! - [`loader`]: install (load + pin, or adopt what is pinned), attach, uninstall, status.
//! - [`maps`]: the runtime switch — port modes, the terminator's socket, counters.
//! - [`capture`]: outbound capture — a workload cgroup's connects to mesh destinations go to
//!   the outbound proxy, which looks up their original destination.
//! - [`interfaces`]: the interfaces the STRICT check covers when none are named.
//! - [`bpffs`]: the pin directory and mounting bpffs.
//! - [`cli`]: `portcullis kernel …` subcommands.

pub mod bpffs;
pub mod capture;
pub mod cli;
pub mod error;
pub mod interfaces;
pub mod loader;
pub mod log;
pub mod maps;
#[cfg(test)]
mod strict_tests;

pub use capture::{install_capture, open_capture, Capture, CaptureOptions};
pub use error::KernelError;
pub use loader::{install, open, status, uninstall, InstallOptions, Installed, Origin};
pub use maps::{CounterSnapshot, Counts, KernelMaps, PortSetting};

/// The kernel programs, built by `build.rs` from `gateway-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis"));
