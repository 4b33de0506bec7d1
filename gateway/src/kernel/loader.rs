//! Load, attach, pin, adopt, uninstall.
//!
//! Everything lives under the pin directory (see [`PinLayout`]): maps, both programs, the
//! sk_lookup link of the network namespace and one TCX ingress link per interface. Because the
//! links are pinned, the kernel keeps enforcing after the daemon dies (even `kill -9`); a new
//! daemon finds the pins and adopts them instead of loading again, and only
//! [`uninstall`] ends enforcement. One pin directory serves one network namespace.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, SkLookup, TcAttachType};
use aya::EbpfLoader;
use gateway_common::{
    MAP_CONFIG, MAP_COUNTERS, MAP_PORTS, MAP_PORT_COUNTERS, MAP_TERMINATOR, PROG_STEER,
    PROG_STRICT, PROG_STRICT_L3,
};
use serde::Serialize;

use super::bpffs::{
    current_netns, describe_netns, ensure_bpffs, force_detach_link, pinned_link_info, require_root,
    PinLayout, LINK_TYPE_NETNS, LINK_TYPE_TCX,
};
use super::error::{KernelError, Result};
use super::maps::{CounterSnapshot, KernelMaps, PortSetting};
use super::EBPF_OBJECT;

/// Maps pinned by name under `maps/`.
const PINNED_MAPS: [&str; 5] = [
    MAP_PORTS,
    MAP_COUNTERS,
    MAP_PORT_COUNTERS,
    MAP_CONFIG,
    MAP_TERMINATOR,
];

/// What [`install`] should set up.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// The pin directory (on bpffs, mounted if missing).
    pub pin_dir: PathBuf,
    /// Interfaces whose tc ingress gets the STRICT classifier (`lo` for local clients).
    /// Empty: every interface of the namespace (see [`super::interfaces`]).
    pub interfaces: Vec<String>,
    /// Enable aya-log lines from the kernel programs (only honoured on a fresh load).
    pub kernel_log: bool,
}

/// Whether [`install`] loaded the programs or found them pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Loaded and pinned by this call.
    Loaded,
    /// Found pinned (a previous daemon, possibly killed) and adopted without reloading.
    Adopted,
}

/// The kernel path, installed and open.
pub struct Installed {
    /// The pin directory.
    pub pins: PinLayout,
    /// Handles on the pinned maps.
    pub maps: KernelMaps,
    /// Loaded now or adopted.
    pub origin: Origin,
    /// Interfaces attached by this call (the others were attached already).
    pub newly_attached: Vec<String>,
}

/// Loads and pins the programs unless they are pinned already (then adopts them), attaches
/// the STRICT classifier to every interface in `opts` that lacks it, and opens the maps.
pub fn install(opts: &InstallOptions) -> Result<Installed> {
    require_root("load and attach eBPF programs")?;
    let pins = PinLayout::new(&opts.pin_dir);
    ensure_bpffs(&pins)?;

    let complete = pins.prog(PROG_STEER).exists()
        && pins.prog(PROG_STRICT).exists()
        && pins.prog(PROG_STRICT_L3).exists()
        && pins.steer_link().exists()
        && PINNED_MAPS.iter().all(|m| pins.map(m).exists());
    // Pins of a namespace that is gone protect nothing: start over. Pins of another live
    // namespace are refused.
    let complete = complete && pins_netns(&pins)? == PinsNetns::Ours;
    let origin = if complete {
        Origin::Adopted
    } else {
        // An outbound capture may share the pin directory: only our own pins are touched.
        let ours = |p: &Path| !super::capture::owns_pin(p);
        if pins.root().exists() {
            // A half-finished install (crash mid-way): start over rather than guess.
            remove_pins(&pins, ours)?;
        }
        pins.create_dirs()?;
        if let Err(err) = load_and_pin(&pins, opts.kernel_log) {
            let _ = remove_pins(&pins, ours);
            return Err(err);
        }
        Origin::Loaded
    };

    let newly_attached = attach_interfaces(&pins, &opts.interfaces, Missing::Refuse)?;
    let maps = KernelMaps::open(&pins)?;
    Ok(Installed {
        pins,
        maps,
        origin,
        newly_attached,
    })
}

/// Opens an existing install without changing anything (for `status` and `set-mode`).
/// Refuses the pins of another network namespace: their maps are that namespace's policy.
pub fn open(pin_dir: &Path) -> Result<KernelMaps> {
    require_root("open the pinned eBPF maps")?;
    let pins = PinLayout::new(pin_dir);
    if !pins.root().exists() {
        return Err(KernelError::NotInstalled(pin_dir.to_path_buf()));
    }
    pins_netns(&pins)?;
    KernelMaps::open(&pins)
}

/// Whose network namespace a pin directory serves, from its sk_lookup link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PinsNetns {
    /// This process's (or no steer link pinned yet).
    Ours,
    /// A namespace that no longer exists: the link is defunct.
    Gone,
}

/// Reads the netns of the pinned steer link and compares it with ours; another live namespace
/// is [`KernelError::ForeignNetns`]. Every pinned program and TCX link of a directory was
/// made by a daemon in the same namespace as its steer link, so this one link decides.
fn pins_netns(pins: &PinLayout) -> Result<PinsNetns> {
    let path = pins.steer_link();
    if !path.exists() {
        return Ok(PinsNetns::Ours);
    }
    let info = pinned_link_info(&path)
        .map_err(|e| KernelError::during(format!("reading pinned link {}", path.display()), e))?;
    if info.kind != LINK_TYPE_NETNS {
        return Err(KernelError::BadPinnedState {
            dir: pins.root().to_path_buf(),
            detail: format!(
                "{} is a link of type {}, not an sk_lookup link",
                path.display(),
                info.kind
            ),
        });
    }
    if info.target == 0 {
        return Ok(PinsNetns::Gone);
    }
    let ours = current_netns()
        .map_err(|e| KernelError::during("reading this process's network namespace", e))?;
    if u64::from(info.target) != ours {
        return Err(KernelError::ForeignNetns {
            dir: pins.root().to_path_buf(),
            pinned: describe_netns(u64::from(info.target)),
            ours: describe_netns(ours),
        });
    }
    Ok(PinsNetns::Ours)
}

fn load_and_pin(pins: &PinLayout, kernel_log: bool) -> Result<()> {
    let mut loader = EbpfLoader::new();
    for name in PINNED_MAPS {
        loader.map_pin_path(name, pins.map(name));
    }
    // aya-log's level gate in the kernel: 0 turns every log line into a no-op.
    let level: u8 = if kernel_log { 5 } else { 0 };
    loader.override_global("AYA_LOG_LEVEL", &level, false);
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|e| KernelError::during("loading the eBPF object", e))?;

    let steer: &mut SkLookup = ebpf
        .program_mut(PROG_STEER)
        .ok_or_else(|| missing_program(PROG_STEER))?
        .try_into()
        .map_err(|e| KernelError::during("opening the steer program", e))?;
    steer
        .load()
        .map_err(|e| load_error(PROG_STEER, "sk_lookup programs", "5.9", e))?;
    steer
        .pin(pins.prog(PROG_STEER))
        .map_err(|e| KernelError::during("pinning the steer program", e))?;
    let netns = File::open("/proc/self/ns/net")
        .map_err(|e| KernelError::during("opening this network namespace", e))?;
    let link_id = steer
        .attach(netns)
        .map_err(|e| attach_error("sk_lookup links", "5.9", "attaching steer to the netns", e))?;
    let link: FdLink = steer
        .take_link(link_id)
        .map_err(|e| KernelError::during("taking the steer link", e))?
        .into();
    link.pin(pins.steer_link())
        .map_err(|e| KernelError::during("pinning the steer link", e))?;

    let strict: &mut SchedClassifier = ebpf
        .program_mut(PROG_STRICT)
        .ok_or_else(|| missing_program(PROG_STRICT))?
        .try_into()
        .map_err(|e| KernelError::during("opening the strict program", e))?;
    strict
        .load()
        .map_err(|e| load_error(PROG_STRICT, "tc classifiers", "4.1", e))?;
    strict
        .pin(pins.prog(PROG_STRICT))
        .map_err(|e| KernelError::during("pinning the strict program", e))?;
    let strict_l3: &mut SchedClassifier = ebpf
        .program_mut(PROG_STRICT_L3)
        .ok_or_else(|| missing_program(PROG_STRICT_L3))?
        .try_into()
        .map_err(|e| KernelError::during("opening the strict_l3 program", e))?;
    strict_l3
        .load()
        .map_err(|e| load_error(PROG_STRICT_L3, "tc classifiers", "4.1", e))?;
    strict_l3
        .pin(pins.prog(PROG_STRICT_L3))
        .map_err(|e| KernelError::during("pinning the strict_l3 program", e))?;
    // Dropping `ebpf` now closes our descriptors; the pins keep everything alive.
    Ok(())
}

/// What [`attach_interfaces`] does with a named interface that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Fail with [`KernelError::NoSuchInterface`] (at start: a typo must not pass silently).
    Refuse,
    /// Skip it (a rescan: it may come back later).
    Skip,
}

/// Attaches the STRICT classifier to each of `named` (every interface of the namespace when
/// empty) that does not run it yet, and returns the names attached now.
///
/// Whether a device is covered is asked of the device itself (`BPF_PROG_QUERY` of its TCX
/// ingress: does it run one of our pinned programs?), not read from pin names: pins are named
/// after the interface they were made for, and interfaces get renamed, swap names, move to
/// another namespace, or are deleted and re-created, none of which a pin name follows. Pins of
/// deleted devices (their link defunct, ifindex 0) are removed; a pin that outlived its name
/// stays (it still holds its device's link) and a new link gets a free name beside it. One
/// interface that cannot be attached does not stop the others: each is tried, failures are
/// logged, and the first is returned after (the watcher tries again a second later).
/// Interfaces that vanish while we look are skipped, unless `--iface` named them at start.
pub fn attach_interfaces(
    pins: &PinLayout,
    named: &[String],
    missing: Missing,
) -> Result<Vec<String>> {
    for iface in pins.attached_interfaces() {
        let path = pins.strict_link(&iface);
        let defunct = matches!(pinned_link_info(&path),
            Ok(info) if info.kind == LINK_TYPE_TCX && info.target == 0);
        if defunct {
            if let Err(e) = unpin_link(&path) {
                tracing::warn!(pin = %path.display(), error = %e, "removing a defunct link's pin failed");
            }
        }
    }
    let ours = strict_program_ids(pins);
    let (interfaces, explicit) = if named.is_empty() {
        (super::interfaces::all()?, false)
    } else {
        (named.to_vec(), true)
    };
    let mut newly_attached = Vec::new();
    let mut first_error = None;
    for iface in &interfaces {
        let ifindex = nix_if_nametoindex(iface);
        if ifindex == 0 {
            if explicit && missing == Missing::Refuse {
                first_error.get_or_insert(KernelError::NoSuchInterface(iface.clone()));
            }
            continue;
        }
        if runs_ours(iface, &ours) {
            continue;
        }
        match attach_strict(pins, iface, ifindex) {
            Ok(()) => newly_attached.push(iface.clone()),
            Err(e) => {
                tracing::error!(iface = %iface, error = %e, "attaching the STRICT check failed");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(newly_attached),
    }
}

/// The kernel ids of our pinned tc programs.
fn strict_program_ids(pins: &PinLayout) -> std::collections::BTreeSet<u32> {
    [PROG_STRICT, PROG_STRICT_L3]
        .into_iter()
        .filter_map(|p| SchedClassifier::from_pin(pins.prog(p)).ok())
        .filter_map(|p| p.info().ok())
        .map(|info| info.id())
        .collect()
}

/// Whether `iface`'s TCX ingress runs one of `ours` now.
fn runs_ours(iface: &str, ours: &std::collections::BTreeSet<u32>) -> bool {
    match SchedClassifier::query_tcx(iface, TcAttachType::Ingress) {
        Ok((_, progs)) => progs.iter().any(|p| ours.contains(&p.id())),
        Err(_) => false,
    }
}

/// The interfaces our pinned links sit on, by the names they have now (a pin keeps the name
/// its interface had when it was made), sorted: only devices of this namespace that run one
/// of our programs (a link whose device is gone or moved away is left out, even if another
/// device took its index).
fn covered_interfaces(pins: &PinLayout) -> Vec<String> {
    let ours = strict_program_ids(pins);
    let mut names: Vec<String> = pins
        .attached_interfaces()
        .into_iter()
        .filter_map(
            |pinned| match pinned_link_info(&pins.strict_link(&pinned)) {
                Ok(info) if info.kind == LINK_TYPE_TCX && info.target != 0 => {
                    if_indextoname(info.target)
                }
                _ => None,
            },
        )
        .filter(|name| runs_ours(name, &ours))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The name an interface has now, if it still exists.
fn if_indextoname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Whether the interface's packets start with an Ethernet header at tc ingress: Ethernet
/// devices (veth, bridges, bonds, VLAN, vxlan/geneve/gretap) and loopback do; `ARPHRD_NONE`
/// (tun, WireGuard) and IP tunnels (ipip, sit, gre, ip6tnl) do not. Asked of this network
/// namespace with `SIOCGIFHWADDR` (sysfs would show the namespace it was mounted in);
/// unanswerable counts as Ethernet, the common case.
fn has_link_header(iface: &str) -> bool {
    const ARPHRD_ETHER: u16 = 1;
    const ARPHRD_LOOPBACK: u16 = 772;
    let bytes = iface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return true;
    }
    // SAFETY: plain socket(2); closed below through OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return true;
    }
    // SAFETY: a descriptor socket(2) just returned, owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: a zeroed ifreq is valid; the name is copied in below, NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq it is given.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFHWADDR,
            &mut req,
        )
    };
    if rc != 0 {
        return true;
    }
    // SAFETY: on success the union holds the hardware address, whose family is the ARPHRD type.
    let family = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    matches!(family, ARPHRD_ETHER | ARPHRD_LOOPBACK)
}

/// Detaches (when still attached) and unpins one link.
fn unpin_link(path: &Path) -> Result<()> {
    let _ = force_detach_link(path);
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(KernelError::during(
            format!("removing stale pin {}", path.display()),
            e,
        )),
    }
}

fn attach_strict(pins: &PinLayout, iface: &str, ifindex: u32) -> Result<()> {
    // Devices without an Ethernet header (tun, WireGuard, IP tunnels) get the layer-3 variant.
    let program = if has_link_header(iface) {
        PROG_STRICT
    } else {
        PROG_STRICT_L3
    };
    let mut prog = SchedClassifier::from_pin(pins.prog(program))
        .map_err(|e| KernelError::during(format!("opening the pinned {program} program"), e))?;
    // TCX (Linux 6.6+) gives a link we can pin; a legacy netlink filter could not be adopted.
    let link_id = prog
        .attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| {
            attach_error(
                "tcx links",
                "6.6",
                &format!("attaching strict to {iface} ingress"),
                e,
            )
        })?;
    let link: FdLink = prog
        .take_link(link_id)
        .map_err(|e| KernelError::during("taking the strict link", e))?
        .try_into()
        .map_err(|e| KernelError::during("turning the strict link into a pinnable link", e))?;
    // The name's own pin may still hold a renamed device's link: then pin beside it.
    let mut path = pins.strict_link(iface);
    if path.exists() {
        path = pins.strict_link(&format!("{iface}@{ifindex}"));
        if path.exists() {
            // Not ours to keep: this device does not run it (else it counted as covered).
            unpin_link(&path)?;
        }
    }
    link.pin(&path)
        .map_err(|e| KernelError::during(format!("pinning the strict link of {iface}"), e))?;
    Ok(())
}

fn nix_if_nametoindex(iface: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return 0;
    };
    // SAFETY: NUL-terminated name; the call only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

pub(super) fn missing_program(name: &str) -> KernelError {
    KernelError::Other {
        action: "finding the kernel programs".into(),
        detail: format!("program `{name}` is missing from the embedded eBPF object"),
    }
}

pub(super) fn load_error(
    program: &'static str,
    feature: &'static str,
    needs: &'static str,
    err: ProgramError,
) -> KernelError {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            match io_error.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) if log.trim().is_empty() => {
                    KernelError::NotRoot {
                        action: format!("load the {program} program"),
                    }
                }
                // An unknown program type is refused before the verifier writes a word.
                Some(libc::EINVAL) if log.trim().is_empty() => KernelError::KernelLacksFeature {
                    feature,
                    needs,
                    detail: io_error.to_string(),
                },
                _ => KernelError::VerifierRejected {
                    program,
                    detail: format!("{io_error}\n{log}"),
                },
            }
        }
        other => KernelError::during(format!("loading the {program} program"), other),
    }
}

pub(super) fn attach_error(
    feature: &'static str,
    needs: &'static str,
    action: &str,
    err: ProgramError,
) -> KernelError {
    let io = match &err {
        ProgramError::SyscallError(e) => Some(&e.io_error),
        _ => None,
    };
    match io.and_then(io::Error::raw_os_error) {
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => KernelError::KernelLacksFeature {
            feature,
            needs,
            detail: err.to_string(),
        },
        _ => KernelError::during(action, err),
    }
}

/// What [`uninstall`] removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UninstallReport {
    /// Links detached (and unpinned).
    pub detached: Vec<PathBuf>,
    /// Every pin removed, links included.
    pub removed: Vec<PathBuf>,
}

/// Detaches every link, then removes every pin and the pin directory. Idempotent. This also
/// removes an outbound capture pinned in the same directory. Pins that serve another live
/// network namespace are refused unless `force`: run from the wrong namespace, an uninstall
/// would silently end that namespace's STRICT.
pub fn uninstall(pin_dir: &Path, force: bool) -> Result<UninstallReport> {
    require_root("uninstall the eBPF programs")?;
    let pins = PinLayout::new(pin_dir);
    if !pin_dir.exists() {
        return Ok(UninstallReport::default());
    }
    if !force {
        pins_netns(&pins).map_err(|e| match e {
            KernelError::ForeignNetns { dir, pinned, ours } => {
                KernelError::UninstallForeignNetns { dir, pinned, ours }
            }
            other => other,
        })?;
    }
    let report = remove_pins(&pins, |_| true)?;
    if pin_dir.exists() {
        return Err(KernelError::during(
            format!("removing {}", pin_dir.display()),
            "the directory holds files that are not Portcullis pins",
        ));
    }
    Ok(report)
}

/// Detaches and unpins the pinned files that `select` picks (links first, so enforcement stops
/// before the programs and maps they use disappear), then removes the directories left empty.
pub(super) fn remove_pins(
    pins: &PinLayout,
    select: impl Fn(&Path) -> bool,
) -> Result<UninstallReport> {
    let mut report = UninstallReport::default();
    for path in pins.pinned_files().into_iter().filter(|p| select(p)) {
        if path.starts_with(pins.links_dir()) {
            // ENOLINK/EINVAL mean the link is already defunct (its netns, device or cgroup is
            // gone).
            if force_detach_link(&path).is_ok() {
                report.detached.push(path.clone());
            }
        }
        std::fs::remove_file(&path)
            .map_err(|e| KernelError::during(format!("removing pin {}", path.display()), e))?;
        report.removed.push(path);
    }
    let root = pins.root().to_path_buf();
    for dir in [pins.links_dir(), pins.progs_dir(), pins.maps_dir(), root] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            // Kept: pins that were not selected live there.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                ) => {}
            Err(e) => {
                return Err(KernelError::during(
                    format!("removing {}", dir.display()),
                    e,
                ))
            }
        }
    }
    Ok(report)
}

/// What is installed under a pin directory.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The pin directory.
    pub pin_dir: PathBuf,
    /// Whether the sk_lookup link is pinned.
    pub steer_attached: bool,
    /// Interfaces with the STRICT classifier pinned on their ingress.
    pub interfaces: Vec<String>,
    /// The mode of ports without an entry of their own.
    pub default: PortSetting,
    /// Port policy in the kernel now: the exceptions to `default`.
    pub ports: std::collections::BTreeMap<u16, PortSetting>,
    /// Counters, summed over CPUs.
    pub counters: CounterSnapshot,
    /// Kernel ids of the pinned programs: unchanged across a daemon restart (adoption),
    /// new after a fresh load.
    pub program_ids: std::collections::BTreeMap<&'static str, u32>,
    /// Every pinned file.
    pub pins: Vec<PathBuf>,
}

/// Reads the state of an install.
pub fn status(pin_dir: &Path) -> Result<Status> {
    let maps = open(pin_dir)?;
    let pins = PinLayout::new(pin_dir);
    Ok(Status {
        pin_dir: pin_dir.to_path_buf(),
        steer_attached: pins.steer_link().exists(),
        interfaces: covered_interfaces(&pins),
        default: maps.default_setting()?,
        ports: maps.ports()?,
        counters: maps.counters()?,
        program_ids: program_ids(&pins),
        pins: pins.pinned_files(),
    })
}

pub(super) fn program_ids(pins: &PinLayout) -> std::collections::BTreeMap<&'static str, u32> {
    let mut ids = std::collections::BTreeMap::new();
    if let Ok(info) = SkLookup::from_pin(pins.prog(PROG_STEER)).and_then(|p| p.info()) {
        ids.insert(PROG_STEER, info.id());
    }
    for prog in [PROG_STRICT, PROG_STRICT_L3] {
        if let Ok(info) = SchedClassifier::from_pin(pins.prog(prog)).and_then(|p| p.info()) {
            ids.insert(prog, info.id());
        }
    }
    ids
}
