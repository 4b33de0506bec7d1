//! `sk_lookup` steering: delivers new connections for mesh ports to the terminator's listener.
//!
//! The hook runs in the network namespace's socket lookup, before the kernel picks a listener,
//! for every new TCP connection. For ports marked `steer` in `PORTS` it assigns the
//! terminator's socket from the `TERMINATOR` SockMap; the terminator then reads the original
//! destination from the accepted socket's local address. Loopback destinations are never
//! steered: that is how the terminator reaches the local app on the same port without being
//! steered back to itself. If the slot is empty (terminator not running) the normal lookup
//! proceeds.

use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    macros::{map, sk_lookup},
    maps::SockMap,
    programs::SkLookupContext,
};
use aya_log_ebpf::debug;
use gateway_common::{Counter, TERMINATOR_SOCKET_INDEX};

use crate::maps::{bump, port_policy};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;

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
            ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && u32::from_be(ip[3]) == 1
        }
        _ => return SK_PASS,
    };
    if loopback {
        return SK_PASS;
    }
    // local_port is in host byte order in this context.
    let port = lookup.local_port as u16;
    match port_policy(port) {
        Some(policy) if policy.steer != 0 => {}
        _ => return SK_PASS,
    }
    match TERMINATOR.redirect_sk_lookup(&ctx, TERMINATOR_SOCKET_INDEX, 0) {
        Ok(()) => {
            bump(Counter::Steered, port);
            debug!(&ctx, "steer: port {} to the terminator", port);
        }
        // Empty slot (terminator down) or a family mismatch: fall back to the normal lookup.
        Err(err) => debug!(&ctx, "steer: port {} not steered: {}", port, err),
    }
    SK_PASS
}
