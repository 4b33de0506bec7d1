//! `sk_lookup` steering: delivers new connections for mesh ports to the terminator's listener.

use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    macros::{map, sk_lookup},
    maps::{HashMap, PerCpuArray, SockMap},
    programs::SkLookupContext,
};
use gateway_common::{Counter, COUNTER_SLOTS, TERMINATOR_SOCKET_INDEX};

/// The terminator's listening socket, at [`TERMINATOR_SOCKET_INDEX`].
#[map]
static TERMINATOR: SockMap = SockMap::with_max_entries(1, 0);

/// Mesh ports (host byte order) whose connections go to the terminator; value unused.
#[map]
static MESH_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[sk_lookup]
pub fn steer(ctx: SkLookupContext) -> u32 {
    // SAFETY: `ctx.lookup` points at the kernel's bpf_sk_lookup context for this call.
    let port = unsafe { (*ctx.lookup).local_port } as u16;
    // SAFETY: the map value is plain data and the key is a copy.
    if unsafe { MESH_PORTS.get(&port) }.is_none() {
        return SK_PASS;
    }
    if TERMINATOR
        .redirect_sk_lookup(&ctx, TERMINATOR_SOCKET_INDEX, 0)
        .is_ok()
    {
        bump(Counter::Steered);
    }
    SK_PASS
}

fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}
