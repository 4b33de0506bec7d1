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

    /// The tc ingress link of one interface.
    pub fn strict_link(&self, iface: &str) -> PathBuf {
        self.links_dir().join(format!("strict-{iface}"))
    }

    /// Interfaces with a pinned tc link, from the link file names.
    pub fn attached_interfaces(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.links_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?.strip_prefix("strict-").map(str::to_owned)
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

/// Makes sure the pin directory's parent is on bpffs, mounting bpffs there when it is not.
pub fn ensure_bpffs(pins: &PinLayout) -> Result<()> {
    let mount_point = pins.root().parent().unwrap_or(Path::new("/")).to_path_buf();
    if is_bpffs(&mount_point) {
        return Ok(());
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

    #[test]
    fn tmp_is_not_bpffs() {
        assert!(!is_bpffs(Path::new("/tmp")));
    }
}
