//! User-space handles on the pinned maps: port policy (the runtime switch between DISABLE,
//! PERMISSIVE and STRICT — maps only, programs are never reloaded), the terminator's socket,
//! and the counters.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, SockMap};
use gateway_common::{
    mode, Counter, KernelConfig, PortCounters, PortPolicy, MAP_CONFIG, MAP_COUNTERS, MAP_PORTS,
    MAP_PORT_COUNTERS, MAP_TERMINATOR, TERMINATOR_SOCKET_INDEX,
};
use serde::Serialize;

/// `BPF_NOEXIST` map update flag (include/uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

use super::bpffs::PinLayout;
use super::error::{KernelError, Result};
use crate::policy::peer_auth::PeerAuthMode;
use crate::snapshot::model::DEFAULT_PORT;

/// What the kernel does for one port, in domain terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PortSetting {
    /// The PeerAuthentication mode enforced in the kernel.
    pub mode: PeerAuthMode,
    /// Whether new connections are steered to the terminator.
    pub steer: bool,
}

impl PortSetting {
    /// No default: ports without an entry are left alone by both programs.
    pub const NONE: Self = Self {
        mode: PeerAuthMode::Disable,
        steer: false,
    };

    fn to_kernel(self) -> PortPolicy {
        PortPolicy {
            mode: match self.mode {
                PeerAuthMode::Disable => mode::DISABLE,
                PeerAuthMode::Permissive => mode::PERMISSIVE,
                PeerAuthMode::Strict => mode::STRICT,
            },
            steer: u8::from(self.steer),
            _pad: [0; 2],
        }
    }

    fn from_kernel(policy: PortPolicy) -> Self {
        let mode = match policy.mode {
            mode::STRICT => PeerAuthMode::Strict,
            mode::PERMISSIVE => PeerAuthMode::Permissive,
            _ => PeerAuthMode::Disable,
        };
        Self {
            mode,
            steer: policy.steer != 0,
        }
    }
}

/// `net.ipv4.ip_local_port_range` of this network namespace (it also governs IPv6); (0, 0)
/// when unreadable, which makes the default cover every port.
pub(super) fn ephemeral_range() -> (u16, u16) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return (0, 0);
    };
    let mut it = text.split_whitespace().map(|w| w.parse::<u16>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(low), Some(high)) if low != 0 && low <= high => (low, high),
        _ => (0, 0),
    }
}

/// Counter values summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Connections steered to the terminator.
    pub steered: u64,
    /// Plaintext first payloads reset under STRICT.
    pub reset: u64,
    /// First payloads judged and let through.
    pub passed: u64,
    /// Segments dropped on STRICT ports because they could not be judged safely.
    pub dropped: u64,
}

/// Totals and per-port rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    /// All ports together.
    pub total: Counts,
    /// Per configured port.
    pub per_port: BTreeMap<u16, Counts>,
}

/// Open handles on the pinned maps.
pub struct KernelMaps {
    ports: HashMap<MapData, u16, PortPolicy>,
    port_counters: PerCpuHashMap<MapData, u16, PortCounters>,
    counters: PerCpuArray<MapData, u64>,
    terminator: SockMap<MapData>,
    config: Array<MapData, KernelConfig>,
}

pub(super) fn open_pinned<T>(pins: &PinLayout, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = pins.map(name);
    if !path.exists() {
        return Err(KernelError::NotInstalled(pins.root().to_path_buf()));
    }
    let data = MapData::from_pin(&path)
        .map_err(|e| KernelError::during(format!("opening pinned map {}", path.display()), e))?;
    let bad = |e: aya::maps::MapError| KernelError::BadPinnedState {
        dir: pins.root().to_path_buf(),
        detail: format!("map {name}: {e}"),
    };
    T::try_from(Map::from_map_data(data).map_err(bad)?).map_err(bad)
}

impl KernelMaps {
    /// Opens the maps pinned under `pins`.
    pub fn open(pins: &PinLayout) -> Result<Self> {
        Ok(Self {
            ports: open_pinned(pins, MAP_PORTS)?,
            port_counters: open_pinned(pins, MAP_PORT_COUNTERS)?,
            counters: open_pinned(pins, MAP_COUNTERS)?,
            terminator: open_pinned(pins, MAP_TERMINATOR)?,
            config: open_pinned(pins, MAP_CONFIG)?,
        })
    }

    /// The mode of ports without an entry of their own.
    pub fn default_setting(&self) -> Result<PortSetting> {
        Ok(PortSetting::from_kernel(self.config()?.default_policy()))
    }

    /// Sets the mode of every port without an entry of its own (the workload-wide
    /// PeerAuthentication): under STRICT, every port of the node's non-loopback addresses.
    pub fn set_default(&mut self, setting: PortSetting) -> Result<()> {
        let mut config = self.config()?;
        let policy = setting.to_kernel();
        config.default_mode = policy.mode;
        config.default_steer = policy.steer;
        self.write_config(config)
    }

    fn config(&self) -> Result<KernelConfig> {
        self.config
            .get(&0, 0)
            .map_err(|e| KernelError::during("reading the kernel config map", e))
    }

    /// Writes `config` with the derived fields brought up to date: whether anything is STRICT
    /// (unknowable packets are dropped then) and the ephemeral port range.
    fn write_config(&mut self, mut config: KernelConfig) -> Result<()> {
        let any_port_strict = self
            .ports()?
            .values()
            .any(|s| s.mode == PeerAuthMode::Strict);
        config.strict_anywhere = u8::from(any_port_strict || config.default_mode == mode::STRICT);
        let (low, high) = ephemeral_range();
        config.ephemeral_low = low;
        config.ephemeral_high = high;
        self.config
            .set(0, config, 0)
            .map_err(|e| KernelError::during("writing the kernel config map", e))
    }

    /// Sets one port's policy; takes effect for the next packet.
    pub fn set_port(&mut self, port: u16, setting: PortSetting) -> Result<()> {
        self.ensure_counter_row(port)?;
        self.ports
            .insert(port, setting.to_kernel(), 0)
            .map_err(|e| KernelError::during(format!("setting port {port}"), e))?;
        let config = self.config()?;
        self.write_config(config)
    }

    /// Forgets a port: both programs leave it alone from the next packet on. Its counters stay.
    pub fn remove_port(&mut self, port: u16) -> Result<()> {
        match self.ports.remove(&port) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(KernelError::during(format!("removing port {port}"), e)),
        }
        let config = self.config()?;
        self.write_config(config)
    }

    /// The ports the kernel knows now.
    pub fn ports(&self) -> Result<BTreeMap<u16, PortSetting>> {
        let mut out = BTreeMap::new();
        for entry in self.ports.iter() {
            let (port, policy) =
                entry.map_err(|e| KernelError::during("reading the port map", e))?;
            out.insert(port, PortSetting::from_kernel(policy));
        }
        Ok(out)
    }

    /// Makes the port map equal to `desired`: updates what changed, removes what is gone.
    /// Key [`DEFAULT_PORT`] (0) is the default for every other port; without it there is no
    /// default. Returns the number of settings written or removed.
    pub fn sync_ports(&mut self, desired: &BTreeMap<u16, PortSetting>) -> Result<usize> {
        let current = self.ports()?;
        let mut changed = 0;
        let default = desired
            .get(&DEFAULT_PORT)
            .copied()
            .unwrap_or(PortSetting::NONE);
        if self.default_setting()? != default {
            self.set_default(default)?;
            changed += 1;
        }
        let desired = desired.iter().filter(|(port, _)| **port != DEFAULT_PORT);
        let wanted: BTreeMap<u16, PortSetting> = desired.map(|(p, s)| (*p, *s)).collect();
        let desired = &wanted;
        for (port, setting) in desired {
            if current.get(port) != Some(setting) {
                self.set_port(*port, *setting)?;
                changed += 1;
            }
        }
        for port in current.keys().filter(|p| !desired.contains_key(p)) {
            self.remove_port(*port)?;
            changed += 1;
        }
        Ok(changed)
    }

    /// Puts the terminator's listening socket in the steering SockMap. A `[::]` listener
    /// serves both families; the kernel drops the entry by itself when the socket closes.
    pub fn set_terminator<S: AsRawFd>(&mut self, listener: &S) -> Result<()> {
        self.terminator
            .set(TERMINATOR_SOCKET_INDEX, listener, 0)
            .map_err(|e| KernelError::during("putting the terminator's listener in the SockMap", e))
    }

    /// Reads every counter, summed over CPUs.
    pub fn counters(&self) -> Result<CounterSnapshot> {
        let mut snap = CounterSnapshot::default();
        for (slot, field) in [
            (Counter::Steered, &mut snap.total.steered),
            (Counter::Reset, &mut snap.total.reset),
            (Counter::Passed, &mut snap.total.passed),
            (Counter::Dropped, &mut snap.total.dropped),
        ] {
            let values = self
                .counters
                .get(&(slot as u32), 0)
                .map_err(|e| KernelError::during("reading the counters", e))?;
            *field = values.iter().sum();
        }
        for entry in self.port_counters.iter() {
            let (port, values) =
                entry.map_err(|e| KernelError::during("reading the per-port counters", e))?;
            let mut counts = Counts::default();
            for v in values.iter() {
                counts.steered += v.steered;
                counts.reset += v.reset;
                counts.passed += v.passed;
                counts.dropped += v.dropped;
            }
            snap.per_port.insert(port, counts);
        }
        Ok(snap)
    }

    fn ensure_counter_row(&mut self, port: u16) -> Result<()> {
        if self.port_counters.get(&port, 0).is_ok() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| KernelError::during(format!("counting CPUs ({what})"), e))?;
        let zeros = PerCpuValues::try_from(vec![PortCounters::default(); cpus])
            .map_err(|e| KernelError::during("building per-CPU counters", e))?;
        // BPF_NOEXIST: never zero a row another process just created.
        match self.port_counters.insert(port, zeros, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().contains("File exists") => Ok(()),
            Err(e) => Err(KernelError::during(
                format!("creating counters for port {port}"),
                e,
            )),
        }
    }
}
