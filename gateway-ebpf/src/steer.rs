//! `sk_lookup` steering: delivers new connections for mesh ports to the terminator's listener.
//!
//! The hook runs in the network namespace's socket lookup, before the kernel picks a listener,
//! for every new TCP connection. For ports marked `steer` in `PORTS` it assigns the
//! terminator's socket from the `TERMINATOR` SockMap; the terminator then reads the original
//! destination from the accepted socket's local address. Loopback destinations that arrive on
//! the loopback device are never steered: that is how the terminator reaches the local app on
//! the same port without being steered back to itself. A loopback destination arriving on any
//! other device (`route_localnet=1`, or a DNAT to 127.0.0.1 from the wire; `ingress_ifindex`
//! tells, Linux ≥ 5.17) is a remote client and is steered, or refused, like any other.
//!
//! Ports without an entry in `PORTS` follow the default in `CONFIG`, so under a workload-wide
//! STRICT every port of the workload's addresses is steered, named or not.
//!
//! If the slot is empty (terminator not running, e.g. the daemon was killed), a STRICT port
//! refuses the connection (`SK_DROP`: the lookup finds no socket and TCP answers the SYN with
//! a RST) instead of falling back to the app: with nobody to terminate mutual TLS, no client
//! can be served correctly, and the app never holds a connection nobody judged — a plaintext
//! flood then costs the app nothing, not even a slot in its accept queue. Other modes fall
//! back to the normal lookup.

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::{map, sk_lookup},
    maps::SockMap,
    programs::SkLookupContext,
};
use aya_log_ebpf::debug;
use gateway_common::{mode, Counter, TERMINATOR_SOCKET_INDEX};

use crate::maps::{bump, config, port_policy};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
/// The loopback device's index, the same in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// The terminator's listening socket, at [`TERMINATOR_SOCKET_INDEX`].
#[map]
static TERMINATOR: SockMap = SockMap::with_max_entries(1, 0);

#[sk_lookup]
pub fn steer(ctx: SkLookupContext) -> u32 {
    // SAFETY: `ctx.lookup` points at the kernel's bpf_sk_lookup context for this call.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let loopback = match lookup.family {
        // local_ip4 is in network order: its first byte in memory is the first octet.
        AF_INET => lookup.local_ip4.to_ne_bytes()[0] == 127,
        AF_INET6 => {
            let ip = lookup.local_ip6;
            let word2 = u32::from_be(ip[2]);
            let word3 = u32::from_be(ip[3]);
            ip[0] == 0
                && ip[1] == 0
                && ((word2 == 0 && word3 == 1) || (word2 == 0xffff && word3 >> 24 == 127))
        }
        _ => return SK_PASS,
    };
    // Only a loopback destination that arrived on `lo` is exempt: one from another device
    // got there through `route_localnet=1` or a DNAT to 127.0.0.1, i.e. from the wire.
    if loopback && lookup.ingress_ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    // local_port is in host byte order in this context.
    let port = lookup.local_port as u16;
    let policy = port_policy(port, &config());
    if policy.steer == 0 {
        return SK_PASS;
    }
    match TERMINATOR.redirect_sk_lookup(&ctx, TERMINATOR_SOCKET_INDEX, 0) {
        Ok(()) => {
            bump(Counter::Steered, port);
            debug!(&ctx, "steer: port {} to the terminator", port);
            SK_PASS
        }
        // Empty slot (terminator down) or a family mismatch: STRICT refuses, the others
        // fall back to the normal lookup.
        Err(err) if policy.mode == mode::STRICT => {
            bump(Counter::Reset, port);
            debug!(&ctx, "steer: port {} refused, no terminator: {}", port, err);
            SK_DROP
        }
        Err(err) => {
            debug!(&ctx, "steer: port {} not steered: {}", port, err);
            SK_PASS
        }
    }
}
