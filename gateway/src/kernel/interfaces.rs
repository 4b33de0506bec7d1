//! Which interfaces get the STRICT classifier when none are named: every interface of this
//! network namespace that carries an address (loopback included, for local clients), so that
//! the check is on without being asked for (fail closed). `--iface` narrows it.

use std::collections::BTreeSet;
use std::ffi::CStr;

use super::error::{KernelError, Result};

/// Names of the interfaces that hold at least one IPv4 or IPv6 address, sorted.
pub fn with_addresses() -> Result<Vec<String>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(KernelError::during(
            "listing this namespace's interface addresses",
            std::io::Error::last_os_error(),
        ));
    }
    let mut names = BTreeSet::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let entry = unsafe { &*cur };
        let family = if entry.ifa_addr.is_null() {
            None
        } else {
            // SAFETY: non-null sockaddr from getifaddrs.
            Some(i32::from(unsafe { (*entry.ifa_addr).sa_family }))
        };
        if matches!(family, Some(libc::AF_INET) | Some(libc::AF_INET6)) && !entry.ifa_name.is_null()
        {
            // SAFETY: NUL-terminated interface name owned by the list.
            let name = unsafe { CStr::from_ptr(entry.ifa_name) };
            names.insert(name.to_string_lossy().into_owned());
        }
        cur = entry.ifa_next;
    }
    // SAFETY: the head getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_an_address() {
        let names = super::with_addresses().unwrap_or_default();
        assert!(names.iter().any(|n| n == "lo"), "{names:?}");
    }
}
