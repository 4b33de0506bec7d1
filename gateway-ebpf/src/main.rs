//! Portcullis kernel programs. Built for `bpfel-unknown-none` by `gateway/build.rs`.
//!
//! `steer` (sk_lookup) delivers mesh ports to the terminator; `strict` (tc ingress) resets
//! plaintext first payloads on STRICT ports. Both share the maps in `maps`. `capture` (cgroup
//! connect4 + sock_ops) sends a workload's plaintext connects to mesh destinations to the
//! outbound proxy, with maps of its own.
//!
//! The `cfg_attr`s let the crate also compile (as an empty binary) for the host, so the plain
//! workspace commands (`cargo clippy --workspace --all-targets`) work on stable.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod capture;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod steer;
#[cfg(target_arch = "bpf")]
mod strict;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves every path terminates; a panic path is unreachable in a loaded program.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
