//! Portcullis: a service-mesh security gateway that enforces mutual TLS with help from the
//! Linux kernel.

/// The kernel programs, built by `build.rs` from `gateway-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis"));
