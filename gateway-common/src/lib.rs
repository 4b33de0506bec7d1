//! Types shared by the kernel programs (`gateway-ebpf`) and the daemon (`gateway`).
//!
//! Every map key and value is defined once, here, as `#[repr(C)]` plain data so both sides
//! agree on the layout byte for byte.
#![no_std]

/// Index of the terminator's listening socket in the steering `SockMap`.
pub const TERMINATOR_SOCKET_INDEX: u32 = 0;

/// Per-CPU counter slots, indexes into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Connections delivered to the terminator by the steering program.
    Steered = 0,
    /// Plaintext first segments answered with a reset under STRICT.
    Reset = 1,
    /// First segments judged and let through (TLS handshake, or not STRICT).
    Passed = 2,
}

/// Number of counter slots.
pub const COUNTER_SLOTS: u32 = 3;
