//! Which interfaces get the STRICT classifier when none are named: every interface of this
//! network namespace (loopback included, for local clients), so that the check is on without
//! being asked for (fail closed). `--iface` narrows it.
//! [`spawn_watcher`] keeps it so while the daemon runs, as interfaces come and go.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::bpffs::PinLayout;
use super::error::{KernelError, Result};
use super::loader::{attach_interfaces, Missing};

/// Names of every interface of this network namespace, sorted — with an address or not: a
/// packet can arrive on an interface that has none (a host-side veth with only a route, as
/// container networking makes them, a bridge port, a tunnel) and Linux still delivers it to a
/// local address held by another interface.
pub fn all() -> Result<Vec<String>> {
    // SAFETY: if_nameindex returns an array ending in a zero entry, freed below.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(KernelError::during(
            "listing this namespace's interfaces",
            std::io::Error::last_os_error(),
        ));
    }
    let mut names = BTreeSet::new();
    let mut cur = head;
    loop {
        // SAFETY: `cur` is within the array, which ends with an entry of index 0.
        let entry = unsafe { &*cur };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        // SAFETY: NUL-terminated name owned by the array.
        let name = unsafe { CStr::from_ptr(entry.if_name) };
        match name.to_str() {
            Ok(name) => {
                names.insert(name.to_owned());
            }
            // Linux allows any bytes but '/' and whitespace; the attach API takes UTF-8. Said
            // once per process, not on every rescan.
            Err(_) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::error!(
                        ifindex = entry.if_index,
                        name = %name.to_string_lossy(),
                        "an interface whose name is not UTF-8 cannot get the STRICT check; rename it"
                    );
                });
            }
        }
        // SAFETY: not past the terminating entry (checked above).
        cur = unsafe { cur.add(1) };
    }
    // SAFETY: the array if_nameindex returned, freed once.
    unsafe { libc::if_freenameindex(head) };
    Ok(names.into_iter().collect())
}

/// Keeps the STRICT classifier on every interface it should cover while the daemon runs.
///
/// At start the daemon attaches to the interfaces present then; an interface added later
/// (a new veth, a VPN device) or deleted and re-created under the same name (a NIC bounce,
/// which leaves the pinned link defunct) would otherwise carry plaintext unjudged. This
/// thread listens for the namespace's rtnetlink link and address notifications and rescans
/// on each one, and at least once a second in case a notification was lost (the socket's
/// buffer overflowed) or the socket could not be opened. `named` narrows it as `--iface` does.
///
/// The window that remains: from the moment a new interface can deliver packets until the
/// rescan has attached (the notification's round trip, milliseconds; up to a second when
/// notifications are lost), and, with the daemon dead, until it is started again. Steering
/// (`sk_lookup`) is per namespace and covers every interface from the first packet.
pub fn spawn_watcher(pins: PinLayout, named: Vec<String>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("iface-watch".into())
        .spawn(move || watch(&pins, &named))
        .map(drop)
}

fn watch(pins: &PinLayout, named: &[String]) {
    let notifications = LinkNotifications::open()
        .map_err(|e| tracing::warn!(error = %e, "no rtnetlink notifications; rescanning interfaces every second"))
        .ok();
    let mut last_error = None;
    loop {
        match notifications.as_ref() {
            Some(n) => n.wait(std::time::Duration::from_secs(1)),
            None => std::thread::sleep(std::time::Duration::from_secs(1)),
        }
        match attach_interfaces(pins, named, Missing::Skip) {
            Ok(attached) => {
                if !attached.is_empty() {
                    tracing::info!(?attached, "tc ingress attached to new interfaces");
                }
                last_error = None;
            }
            Err(e) => {
                // Once per distinct error: it repeats every second until fixed.
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::error!(error = %text, "attaching to new interfaces failed");
                    last_error = Some(text);
                }
            }
        }
    }
}

/// An rtnetlink socket subscribed to link and address changes of this network namespace.
struct LinkNotifications(OwnedFd);

impl LinkNotifications {
    fn open() -> std::io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor socket(2) just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_nl is valid; the fields are set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups =
            (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        // SAFETY: addr is a sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    /// Returns when a notification arrived (all pending ones are drained) or `timeout`
    /// passed. What changed does not matter: the rescan looks at everything.
    fn wait(&self, timeout: std::time::Duration) {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: recv into our buffer; non-blocking, so it ends when drained (or on
            // ENOBUFS after an overflow, which the rescan makes up for).
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_listed() {
        let names = super::all().unwrap_or_default();
        assert!(names.iter().any(|n| n == "lo"), "{names:?}");
    }
}
