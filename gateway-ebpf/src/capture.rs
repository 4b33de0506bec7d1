//! Outbound capture, the client side of auto mTLS: a workload's plaintext `connect()` to a mesh
//! destination lands on the node's outbound proxy, which learns the original destination.
//!
//! Two programs on the workload's cgroup (v2), sharing the maps below:
//! 1. `capture_connect4` (`cgroup/connect4`) runs inside `connect()`, before any packet. For a
//!    TCP destination listed in `MESH_DESTS` it records the destination in `ORIG_BY_COOKIE`
//!    under the socket's cookie and rewrites `user_ip4`/`user_port` to the outbound listener
//!    from `CAPTURE_CONFIG`. The kernel then connects to the listener instead.
//! 2. `capture_sockops` (`sockops`) on `BPF_SOCK_OPS_TCP_CONNECT_CB` — the SYN is about to
//!    leave, so the client's source address and port are chosen — moves that entry to
//!    `ORIG_BY_CLIENT`, keyed by the client's source address and port.
//!
//! # Why re-key by the client's source address, not by the accepted socket's cookie
//! The accepted socket has a cookie of its own and, without conntrack, `SO_ORIGINAL_DST` says
//! ENOENT, so some bridge is needed. Re-keying on `BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB` by the
//! accepted socket's cookie also works, but only if the *proxy's* cgroup has this sock_ops
//! program too, and the proxy would have to call `getsockopt(SO_COOKIE)` per connection. The
//! connect-side re-key needs nothing outside the workload's cgroup, and the key is exactly what
//! `accept()` already returns as the peer address. Source address plus port (not the port
//! alone) keeps two clients with the same port on different local addresses apart.
//!
//! Only IPv4 TCP is captured (`connect4`); UDP connects and IPv4-mapped IPv6 destinations on
//! an AF_INET6 socket pass untouched. The proxy must run outside the captured cgroup, or its
//! own connects to mesh destinations would come back to it.

use core::ptr::{addr_of, addr_of_mut};

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    helpers::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, SockOpsContext},
    EbpfContext,
};
use gateway_common::{
    CaptureConfig, CaptureCounter, Endpoint4, CAPTURE_COUNTER_SLOTS, MAX_CAPTURED_FLOWS,
    MAX_MESH_DESTS,
};

const AF_INET: u32 = 2;
const IPPROTO_TCP: u32 = 6;
/// cgroup_sock_addr verdict: let the `connect()` proceed (0 would fail it with EPERM).
const ALLOW: i32 = 1;
/// sock_ops return value; only the `reply` field carries meaning for the callbacks used here.
const SOCK_OPS_OK: u32 = 1;

/// Destinations whose connects are captured. The value is always 1 (a set).
#[map]
static MESH_DESTS: HashMap<Endpoint4, u8> = HashMap::with_max_entries(MAX_MESH_DESTS, 0);

/// The outbound listener, at index 0.
#[map]
static CAPTURE_CONFIG: Array<CaptureConfig> = Array::with_max_entries(1, 0);

/// Original destination by client socket cookie, from connect4 until TCP_CONNECT_CB. A connect
/// that fails before its SYN (no route, EINPROGRESS then close) leaves its entry to the LRU.
#[map]
static ORIG_BY_COOKIE: LruHashMap<u64, Endpoint4> =
    LruHashMap::with_max_entries(MAX_CAPTURED_FLOWS, 0);

/// Original destination by client source address and port; the proxy deletes the entry when
/// it reads it, the LRU bounds connections it never accepted.
#[map]
static ORIG_BY_CLIENT: LruHashMap<Endpoint4, Endpoint4> =
    LruHashMap::with_max_entries(MAX_CAPTURED_FLOWS, 0);

/// Totals per CPU, indexed by [`CaptureCounter`].
#[map]
static CAPTURE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CAPTURE_COUNTER_SLOTS, 0);

#[cgroup_sock_addr(connect4)]
pub fn capture_connect4(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: `addr` is the kernel's bpf_sock_addr for this call. Fields are read and written
    // as whole u32s with volatile accesses: the verifier refuses narrower context writes.
    let (protocol, ip4, port) = unsafe {
        (
            addr_of!((*addr).protocol).read_volatile(),
            addr_of!((*addr).user_ip4).read_volatile(),
            addr_of!((*addr).user_port).read_volatile(),
        )
    };
    if protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // user_port holds the port in network order in its low 16 bits.
    let dest = Endpoint4 {
        ip4,
        port: port as u16,
        _pad: 0,
    };
    // SAFETY: the value is read at once; a concurrent update gives the old or the new answer.
    if unsafe { MESH_DESTS.get(dest) }.is_none() {
        return ALLOW;
    }
    let Some(outbound) = CAPTURE_CONFIG.get(0).map(|c| c.outbound) else {
        return ALLOW;
    };
    if outbound.ip4 == 0 || outbound.port == 0 {
        // Not configured yet: leave the connect alone rather than send it nowhere.
        return ALLOW;
    }
    // SAFETY: the helper only reads the socket behind this context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIG_BY_COOKIE.insert(cookie, dest, 0).is_err() {
        // Without a record the proxy could not route it: better uncaptured than lost.
        return ALLOW;
    }
    // SAFETY: as above; connect4 may write user_ip4 and user_port.
    unsafe {
        addr_of_mut!((*addr).user_ip4).write_volatile(outbound.ip4);
        addr_of_mut!((*addr).user_port).write_volatile(u32::from(outbound.port));
    }
    count(CaptureCounter::Captured);
    ALLOW
}

#[sock_ops]
pub fn capture_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB || ctx.family() != AF_INET {
        return SOCK_OPS_OK;
    }
    // SAFETY: the helper only reads the socket behind this context; it is the client's socket,
    // so the cookie equals the one connect4 saw.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: plain data copied out at once.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(cookie) }).copied() else {
        return SOCK_OPS_OK;
    };
    // local_ip4 is in network order, local_port in host order in bpf_sock_ops.
    let client = Endpoint4 {
        ip4: ctx.local_ip4(),
        port: (ctx.local_port() as u16).to_be(),
        _pad: 0,
    };
    let _ = ORIG_BY_CLIENT.insert(client, orig, 0);
    let _ = ORIG_BY_COOKIE.remove(cookie);
    SOCK_OPS_OK
}

#[inline(always)]
fn count(counter: CaptureCounter) {
    if let Some(slot) = CAPTURE_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; programs do not migrate CPUs mid-run, so no concurrent writer.
        unsafe { *slot += 1 };
    }
}
