//! The eBPF side of the daemon: loads, attaches and pins the kernel programs, and writes
//! policy into their maps.

/// The kernel programs, built by `build.rs` from `gateway-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis"));
