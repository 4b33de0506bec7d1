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
/// Map: node-wide settings, one [`KernelConfig`] at index 0 (array).
pub const MAP_CONFIG: &str = "CONFIG";

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
/// Program: the same check for layer-3 devices (tun, WireGuard, IP tunnels), whose packets
/// start at the IP header: plaintext is dropped there (no link header to answer with).
pub const PROG_STRICT_L3: &str = "strict_l3";

/// Program: the cgroup connect4 hook that sends mesh connects to the outbound listener.
pub const PROG_CAPTURE_CONNECT4: &str = "capture_connect4";
/// Program: the cgroup sock_ops hook that re-keys the original destination by client address.
pub const PROG_CAPTURE_SOCKOPS: &str = "capture_sockops";

/// Capacity of [`MAP_PORTS`] and [`MAP_PORT_COUNTERS`].
pub const MAX_PORTS: u32 = 1024;

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
    /// Plaintext first payloads answered with a reset under STRICT, and connections to a
    /// steered STRICT port refused while the terminator is down.
    Reset = 1,
    /// First segments judged and let through (TLS handshake, or no longer STRICT).
    Passed = 2,
    /// Segments to a STRICT port dropped because they cannot be judged safely (IPv4 options,
    /// IPv6 extension headers, fragments, in-packet VLAN tags, a SYN carrying data that is not
    /// a ClientHello, data completing a handshake, or a failed reset).
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

/// Node-wide settings. Value of [`MAP_CONFIG`] (index 0); all zero until user space writes it,
/// which means "no default": only the ports in [`MAP_PORTS`] are judged.
///
/// A port with an entry in [`MAP_PORTS`] follows that entry (Istio's `portLevelMtls` and the
/// named workload ports); every other port of a non-loopback local address follows the
/// default (the workload-wide PeerAuthentication).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// The [`mode`] of ports without an entry in [`MAP_PORTS`].
    pub default_mode: u8,
    /// Non-zero: new connections to ports without an entry are steered to the terminator.
    pub default_steer: u8,
    /// Non-zero when any port (or the default) is STRICT. Packets whose port cannot be known
    /// (non-first fragments, headers the program does not walk) are dropped while it is set.
    pub strict_anywhere: u8,
    /// Explicit padding so both sides agree on every byte.
    pub _pad: u8,
    /// The local ephemeral port range (`net.ipv4.ip_local_port_range`), host order. The
    /// default mode's tc check skips these ports: the node's own outbound connections live
    /// there, and their replies are not client first payloads. Both zero: no range.
    pub ephemeral_low: u16,
    /// Upper end of the ephemeral range, inclusive.
    pub ephemeral_high: u16,
}

impl KernelConfig {
    /// The policy a port without an entry gets.
    pub const fn default_policy(&self) -> PortPolicy {
        PortPolicy {
            mode: self.default_mode,
            steer: self.default_steer,
            _pad: [0; 2],
        }
    }

    /// Whether `port` (host order) is in the ephemeral range.
    pub const fn is_ephemeral(&self, port: u16) -> bool {
        self.ephemeral_low != 0 && port >= self.ephemeral_low && port <= self.ephemeral_high
    }
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
    unsafe impl aya::Pod for super::KernelConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Endpoint4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CaptureConfig {}
}
