//! Outbound capture, the client side of auto mTLS: load, attach to a workload's cgroup, pin,
//! adopt, and the maps the outbound proxy uses.
//!
//! Two programs from `gateway-ebpf/src/capture.rs` run on the workload's cgroup (v2): connect4
//! sends a plaintext `connect()` to a mesh destination to the outbound listener and remembers
//! where it was going; sock_ops re-keys that by the client's source address and port, which the
//! proxy gets from `accept()` as the peer address and hands to
//! [`Capture::original_destination`].
//!
//! Pins share the directory of [`super::loader`]'s inbound path — `maps/` (the capture maps),
//! `progs/capture_*`, and per cgroup `links/capture-connect4-cg<ID>` and
//! `links/capture-sockops-cg<ID>`, ID being the cgroup's inode number — so
//! [`super::loader::uninstall`] removes both halves. The links are pinned: capture survives the
//! daemon, and a new daemon adopts it.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, CgroupSockAddrAttachType, SockOps};
use aya::EbpfLoader;
use gateway_common::{
    CaptureConfig, CaptureCounter, Endpoint4, MAP_CAPTURE_CONFIG, MAP_CAPTURE_COUNTERS,
    MAP_MESH_DESTS, MAP_ORIG_BY_CLIENT, MAP_ORIG_BY_COOKIE, PROG_CAPTURE_CONNECT4,
    PROG_CAPTURE_SOCKOPS,
};

use super::bpffs::{ensure_bpffs, require_root, PinLayout};
use super::error::{KernelError, Result};
use super::loader::{attach_error, load_error, missing_program, remove_pins, Origin};
use super::maps::open_pinned;
use super::EBPF_OBJECT;

/// Maps of the capture, pinned by name under `maps/`.
const CAPTURE_MAPS: [&str; 5] = [
    MAP_MESH_DESTS,
    MAP_CAPTURE_CONFIG,
    MAP_ORIG_BY_COOKIE,
    MAP_ORIG_BY_CLIENT,
    MAP_CAPTURE_COUNTERS,
];
const CAPTURE_PROGS: [&str; 2] = [PROG_CAPTURE_CONNECT4, PROG_CAPTURE_SOCKOPS];
/// Prefix of the capture's link pins.
const LINK_PREFIX: &str = "capture-";

/// `statfs` magics (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// What [`install_capture`] should set up.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// The pin directory (on bpffs, mounted if missing); may be shared with the inbound path.
    pub pin_dir: PathBuf,
    /// The workload's cgroup v2 directory, e.g. `/sys/fs/cgroup/unified/workload`.
    pub cgroup: PathBuf,
    /// The outbound proxy's listener captured connects are sent to, e.g. `127.0.0.1:15001`.
    pub outbound: SocketAddrV4,
}

/// The outbound capture, installed and open: the maps the proxy and the config side use.
pub struct Capture {
    origin: Origin,
    mesh_dests: HashMap<MapData, Endpoint4, u8>,
    config: Array<MapData, CaptureConfig>,
    // A lookup and its delete must not interleave with another accept's; the proxy shares one
    // `Capture` between tasks, so the map sits behind a lock and the methods take `&self`.
    by_client: Mutex<HashMap<MapData, Endpoint4, Endpoint4>>,
    counters: PerCpuArray<MapData, u64>,
}

/// Loads and pins the capture programs unless they are pinned already (then adopts them),
/// attaches both to `opts.cgroup` unless that cgroup's links are pinned, and points capture at
/// `opts.outbound`. The set of mesh destinations is kept (empty on a fresh load): set it with
/// [`Capture::set_destinations`].
pub fn install_capture(opts: &CaptureOptions) -> Result<Capture> {
    let (cgroup, cgroup_id) = open_cgroup(&opts.cgroup)?;
    require_root("load and attach the outbound capture programs")?;
    let pins = PinLayout::new(&opts.pin_dir);
    ensure_bpffs(&pins)?;

    let complete = CAPTURE_PROGS.iter().all(|p| pins.prog(p).exists())
        && CAPTURE_MAPS.iter().all(|m| pins.map(m).exists());
    let origin = if complete {
        Origin::Adopted
    } else {
        // A half-finished capture install: start over. The inbound path's pins stay.
        remove_pins(&pins, owns_pin)?;
        pins.create_dirs()?;
        if let Err(err) = load_and_pin(&pins) {
            let _ = remove_pins(&pins, owns_pin);
            return Err(err);
        }
        Origin::Loaded
    };
    attach(&pins, &cgroup, cgroup_id, &opts.cgroup)?;

    let mut capture = Capture::open_pins(&pins, origin)?;
    capture
        .config
        .set(
            0,
            CaptureConfig {
                outbound: endpoint(opts.outbound),
            },
            0,
        )
        .map_err(|e| KernelError::during("setting the outbound listener address", e))?;
    Ok(capture)
}

/// Opens an installed capture without changing anything (for the proxy and `status`).
pub fn open_capture(pin_dir: &Path) -> Result<Capture> {
    require_root("open the pinned outbound capture maps")?;
    let pins = PinLayout::new(pin_dir);
    if !pins.root().exists() {
        return Err(KernelError::NotInstalled(pin_dir.to_path_buf()));
    }
    Capture::open_pins(&pins, Origin::Adopted)
}

impl Capture {
    fn open_pins(pins: &PinLayout, origin: Origin) -> Result<Self> {
        Ok(Self {
            origin,
            mesh_dests: open_pinned(pins, MAP_MESH_DESTS)?,
            config: open_pinned(pins, MAP_CAPTURE_CONFIG)?,
            by_client: Mutex::new(open_pinned(pins, MAP_ORIG_BY_CLIENT)?),
            counters: open_pinned(pins, MAP_CAPTURE_COUNTERS)?,
        })
    }

    /// Loaded by this call, or adopted from the pins.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Makes the set of captured destinations exactly `dests`: the next `connect()` sees it.
    /// Returns how many entries were added or removed.
    pub fn set_destinations(&mut self, dests: &[SocketAddrV4]) -> Result<usize> {
        let desired: HashSet<Endpoint4> = dests.iter().copied().map(endpoint).collect();
        let current: HashSet<Endpoint4> = self.destination_keys()?;
        let mut changed = 0;
        for dest in desired.difference(&current) {
            self.mesh_dests.insert(dest, 1, 0).map_err(|e| {
                KernelError::during(format!("adding mesh destination {}", socket(*dest)), e)
            })?;
            changed += 1;
        }
        for dest in current.difference(&desired) {
            match self.mesh_dests.remove(dest) {
                Ok(()) | Err(MapError::KeyNotFound) => changed += 1,
                Err(e) => {
                    return Err(KernelError::during(
                        format!("removing mesh destination {}", socket(*dest)),
                        e,
                    ))
                }
            }
        }
        Ok(changed)
    }

    /// The captured destinations, sorted.
    pub fn destinations(&self) -> Result<Vec<SocketAddrV4>> {
        let mut out: Vec<SocketAddrV4> = self.destination_keys()?.into_iter().map(socket).collect();
        out.sort();
        Ok(out)
    }

    /// The outbound listener captured connects go to, if one is set.
    pub fn outbound(&self) -> Result<Option<SocketAddrV4>> {
        let config = self
            .config
            .get(&0, 0)
            .map_err(|e| KernelError::during("reading the outbound listener address", e))?;
        Ok((config.outbound != Endpoint4::default()).then(|| socket(config.outbound)))
    }

    /// The original destination of a captured connection, by the peer address `accept()`
    /// returned for it. The entry is deleted: each connection is answered once. `None` means
    /// the connection was not captured (or its entry was evicted); an IPv4-mapped IPv6 peer
    /// (from a `[::]` listener) is looked up as IPv4.
    pub fn original_destination(&self, client: SocketAddr) -> Result<Option<SocketAddrV4>> {
        let ip = match client {
            SocketAddr::V4(v4) => *v4.ip(),
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(ip) => ip,
                None => return Ok(None),
            },
        };
        let key = endpoint(SocketAddrV4::new(ip, client.port()));
        let action = || format!("looking up the original destination of {client}");
        let mut map = self
            .by_client
            .lock()
            .map_err(|_| KernelError::during(action(), "a thread panicked holding the map"))?;
        let orig = match map.get(&key, 0) {
            Ok(orig) => orig,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(KernelError::during(action(), e)),
        };
        match map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(Some(socket(orig))),
            Err(e) => Err(KernelError::during(action(), e)),
        }
    }

    /// Connects captured so far, summed over CPUs.
    pub fn captured(&self) -> Result<u64> {
        let values = self
            .counters
            .get(&(CaptureCounter::Captured as u32), 0)
            .map_err(|e| KernelError::during("reading the capture counters", e))?;
        Ok(values.iter().sum())
    }

    fn destination_keys(&self) -> Result<HashSet<Endpoint4>> {
        self.mesh_dests
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| KernelError::during("reading the mesh destinations", e))
    }
}

/// Inode numbers (= cgroup ids) of the cgroups with pinned capture links under `pin_dir`.
pub fn attached_cgroups(pin_dir: &Path) -> Vec<u64> {
    let pins = PinLayout::new(pin_dir);
    let mut ids: Vec<u64> = pins
        .pinned_files()
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            name.strip_prefix("capture-connect4-cg")?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// True for the pins that belong to the capture (the inbound path leaves them alone).
pub(super) fn owns_pin(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with(LINK_PREFIX) || CAPTURE_PROGS.contains(&name) || CAPTURE_MAPS.contains(&name)
}

/// Opens the cgroup directory and returns it with its inode number (its cgroup id).
fn open_cgroup(path: &Path) -> Result<(File, u64)> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KernelError::NoSuchCgroup(path.to_path_buf()))
        }
        Err(e) => {
            return Err(KernelError::during(
                format!("reading cgroup {}", path.display()),
                e,
            ))
        }
    };
    let not_v2 = |found| KernelError::NotCgroupV2 {
        path: path.to_path_buf(),
        found,
    };
    if !meta.is_dir() {
        return Err(not_v2("not a directory"));
    }
    match fs_magic(path) {
        Some(CGROUP2_SUPER_MAGIC) => {}
        Some(CGROUP_SUPER_MAGIC) => return Err(not_v2("a cgroup v1 hierarchy")),
        _ => return Err(not_v2("not on a cgroup filesystem")),
    }
    let file = File::open(path)
        .map_err(|e| KernelError::during(format!("opening cgroup {}", path.display()), e))?;
    Ok((file, meta.ino()))
}

fn fs_magic(path: &Path) -> Option<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        (libc::statfs(c_path.as_ptr(), &mut buf) == 0).then_some(buf.f_type as i64)
    }
}

fn load_and_pin(pins: &PinLayout) -> Result<()> {
    let mut loader = EbpfLoader::new();
    for name in CAPTURE_MAPS {
        loader.map_pin_path(name, pins.map(name));
    }
    // The capture programs do not log; keep aya-log's gate shut like a quiet inbound load.
    let level: u8 = 0;
    loader.override_global("AYA_LOG_LEVEL", &level, false);
    // The object also defines the inbound maps; unpinned here, they go away with `ebpf`.
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|e| KernelError::during("loading the eBPF object", e))?;

    let connect4: &mut CgroupSockAddr = ebpf
        .program_mut(PROG_CAPTURE_CONNECT4)
        .ok_or_else(|| missing_program(PROG_CAPTURE_CONNECT4))?
        .try_into()
        .map_err(|e| KernelError::during("opening the capture_connect4 program", e))?;
    connect4
        .load()
        .map_err(|e| load_error(PROG_CAPTURE_CONNECT4, "cgroup connect4 programs", "4.17", e))?;
    connect4
        .pin(pins.prog(PROG_CAPTURE_CONNECT4))
        .map_err(|e| KernelError::during("pinning the capture_connect4 program", e))?;

    let sockops: &mut SockOps = ebpf
        .program_mut(PROG_CAPTURE_SOCKOPS)
        .ok_or_else(|| missing_program(PROG_CAPTURE_SOCKOPS))?
        .try_into()
        .map_err(|e| KernelError::during("opening the capture_sockops program", e))?;
    sockops
        .load()
        .map_err(|e| load_error(PROG_CAPTURE_SOCKOPS, "sock_ops programs", "4.13", e))?;
    sockops
        .pin(pins.prog(PROG_CAPTURE_SOCKOPS))
        .map_err(|e| KernelError::during("pinning the capture_sockops program", e))?;
    Ok(())
}

/// Attaches both programs to the cgroup, each unless its link is pinned already.
fn attach(pins: &PinLayout, cgroup: &File, id: u64, path: &Path) -> Result<()> {
    let at = path.display();
    // A cgroup link never replaces other programs on the cgroup (links always attach as
    // multi); the flags must be 0, which is what `Single` passes.
    let connect4_link = pins
        .links_dir()
        .join(format!("{LINK_PREFIX}connect4-cg{id}"));
    if !connect4_link.exists() {
        let mut prog = CgroupSockAddr::from_pin(
            pins.prog(PROG_CAPTURE_CONNECT4),
            CgroupSockAddrAttachType::Connect4,
        )
        .map_err(|e| KernelError::during("opening the pinned capture_connect4 program", e))?;
        let link_id = prog.attach(cgroup, CgroupAttachMode::Single).map_err(|e| {
            attach_error(
                "cgroup bpf links",
                "5.7",
                &format!("attaching capture_connect4 to cgroup {at}"),
                e,
            )
        })?;
        let link: FdLink = prog
            .take_link(link_id)
            .map_err(|e| KernelError::during("taking the capture_connect4 link", e))?
            .try_into()
            .map_err(|e| {
                KernelError::during("turning the connect4 link into a pinnable link", e)
            })?;
        link.pin(&connect4_link)
            .map_err(|e| KernelError::during(format!("pinning the connect4 link of {at}"), e))?;
    }
    let sockops_link = pins
        .links_dir()
        .join(format!("{LINK_PREFIX}sockops-cg{id}"));
    if !sockops_link.exists() {
        let mut prog = SockOps::from_pin(pins.prog(PROG_CAPTURE_SOCKOPS))
            .map_err(|e| KernelError::during("opening the pinned capture_sockops program", e))?;
        let link_id = prog.attach(cgroup, CgroupAttachMode::Single).map_err(|e| {
            attach_error(
                "cgroup bpf links",
                "5.7",
                &format!("attaching capture_sockops to cgroup {at}"),
                e,
            )
        })?;
        let link: FdLink = prog
            .take_link(link_id)
            .map_err(|e| KernelError::during("taking the capture_sockops link", e))?
            .try_into()
            .map_err(|e| {
                KernelError::during("turning the sock_ops link into a pinnable link", e)
            })?;
        link.pin(&sockops_link)
            .map_err(|e| KernelError::during(format!("pinning the sock_ops link of {at}"), e))?;
    }
    Ok(())
}

fn endpoint(addr: SocketAddrV4) -> Endpoint4 {
    Endpoint4::new(addr.ip().octets(), addr.port())
}

fn socket(e: Endpoint4) -> SocketAddrV4 {
    SocketAddrV4::new(e.octets().into(), e.host_port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_network_order() {
        let e = endpoint("10.231.0.1:80".parse().unwrap());
        assert_eq!(e.ip4.to_ne_bytes(), [10, 231, 0, 1]);
        assert_eq!(e.port.to_ne_bytes(), [0, 80]);
        assert_eq!(socket(e), "10.231.0.1:80".parse().unwrap());
    }

    #[test]
    fn capture_pins_are_told_apart_from_the_inbound_ones() {
        let pins = PinLayout::new("/sys/fs/bpf/portcullis");
        assert!(owns_pin(&pins.map(MAP_MESH_DESTS)));
        assert!(owns_pin(&pins.prog(PROG_CAPTURE_SOCKOPS)));
        assert!(owns_pin(&pins.links_dir().join("capture-connect4-cg42")));
        assert!(!owns_pin(&pins.map("PORTS")));
        assert!(!owns_pin(&pins.prog("steer")));
        assert!(!owns_pin(&pins.steer_link()));
        assert!(!owns_pin(&pins.strict_link("lo")));
    }

    #[test]
    fn a_missing_cgroup_is_named() {
        let err = open_cgroup(Path::new("/sys/fs/cgroup/unified/portcullis-no-such")).unwrap_err();
        assert!(matches!(err, KernelError::NoSuchCgroup(_)), "{err}");
    }

    #[test]
    fn a_directory_off_cgroupfs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_cgroup(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                KernelError::NotCgroupV2 {
                    found: "not on a cgroup filesystem",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_cgroup_v1_hierarchy_is_refused() {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        if fs_magic(v1) != Some(CGROUP_SUPER_MAGIC) {
            eprintln!(
                "no cgroup v1 hierarchy at {} on this host; skipped",
                v1.display()
            );
            return;
        }
        let err = open_cgroup(v1).unwrap_err();
        assert!(
            matches!(
                err,
                KernelError::NotCgroupV2 {
                    found: "a cgroup v1 hierarchy",
                    ..
                }
            ),
            "{err}"
        );
    }
}
