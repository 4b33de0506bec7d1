//! Types shared by the kernel programs (`gateway-ebpf`) and the daemon (`gateway`).
//!
//! Every map key and value is defined once, here, as `#[repr(C)]` plain data so both sides
//! agree on the layout byte for byte. Map names are constants too: the loader finds maps by
//! these names, both in the object and under the pin directory.
#![no_std]

/// Index of the terminator's listening socket in the steering `SockMap`.
pub const TERMINATOR_SOCKET_INDEX: u32 = 0;

/// Map: the terminator's listening socket (`SockMap`, one slot).
pub const MAP_TERMINATOR: &str = "TERMINATOR";
/// Map: per-port policy, [`PortPolicy`] keyed by the port in host byte order (`u16`).
pub const MAP_PORTS: &str = "PORTS";
/// Map: per-CPU totals, a `u64` per [`Counter`] slot.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Map: per-CPU, per-port counters, [`PortCounters`] keyed by port (host order `u16`).
pub const MAP_PORT_COUNTERS: &str = "PORT_COUNTERS";
/// Map: flows waiting for their first payload, ISN keyed by [`FlowKey`] (LRU).
pub const MAP_FLOWS: &str = "FLOWS";

/// Map: mesh destinations whose plaintext connects are captured, a `u8` (always 1) keyed by
/// [`Endpoint4`] (hash).
pub const MAP_MESH_DESTS: &str = "MESH_DESTS";
/// Map: the outbound listener, one [`CaptureConfig`] at index 0 (array).
pub const MAP_CAPTURE_CONFIG: &str = "CAPTURE_CONFIG";
/// Map: original destination ([`Endpoint4`]) keyed by the client socket's cookie (`u64`), from
/// connect4 until the SYN leaves (LRU).
pub const MAP_ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
/// Map: original destination ([`Endpoint4`]) keyed by the client's source [`Endpoint4`], which
/// the outbound proxy reads as `accept()`'s peer address (LRU).
pub const MAP_ORIG_BY_CLIENT: &str = "ORIG_BY_CLIENT";
/// Map: per-CPU capture totals, a `u64` per [`CaptureCounter`] slot.
pub const MAP_CAPTURE_COUNTERS: &str = "CAPTURE_COUNTERS";

/// Program: the `sk_lookup` steering program.
pub const PROG_STEER: &str = "steer";
/// Program: the tc ingress classifier that resets plaintext under STRICT.
pub const PROG_STRICT: &str = "strict";

/// Program: the cgroup connect4 hook that sends mesh connects to the outbound listener.
pub const PROG_CAPTURE_CONNECT4: &str = "capture_connect4";
/// Program: the cgroup sock_ops hook that re-keys the original destination by client address.
pub const PROG_CAPTURE_SOCKOPS: &str = "capture_sockops";

/// Capacity of [`MAP_PORTS`] and [`MAP_PORT_COUNTERS`].
pub const MAX_PORTS: u32 = 1024;
/// Capacity of [`MAP_FLOWS`]: handshakes in flight to STRICT ports. When more SYNs than this
/// arrive before their first payloads, the oldest entries are evicted and those flows pass
/// unjudged (documented limit of the per-flow design).
pub const MAX_PENDING_FLOWS: u32 = 65536;

/// Capacity of [`MAP_MESH_DESTS`].
pub const MAX_MESH_DESTS: u32 = 4096;
/// Capacity of [`MAP_ORIG_BY_COOKIE`] and [`MAP_ORIG_BY_CLIENT`]: captured connections the
/// proxy has not accepted yet. Beyond that the oldest entries are evicted and those connections
/// reach the proxy without a known destination (it closes them).
pub const MAX_CAPTURED_FLOWS: u32 = 65536;

/// PeerAuthentication mode of a port as the kernel sees it (`PortPolicy::mode`).
pub mod mode {
    /// Plaintext only: the kernel leaves the port alone.
    pub const DISABLE: u8 = 0;
    /// Plaintext and mTLS both accepted; the terminator tells them apart.
    pub const PERMISSIVE: u8 = 1;
    /// mTLS only: a first payload that is not a TLS handshake is reset in the kernel.
    pub const STRICT: u8 = 2;
}

/// What the kernel does for one local port. Value of [`MAP_PORTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortPolicy {
    /// One of the [`mode`] constants.
    pub mode: u8,
    /// Non-zero: new connections to this port are steered to the terminator's listener.
    pub steer: u8,
    /// Explicit padding so both sides agree on every byte.
    pub _pad: [u8; 2],
}

/// Per-CPU counter slots, indexes into the [`MAP_COUNTERS`] per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Connections delivered to the terminator by the steering program.
    Steered = 0,
    /// Plaintext first segments answered with a reset under STRICT.
    Reset = 1,
    /// First segments judged and let through (TLS handshake, or no longer STRICT).
    Passed = 2,
    /// Segments to a STRICT port dropped because they cannot be judged safely (IPv4 options,
    /// IPv6 extension headers, fragments, or a failed reset).
    Dropped = 3,
}

/// Number of counter slots.
pub const COUNTER_SLOTS: u32 = 4;

/// Per-port counters. Value of [`MAP_PORT_COUNTERS`]; user space creates the entry when it
/// configures the port, the kernel only increments it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// See [`Counter::Steered`].
    pub steered: u64,
    /// See [`Counter::Reset`].
    pub reset: u64,
    /// See [`Counter::Passed`].
    pub passed: u64,
    /// See [`Counter::Dropped`].
    pub dropped: u64,
}

/// A TCP flow as seen on ingress. IPv4 addresses sit in `addr[0]`, the rest zero. Addresses
/// and ports are in network byte order, exactly as read from the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    /// Client (source) address.
    pub saddr: [u32; 4],
    /// Local (destination) address.
    pub daddr: [u32; 4],
    /// Client port, network order.
    pub sport: u16,
    /// Local port, network order.
    pub dport: u16,
    /// 4 or 6.
    pub family: u32,
}

/// An IPv4 address and TCP port, both in network byte order (as `bpf_sock_addr` holds them):
/// the key of [`MAP_MESH_DESTS`] and [`MAP_ORIG_BY_CLIENT`], the value of the original
/// destination maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint4 {
    /// Address, network order: its first byte in memory is the first octet.
    pub ip4: u32,
    /// Port, network order.
    pub port: u16,
    /// Explicit padding, always zero (it is part of a hash key).
    pub _pad: u16,
}

impl Endpoint4 {
    /// From octets and a host-order port.
    pub const fn new(octets: [u8; 4], port: u16) -> Self {
        Self {
            ip4: u32::from_ne_bytes(octets),
            port: port.to_be(),
            _pad: 0,
        }
    }

    /// The address's octets.
    pub const fn octets(&self) -> [u8; 4] {
        self.ip4.to_ne_bytes()
    }

    /// The port in host order.
    pub const fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Where captured connects go. Value of [`MAP_CAPTURE_CONFIG`]; an all-zero value (nothing
/// configured yet) disables capture.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureConfig {
    /// The outbound proxy's listener (e.g. `127.0.0.1:15001`).
    pub outbound: Endpoint4,
}

/// Per-CPU capture counter slots, indexes into [`MAP_CAPTURE_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureCounter {
    /// Connects to a mesh destination rewritten to the outbound listener.
    Captured = 0,
}

/// Number of capture counter slots.
pub const CAPTURE_COUNTER_SLOTS: u32 = 1;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are #[repr(C)] plain integers with explicit padding; any byte pattern
    // is a valid value.
    unsafe impl aya::Pod for super::PortPolicy {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Endpoint4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CaptureConfig {}
}
