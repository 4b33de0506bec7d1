//! What can go wrong on the kernel path, in words an operator can act on.

use std::io;
use std::path::PathBuf;

/// Errors of the kernel path. Every variant names what was attempted; none is a bare errno.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Loading eBPF programs needs root (or CAP_BPF + CAP_NET_ADMIN).
    #[error("the kernel path needs root (or CAP_BPF and CAP_NET_ADMIN) to {action}")]
    NotRoot {
        /// What was being attempted.
        action: String,
    },

    /// No bpffs where the pins live, and mounting one failed.
    #[error(
        "{dir} is not on a BPF filesystem and mounting one failed ({source}); \
         mount it with `mount -t bpf bpf /sys/fs/bpf`"
    )]
    NoBpffs {
        /// The directory that must be on bpffs.
        dir: PathBuf,
        /// Why the mount failed.
        source: io::Error,
    },

    /// No bpffs where the pins live that outlives this process (none, or one mounted only in
    /// this process's own mount namespace).
    #[error(
        "{dir} is not on a BPF filesystem that outlives this process, which runs in a mount \
         namespace of its own (as under `ip netns exec`, which remounts /sys and hides the \
         host's /sys/fs/bpf): a bpffs mounted only here would be torn down when the daemon exits, and the pinned programs with it, \
         so a crash or kill -9 would leave the ports unprotected. Refusing to start. Run the \
         daemon with `nsenter --net=/run/netns/NAME` instead of `ip netns exec NAME` (only the \
         network namespace changes, the host's /sys/fs/bpf stays), make {dir} a bpffs that \
         outlives the daemon (mounted in the host's mount namespace, or shared with it by mount \
         propagation), or give --pin-dir on such a bpffs"
    )]
    PinsWouldNotOutlive {
        /// Where bpffs would have to be mounted.
        dir: PathBuf,
    },

    /// The running kernel lacks something the programs need.
    #[error("this kernel does not support {feature} (needs Linux {needs} or newer): {detail}")]
    KernelLacksFeature {
        /// The missing feature, e.g. "sk_lookup programs".
        feature: &'static str,
        /// The first kernel version that has it.
        needs: &'static str,
        /// What the kernel said.
        detail: String,
    },

    /// The verifier rejected a program.
    #[error("the kernel verifier rejected program `{program}`: {detail}")]
    VerifierRejected {
        /// Program name.
        program: &'static str,
        /// The error and the verifier log.
        detail: String,
    },

    /// A named network interface does not exist in this network namespace.
    #[error("no network interface named `{0}` in this network namespace")]
    NoSuchInterface(String),

    /// The cgroup directory for outbound capture does not exist.
    #[error("no cgroup directory {0} (create it under the cgroup v2 mount, e.g. /sys/fs/cgroup/unified/NAME)")]
    NoSuchCgroup(PathBuf),

    /// The path exists but is not a cgroup v2 directory (a cgroup v1 hierarchy, or no cgroup).
    #[error("{path} is not a cgroup v2 directory ({found}); outbound capture needs the unified hierarchy, e.g. /sys/fs/cgroup/unified/NAME")]
    NotCgroupV2 {
        /// The path given.
        path: PathBuf,
        /// What it is instead, e.g. "a cgroup v1 hierarchy".
        found: &'static str,
    },

    /// `uninstall` run from another network namespace than the one the pins serve.
    #[error(
        "the programs pinned under {dir} serve network namespace {pinned}, but this process runs \
         in {ours}: removing them would end STRICT there. Run the uninstall in that namespace \
         (nsenter --net=...), or add --force to remove them from here"
    )]
    UninstallForeignNetns {
        /// The pin directory.
        dir: PathBuf,
        /// The namespace the pinned links belong to.
        pinned: String,
        /// This process's namespace.
        ours: String,
    },

    /// Nothing is installed under the pin directory.
    #[error("nothing is installed under {0} (run `portcullis kernel attach` first)")]
    NotInstalled(PathBuf),

    /// The pin directory holds the programs of another network namespace.
    #[error(
        "the programs pinned under {dir} are attached to network namespace {pinned}, but this \
         process runs in {ours}: one pin directory serves one network namespace, and adopting \
         these would leave this namespace without steering. Give each namespace its own \
         --pin-dir (e.g. /sys/fs/bpf/portcullis-NAME)"
    )]
    ForeignNetns {
        /// The pin directory.
        dir: PathBuf,
        /// The namespace the pinned links belong to.
        pinned: String,
        /// This process's namespace.
        ours: String,
    },

    /// The pinned state is incomplete or of another version.
    #[error("the pinned state under {dir} is unusable: {detail}; run `portcullis kernel uninstall` and attach again")]
    BadPinnedState {
        /// The pin directory.
        dir: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// Any other failure of a bpf() call or a file operation, with what was being done.
    #[error("{action}: {detail}")]
    Other {
        /// What was being attempted.
        action: String,
        /// The underlying error.
        detail: String,
    },
}

impl KernelError {
    /// Wraps a lower-level error, turning EPERM into [`KernelError::NotRoot`].
    pub(crate) fn during(action: impl Into<String>, err: impl std::fmt::Display) -> Self {
        let action = action.into();
        let detail = err.to_string();
        if is_permission_error(&detail) {
            return Self::NotRoot { action };
        }
        Self::Other { action, detail }
    }
}

/// aya folds the errno into its messages; EPERM and EACCES both mean missing privileges here.
fn is_permission_error(detail: &str) -> bool {
    detail.contains("Operation not permitted") || detail.contains("os error 1)")
}

/// Convenience alias.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
