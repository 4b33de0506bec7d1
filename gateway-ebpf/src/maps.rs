//! Maps shared by both programs, and the counter helpers.
//!
//! One object carries both programs, so each map is defined once here; the loader pins them
//! by these names (see the `MAP_*` constants in `gateway-common`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
};
use gateway_common::{Counter, KernelConfig, PortCounters, PortPolicy, COUNTER_SLOTS, MAX_PORTS};

/// Policy per local port (host byte order): the exceptions to the default in [`CONFIG`].
/// Written by user space at runtime.
#[map]
pub static PORTS: HashMap<u16, PortPolicy> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Node-wide settings at index 0: the default mode of ports without an entry in [`PORTS`].
#[map]
pub static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

/// Totals per CPU, indexed by [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Per-port counters per CPU. User space creates the entry with the port's policy, so the hot
/// path only looks up and increments (no map update from the kernel side). Ports that follow
/// the default have no row: only the totals count them.
#[map]
pub static PORT_COUNTERS: PerCpuHashMap<u16, PortCounters> =
    PerCpuHashMap::with_max_entries(MAX_PORTS, 0);

/// The node-wide settings; all zero (no default, nothing STRICT) until user space writes them.
#[inline(always)]
pub fn config() -> KernelConfig {
    CONFIG.get(0).copied().unwrap_or_default()
}

/// The policy of `port` (host order): its own entry, else the default.
#[inline(always)]
pub fn port_policy(port: u16, config: &KernelConfig) -> PortPolicy {
    // SAFETY: the value is plain data copied out at once; a concurrent update can at worst give
    // the old or the new policy.
    match unsafe { PORTS.get(port) } {
        Some(policy) => *policy,
        None => config.default_policy(),
    }
}

/// Whether `port` has an entry of its own (as opposed to following the default).
#[inline(always)]
pub fn has_entry(port: u16) -> bool {
    // SAFETY: only the presence is used.
    unsafe { PORTS.get(port) }.is_some()
}

/// Adds one to `counter`, in the totals and in `port`'s row.
#[inline(always)]
pub fn bump(counter: Counter, port: u16) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; programs do not migrate CPUs mid-run, so no concurrent writer.
        unsafe { *slot += 1 };
    }
    if let Some(row) = PORT_COUNTERS.get_ptr_mut(port) {
        // SAFETY: per-CPU value, same reasoning as above.
        let row = unsafe { &mut *row };
        match counter {
            Counter::Steered => row.steered += 1,
            Counter::Reset => row.reset += 1,
            Counter::Passed => row.passed += 1,
            Counter::Dropped => row.dropped += 1,
        }
    }
}
