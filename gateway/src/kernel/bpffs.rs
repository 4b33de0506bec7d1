//! The pin directory on bpffs: its layout, mounting bpffs when missing, and the raw `bpf()`
//! calls aya does not expose (forced link detach).

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::{KernelError, Result};

/// Default pin directory, one per network namespace the daemon manages.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portcullis";

/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where each pinned object lives under the pin directory.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The pin directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of pinned maps.
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    /// A pinned map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Directory of pinned programs.
    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }

    /// A pinned program.
    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    /// Directory of pinned links.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The sk_lookup link of the network namespace.
    pub fn steer_link(&self) -> PathBuf {
        self.links_dir().join("steer-netns")
    }

    /// The tc ingress link of one interface. bpffs refuses names with a `.`, which interface
    /// names may have (`eth0.100`, a VLAN): it is written `%2E` (and `%` as `%25`).
    pub fn strict_link(&self, iface: &str) -> PathBuf {
        let encoded = iface.replace('%', "%25").replace('.', "%2E");
        self.links_dir().join(format!("strict-{encoded}"))
    }

    /// Interfaces with a pinned tc link, from the link file names.
    pub fn attached_interfaces(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.links_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let encoded = name.to_str()?.strip_prefix("strict-")?;
                Some(encoded.replace("%2E", ".").replace("%25", "%"))
            })
            .collect();
        out.sort();
        out
    }

    /// Every pinned file, for status and uninstall.
    pub fn pinned_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in [self.links_dir(), self.progs_dir(), self.maps_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            out.extend(files);
        }
        out
    }

    /// Creates the directories (the parent must be on bpffs).
    pub fn create_dirs(&self) -> Result<()> {
        for dir in [self.maps_dir(), self.progs_dir(), self.links_dir()] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| KernelError::during(format!("creating {}", dir.display()), e))?;
        }
        Ok(())
    }
}

/// Fails with [`KernelError::NotRoot`] unless the effective uid is 0.
pub fn require_root(action: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(KernelError::NotRoot {
            action: action.to_owned(),
        });
    }
    Ok(())
}

/// True when `path` is on a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Makes sure the pin directory's parent is on bpffs, mounting bpffs there when it is not —
/// but only where the mount outlives this process.
///
/// Pins are what keep STRICT enforced after the daemon dies, and a pin lives as long as its
/// bpffs is mounted somewhere. A bpffs mounted in the host's (PID 1's) mount namespace stays;
/// one mounted in a mount namespace of our own (`ip netns exec` makes one and remounts /sys,
/// hiding the host's /sys/fs/bpf) is torn down with the namespace when its last process
/// exits, and the pinned links detach with it: `kill -9` would fail open. So outside PID 1's
/// mount namespace we mount only where the new mount propagates to PID 1's namespace (the
/// parent mount is `shared:N` and PID 1 has a mount of that peer group); otherwise the start is
/// refused with [`KernelError::PinsWouldNotOutlive`]. A bpffs that is already mounted is used
/// only when it outlives us too: in PID 1's namespace, or the same bpffs instance (its device
/// number) is mounted there — `ip netns exec X sh -c 'mount -t bpf bpf /sys/fs/bpf; portcullis …'`
/// makes one that dies with the namespace.
pub fn ensure_bpffs(pins: &PinLayout) -> Result<()> {
    let mount_point = pins.root().parent().unwrap_or(Path::new("/")).to_path_buf();
    if is_bpffs(&mount_point) {
        if !same_mount_namespace_as_init() && !existing_mount_outlives_us(&mount_point) {
            return Err(KernelError::PinsWouldNotOutlive { dir: mount_point });
        }
        return Ok(());
    }
    if !mounts_outlive_us(&mount_point) {
        return Err(KernelError::PinsWouldNotOutlive { dir: mount_point });
    }
    let fail = |source: io::Error| KernelError::NoBpffs {
        dir: mount_point.clone(),
        source,
    };
    std::fs::create_dir_all(&mount_point).map_err(fail)?;
    let target = CString::new(mount_point.as_os_str().as_bytes())
        .map_err(|e| fail(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether a filesystem mounted at `mount_point` now would stay mounted after this process
/// (and every process of its mount namespace) exits: true in PID 1's mount namespace, or when
/// the mount propagates there. Unreadable namespace links count as "no" (fail closed).
fn mounts_outlive_us(mount_point: &Path) -> bool {
    if same_mount_namespace_as_init() {
        return true;
    }
    let (Ok(ours), Ok(init)) = (
        std::fs::read_to_string("/proc/self/mountinfo"),
        std::fs::read_to_string("/proc/1/mountinfo"),
    ) else {
        return false;
    };
    propagates_to(&ours, &init, mount_point)
}

/// Whether this process shares PID 1's mount namespace (unreadable links count as "no").
fn same_mount_namespace_as_init() -> bool {
    let ns_ino = |pid: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    matches!((ns_ino("self"), ns_ino("1")), (Some(ours), Some(init)) if ours == init)
}

/// Whether the bpffs mounted at `mount_point` here is an instance PID 1's namespace also has
/// mounted (same device number), so it stays when our namespace goes.
fn existing_mount_outlives_us(mount_point: &Path) -> bool {
    let (Ok(ours), Ok(init)) = (
        std::fs::read_to_string("/proc/self/mountinfo"),
        std::fs::read_to_string("/proc/1/mountinfo"),
    ) else {
        return false;
    };
    same_instance_in(&ours, &init, mount_point)
}

/// Whether the mount covering `mount_point` in `ours` has its device (`MAJ:MIN`) mounted in
/// `init` too.
fn same_instance_in(ours: &str, init: &str, mount_point: &Path) -> bool {
    let Some(dev) = covering_mount(ours, mount_point).map(|m| m.dev) else {
        return false;
    };
    init.lines()
        .filter_map(MountInfo::parse)
        .any(|m| m.dev == dev)
}

/// The deepest mount covering `path` in a mountinfo (the last of equal depth, since mountinfo
/// lists mounts in the order they stack).
fn covering_mount<'a>(mountinfo: &'a str, path: &Path) -> Option<MountInfo<'a>> {
    mountinfo
        .lines()
        .filter_map(MountInfo::parse)
        .filter(|m| path.starts_with(&m.mount_point))
        .fold(None::<MountInfo<'_>>, |best, m| match best {
            Some(b) if b.mount_point.components().count() > m.mount_point.components().count() => {
                Some(b)
            }
            _ => Some(m),
        })
}

/// Whether a mount made at `mount_point` in the namespace described by `ours` (a
/// `/proc/PID/mountinfo`) is propagated into the one described by `init`: the mount it lands
/// on is a member of a shared peer group that also has a member there.
fn propagates_to(ours: &str, init: &str, mount_point: &Path) -> bool {
    // The mount a new mount at `mount_point` lands on.
    let Some(group) = covering_mount(ours, mount_point).and_then(|m| m.shared) else {
        return false;
    };
    init.lines()
        .filter_map(MountInfo::parse)
        .any(|m| m.shared == Some(group))
}

/// The fields of one `/proc/PID/mountinfo` line that matter here.
struct MountInfo<'a> {
    /// `MAJ:MIN`: the filesystem instance (each `mount -t bpf` makes a new one).
    dev: &'a str,
    mount_point: PathBuf,
    /// The `shared:N` peer group, when the mount propagates to its peers.
    shared: Option<&'a str>,
}

impl<'a> MountInfo<'a> {
    /// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`
    /// (proc(5)); the mount point has spaces and the like escaped as `\ooo`.
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let mount_point = fields.nth(1)?;
        let shared = fields
            .skip(1)
            .take_while(|f| *f != "-")
            .find_map(|f| f.strip_prefix("shared:"));
        Some(Self {
            dev,
            mount_point: PathBuf::from(unescape_octal(mount_point)),
            shared,
        })
    }
}

/// Undoes mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `BPF_OBJ_GET`: opens a pinned object.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32), ...
    let mut attr = [0u64; 4];
    attr[0] = c_path.as_ptr() as u64;
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix; the path outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            7, // BPF_OBJ_GET
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says about a pinned link (`BPF_OBJ_GET_INFO_BY_FD`), the parts we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinnedLinkInfo {
    /// `enum bpf_link_type`.
    pub kind: u32,
    /// The first word of the type-specific part: `netns_ino` of a netns link (sk_lookup),
    /// `ifindex` of a TCX link; 0 once the namespace or device is gone (defunct link).
    pub target: u32,
}

/// `BPF_LINK_TYPE_NETNS`: an sk_lookup (or flow dissector) link on a network namespace.
pub const LINK_TYPE_NETNS: u32 = 5;
/// `BPF_LINK_TYPE_TCX`: a tc ingress/egress link on a device.
pub const LINK_TYPE_TCX: u32 = 11;

/// Reads the kernel's information on the link pinned at `path`.
pub fn pinned_link_info(path: &Path) -> io::Result<PinnedLinkInfo> {
    use std::os::fd::AsRawFd;
    let fd = obj_get(path)?;
    // struct bpf_link_info: type, id, prog_id (u32 each), then a union aligned to 8 whose
    // first member is a u32 for the link types we read (netns.netns_ino, tcx.ifindex). The
    // buffer is larger than the kernel's struct; the kernel wants the tail zero and fills the
    // rest.
    let mut info = [0u64; 32];
    // union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: bpf_fd (u32), info_len (u32), info (u64).
    let mut attr = [0u64; 2];
    attr[0] = (fd.as_raw_fd() as u32 as u64) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix; the kernel writes at most
    // info_len bytes into `info`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            15, // BPF_OBJ_GET_INFO_BY_FD
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PinnedLinkInfo {
        kind: info[0] as u32,
        target: info[2] as u32,
    })
}

/// The inode of this process's network namespace (what a netns link reports as `netns_ino`).
pub fn current_netns() -> io::Result<u64> {
    std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// A network namespace for an operator: `net:[INODE]`, with its `ip netns` name when
/// /run/netns has one.
pub fn describe_netns(ino: u64) -> String {
    let name = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| {
            std::fs::metadata(e.path())
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ino)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned());
    match name {
        Some(name) => format!("net:[{ino}] (`ip netns` {name})"),
        None => format!("net:[{ino}]"),
    }
}

/// Detaches the pinned link at `path` now (`BPF_LINK_DETACH`), even if some other process still
/// holds a descriptor to it, so that removing the pin really ends its effect.
pub fn force_detach_link(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = obj_get(path)?;
    // union bpf_attr for BPF_LINK_DETACH: link_fd (u32).
    let mut attr = [0u64; 2];
    attr[0] = fd.as_raw_fd() as u64;
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            34, // BPF_LINK_DETACH
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_with_dots_get_pins_bpffs_accepts() {
        let pins = PinLayout::new("/sys/fs/bpf/portcullis");
        let path = pins.strict_link("eth0.100");
        assert_eq!(
            path,
            PathBuf::from("/sys/fs/bpf/portcullis/links/strict-eth0%2E100")
        );
        assert!(!path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(".")
            .contains('.'));
        assert_eq!(
            pins.strict_link("a%2E"),
            PathBuf::from("/sys/fs/bpf/portcullis/links/strict-a%252E")
        );
    }

    #[test]
    fn layout_names_one_link_per_interface() {
        let pins = PinLayout::new("/sys/fs/bpf/portcullis");
        assert_eq!(
            pins.strict_link("lo"),
            PathBuf::from("/sys/fs/bpf/portcullis/links/strict-lo")
        );
        assert_eq!(
            pins.map("PORTS"),
            PathBuf::from("/sys/fs/bpf/portcullis/maps/PORTS")
        );
    }

    const HOST: &str = "\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 27 0:22 / /sys rw,relatime shared:7 - sysfs sysfs rw
42 23 0:39 / /sys/fs/bpf rw,relatime shared:12 - bpf bpf rw
";

    #[test]
    fn a_mount_on_a_private_sys_does_not_reach_the_host() {
        // `ip netns exec`: / made a slave of the host's, /sys a fresh private sysfs.
        let private = "\
113 111 254:0 / / rw,relatime master:1 - ext4 /dev/vda rw
121 113 0:42 / /sys rw,relatime - sysfs ns1 rw
";
        assert!(!propagates_to(private, HOST, Path::new("/sys/fs/bpf")));
        // Slave of the host: mounts flow in, not out.
        let slave = "113 111 254:0 / / rw,relatime master:1 - ext4 /dev/vda rw\n";
        assert!(!propagates_to(slave, HOST, Path::new("/sys/fs/bpf")));
    }

    #[test]
    fn a_mount_on_a_peer_of_the_hosts_sys_reaches_it() {
        let shared = "\
113 111 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
121 113 0:22 / /sys rw,relatime shared:7 - sysfs sysfs rw
";
        assert!(propagates_to(shared, HOST, Path::new("/sys/fs/bpf")));
        // The deepest covering mount decides, not `/`.
        let private_sys = "\
113 111 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
121 113 0:42 / /sys rw,relatime - sysfs ns1 rw
";
        assert!(!propagates_to(private_sys, HOST, Path::new("/sys/fs/bpf")));
    }

    #[test]
    fn a_bpffs_mounted_only_in_a_private_namespace_dies_with_it() {
        // `ip netns exec X sh -c 'mount -t bpf bpf /sys/fs/bpf; portcullis …'`: a new instance
        // (0:51) that PID 1's namespace never sees.
        let own_instance = "\
113 111 254:0 / / rw,relatime master:1 - ext4 /dev/vda rw
121 113 0:42 / /sys rw,relatime - sysfs ns1 rw
130 121 0:51 / /sys/fs/bpf rw,relatime - bpf bpf rw
";
        assert!(!same_instance_in(
            own_instance,
            HOST,
            Path::new("/sys/fs/bpf")
        ));
        // The host's instance (0:39) bind-mounted in: it stays when the namespace goes.
        let hosts_instance = "\
113 111 254:0 / / rw,relatime master:1 - ext4 /dev/vda rw
121 113 0:42 / /sys rw,relatime - sysfs ns1 rw
130 121 0:39 / /sys/fs/bpf rw,relatime master:12 - bpf bpf rw
";
        assert!(same_instance_in(
            hosts_instance,
            HOST,
            Path::new("/sys/fs/bpf")
        ));
        assert!(!same_instance_in("", HOST, Path::new("/sys/fs/bpf")));
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/plain\\"), "/plain\\");
    }

    #[test]
    fn tmp_is_not_bpffs() {
        assert!(!is_bpffs(Path::new("/tmp")));
    }
}
