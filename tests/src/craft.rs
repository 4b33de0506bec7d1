//! A packet crafter for the adversarial kernel tests: raw Ethernet frames sent and sniffed on
//! the client's veth end through an `AF_PACKET` socket, with a TCP client that lives entirely
//! in this process.
//!
//! The crafted client uses an address no kernel owns (`10.231.0.3`, `fd00:231::3`): the server
//! gets a permanent neighbour entry pointing it at the client veth's MAC, and the client's
//! kernel, which does not own the address and does not forward, drops the server's replies
//! silently after this socket has seen them. So no local stack answers SYN-ACKs with resets and
//! no firewall rule is needed; every segment the server sees was written here.
//!
//! Checksums are computed here (a test can spoil one on purpose); the topology turns veth
//! checksum offload off so the server's stack verifies them in software.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Topology;
use crate::process::run;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PACKET_OUTGOING: u8 = 4;

/// IPv6 next-header values used by the shapes.
pub const HOP_BY_HOP: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const DEST_OPTS: u8 = 60;
const TCP: u8 = 6;

/// A MAC address.
pub type Mac = [u8; 6];

/// The MAC of `dev` inside `ns` (from `ip -n <ns> link show`).
pub fn mac_of(ns: &str, dev: &str) -> Result<Mac> {
    let out = run(Command::new("ip").args(["-n", ns, "link", "show", "dev", dev]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no link/ether for {dev} in {ns}: {text}"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = word.split(':').collect();
    if parts.len() != 6 {
        bail!("odd MAC {word:?}");
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("odd MAC {word:?}"))?;
    }
    Ok(mac)
}

// ---------------------------------------------------------------------------------------------
// The raw link.

/// An `AF_PACKET` socket bound to one interface. The socket belongs to the namespace it was
/// created in, so it is made on a thread inside that namespace and used from anywhere.
pub struct Link {
    fd: OwnedFd,
}

impl Link {
    /// A socket on `dev` inside `ns` that sends frames and, when `sniff`, receives every frame
    /// that arrives on it (its own sends excluded).
    pub fn open(ns: &str, dev: &str, sniff: bool) -> Result<Self> {
        let dev = CString::new(dev)?;
        let handle = Topology::spawn_in(ns, move || -> std::io::Result<OwnedFd> {
            // Protocol 0 receives nothing: a send-only socket for floods.
            let proto = if sniff { ETH_P_ALL.to_be() } else { 0 };
            // SAFETY: plain socket(2) call; the fd is owned at once.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(proto),
                )
            };
            if raw < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh, valid descriptor owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) };
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: sll is a valid sockaddr_ll of the length given.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::addr_of!(sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Room for the replies to a burst; a flood's replies are drained, not read.
            let size: libc::c_int = 8 << 20;
            // SAFETY: an int option of the right size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    std::ptr::addr_of!(size).cast(),
                    4,
                );
            }
            Ok(fd)
        })?;
        let fd = handle
            .join()
            .map_err(|_| anyhow::anyhow!("raw socket thread panicked"))?
            .context("could not enter the namespace")?
            .context("opening the AF_PACKET socket")?;
        Ok(Self { fd })
    }

    /// Sends one Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: a valid buffer of the given length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("sending a raw frame");
        }
        Ok(())
    }

    /// The next frame that arrived on the interface, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            if ready <= 0 {
                return None;
            }
            let mut buf = vec![0u8; 65536];
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: valid buffers of the given lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    std::ptr::addr_of_mut!(from).cast(),
                    &mut len,
                )
            };
            if n > 0 && from.sll_pkttype != PACKET_OUTGOING {
                buf.truncate(n as usize);
                return Some(buf);
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Throws away every frame already queued.
    pub fn drain(&self) {
        while self.recv(Duration::from_millis(0)).is_some() {}
    }
}

// ---------------------------------------------------------------------------------------------
// Building frames.

/// One TCP segment, before checksums.
#[derive(Clone, Debug, Default)]
pub struct Seg {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub urg: u16,
    /// Raw option bytes; padded with NOPs to a multiple of four.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
    /// Flip the checksum so the server's stack discards the segment.
    pub bad_checksum: bool,
}

/// How the IP layer around a segment looks.
#[derive(Clone, Debug, Default)]
pub struct Shape {
    /// 802.1Q/802.1ad tags, outermost first: (TPID, VLAN id).
    pub vlan: Vec<(u16, u16)>,
    /// IPv4 options (padded to a multiple of four).
    pub v4_options: Vec<u8>,
    /// IPv6 extension headers before the TCP header (or before the fragment header when
    /// `fragment` is set): (type, option bytes). Each gets PadN to a multiple of eight.
    pub v6_ext: Vec<(u8, Vec<u8>)>,
    /// Split the packet into fragments.
    pub fragment: Option<Fragment>,
}

/// A fragmentation of the transport bytes.
#[derive(Clone, Debug, Default)]
pub struct Fragment {
    /// Bytes of the fragmentable part in the first fragment (a multiple of 8); the rest goes
    /// into a second fragment. `usize::MAX`: one atomic fragment (offset 0, no more fragments).
    pub first: usize,
    /// IPv6 only: extension headers after the fragment header (inside the fragmentable part).
    pub inner_ext: Vec<(u8, Vec<u8>)>,
    /// Send the fragments last first.
    pub reverse: bool,
}

/// The Internet checksum of `data` added to `sum`.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Seg {
    /// The TCP header, options and payload, checksummed for `src` → `dst`.
    pub fn bytes(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(1);
        }
        let doff = (20 + opts.len()) / 4;
        let mut b = Vec::with_capacity(20 + opts.len() + self.payload.len());
        b.extend_from_slice(&self.sport.to_be_bytes());
        b.extend_from_slice(&self.dport.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.ack.to_be_bytes());
        b.push((doff as u8) << 4);
        b.push(self.flags);
        b.extend_from_slice(&self.window.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.urg.to_be_bytes());
        b.extend_from_slice(&opts);
        b.extend_from_slice(&self.payload);
        let mut sum = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let s = sum16(sum16(0, &s.octets()), &d.octets());
                s + u32::from(TCP) + b.len() as u32
            }
            (s, d) => {
                let s = sum16(sum16(0, &ip6(s).octets()), &ip6(d).octets());
                s + (b.len() as u32 >> 16) + (b.len() as u32 & 0xffff) + u32::from(TCP)
            }
        };
        sum = sum16(sum, &b);
        let mut check = fold(sum);
        if self.bad_checksum {
            check ^= 0x5a5a;
        }
        b[16..18].copy_from_slice(&check.to_be_bytes());
        b
    }
}

fn ip6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// One extension header: next, length in 8-octet units minus one, options padded with PadN.
fn ext_header(next: u8, options: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(options);
    let pad = (8 - h.len() % 8) % 8;
    match pad {
        0 => {}
        1 => h.push(0), // Pad1
        n => {
            h.push(1); // PadN
            h.push((n - 2) as u8);
            h.extend(std::iter::repeat_n(0, n - 2));
        }
    }
    h[1] = (h.len() / 8 - 1) as u8;
    h
}

/// A chain of extension headers ending in `last_next`.
fn ext_chain(headers: &[(u8, Vec<u8>)], last_next: u8) -> (u8, Vec<u8>) {
    let mut out = Vec::new();
    let first = headers.first().map_or(last_next, |h| h.0);
    for (i, (_, opts)) in headers.iter().enumerate() {
        let next = headers.get(i + 1).map_or(last_next, |h| h.0);
        out.extend(ext_header(next, opts));
    }
    (first, out)
}

/// Both ends of the crafted client's conversation at the Ethernet and IP layers.
#[derive(Clone, Debug)]
pub struct Path {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_mac: Mac,
    pub dst_mac: Mac,
}

static FRAG_ID: AtomicU16 = AtomicU16::new(0x4242);

impl Path {
    /// The Ethernet frames that carry `seg` in `shape` (several when fragmented).
    pub fn frames(&self, seg: &Seg, shape: &Shape) -> Vec<Vec<u8>> {
        let l4 = seg.bytes(self.src, self.dst);
        let packets = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => v4_packets(s, d, &l4, shape),
            _ => v6_packets(ip6(self.src), ip6(self.dst), &l4, shape),
        };
        let ethertype = if self.src.is_ipv4() {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        packets
            .into_iter()
            .map(|p| {
                let mut f = Vec::with_capacity(p.len() + 22);
                f.extend_from_slice(&self.dst_mac);
                f.extend_from_slice(&self.src_mac);
                for (tpid, vid) in &shape.vlan {
                    f.extend_from_slice(&tpid.to_be_bytes());
                    f.extend_from_slice(&vid.to_be_bytes());
                }
                f.extend_from_slice(&ethertype.to_be_bytes());
                f.extend(p);
                f
            })
            .collect()
    }
}

fn v4_header(s: Ipv4Addr, d: Ipv4Addr, options: &[u8], payload_len: usize, frag: u16) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let ihl = (20 + opts.len()) / 4;
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&((20 + opts.len() + payload_len) as u16).to_be_bytes());
    h.extend_from_slice(&FRAG_ID.load(Ordering::Relaxed).to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, TCP, 0, 0]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(&opts);
    let check = fold(sum16(0, &h));
    h[10..12].copy_from_slice(&check.to_be_bytes());
    h
}

fn v4_packets(s: Ipv4Addr, d: Ipv4Addr, l4: &[u8], shape: &Shape) -> Vec<Vec<u8>> {
    let opts = &shape.v4_options;
    let Some(frag) = &shape.fragment else {
        let mut p = v4_header(s, d, opts, l4.len(), 0x4000);
        p.extend_from_slice(l4);
        return vec![p];
    };
    FRAG_ID.fetch_add(1, Ordering::Relaxed);
    let first = frag.first.min(l4.len());
    let mut out = Vec::new();
    let mut p = v4_header(s, d, opts, first, if first < l4.len() { 0x2000 } else { 0 });
    p.extend_from_slice(&l4[..first]);
    out.push(p);
    if first < l4.len() {
        let mut p = v4_header(s, d, &[], l4.len() - first, (first / 8) as u16);
        p.extend_from_slice(&l4[first..]);
        out.push(p);
    }
    if frag.reverse {
        out.reverse();
    }
    out
}

fn v6_header(s: Ipv6Addr, d: Ipv6Addr, next: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload_len as u16).to_be_bytes());
    h.push(next);
    h.push(64);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h
}

fn v6_packets(s: Ipv6Addr, d: Ipv6Addr, l4: &[u8], shape: &Shape) -> Vec<Vec<u8>> {
    let Some(frag) = &shape.fragment else {
        let (next, chain) = ext_chain(&shape.v6_ext, TCP);
        let mut p = v6_header(s, d, next, chain.len() + l4.len());
        p.extend(chain);
        p.extend_from_slice(l4);
        return vec![p];
    };
    let id = u32::from(FRAG_ID.fetch_add(1, Ordering::Relaxed));
    let (unfrag_next, unfrag) = ext_chain(&shape.v6_ext, FRAGMENT);
    let (inner_next, inner) = ext_chain(&frag.inner_ext, TCP);
    let mut fragmentable = inner;
    fragmentable.extend_from_slice(l4);
    let first = frag.first.min(fragmentable.len());
    let pieces: Vec<(usize, &[u8], bool)> = if first < fragmentable.len() {
        vec![
            (0, &fragmentable[..first], true),
            (first, &fragmentable[first..], false),
        ]
    } else {
        vec![(0, &fragmentable[..], false)]
    };
    let mut out: Vec<Vec<u8>> = pieces
        .into_iter()
        .map(|(offset, bytes, more)| {
            let mut fh = vec![inner_next, 0];
            fh.extend_from_slice(&((offset as u16) | u16::from(more)).to_be_bytes());
            fh.extend_from_slice(&id.to_be_bytes());
            let mut p = v6_header(s, d, unfrag_next, unfrag.len() + 8 + bytes.len());
            p.extend_from_slice(&unfrag);
            p.extend(fh);
            p.extend_from_slice(bytes);
            p
        })
        .collect();
    if frag.reverse {
        out.reverse();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Parsing what the server sends back.

/// A TCP segment the server sent to the crafted client.
#[derive(Clone, Debug)]
pub struct Reply {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload_len: usize,
}

/// Parses an Ethernet frame carrying IPv4 or IPv6 (no extension headers) and TCP.
pub fn parse(frame: &[u8]) -> Option<Reply> {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    // Skip 802.1Q / 802.1ad tags.
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        off += 4;
        ethertype = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    }
    let ip = frame.get(off + 2..)?;
    let (src, dst, tcp, total) = match ethertype {
        ETH_P_IP => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if *ip.get(9)? != TCP {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (
                IpAddr::from(s),
                IpAddr::from(d),
                ip.get(ihl..total)?,
                total - ihl,
            )
        }
        ETH_P_IPV6 => {
            if *ip.get(6)? != TCP {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), ip.get(40..40 + len)?, len)
        }
        _ => return None,
    };
    let doff = usize::from(tcp.get(12)? >> 4) * 4;
    Some(Reply {
        src,
        dst,
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?),
        ack: u32::from_be_bytes(tcp.get(8..12)?.try_into().ok()?),
        flags: *tcp.get(13)?,
        payload_len: total.saturating_sub(doff),
    })
}

// ---------------------------------------------------------------------------------------------
// A TCP client in this process.

static NEXT_SPORT: AtomicU16 = AtomicU16::new(0);

/// A fresh client port, different for every flow of this process.
pub fn next_sport() -> u16 {
    let n = NEXT_SPORT.fetch_add(1, Ordering::Relaxed);
    // 20000..=59999: clear of the flood's range and of ephemeral ports.
    20000 + ((u32::from(n) + std::process::id()) % 40000) as u16
}

/// The server never answered the SYN: the connection was refused before it existed (a test
/// may count that as the attack being blocked).
#[derive(Debug)]
pub struct NoSynAck;

impl std::fmt::Display for NoSynAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no SYN-ACK from the server")
    }
}

impl std::error::Error for NoSynAck {}

/// True when `err` (or its cause) is [`NoSynAck`].
pub fn refused_at_handshake(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<NoSynAck>())
}

/// One crafted TCP connection from the client side.
pub struct Flow<'a> {
    pub link: &'a Link,
    pub path: Path,
    pub sport: u16,
    pub dport: u16,
    /// The client's initial sequence number.
    pub isn: u32,
    /// The server's initial sequence number (from its SYN-ACK).
    pub irs: u32,
    /// The packet shape [`Flow::send`] uses.
    pub shape: Shape,
}

impl<'a> Flow<'a> {
    pub fn new(link: &'a Link, path: Path, dport: u16) -> Self {
        let sport = next_sport();
        // Any value works; vary it so flows do not look alike.
        let isn = 0x1000_0000u32
            .wrapping_mul(u32::from(sport))
            .wrapping_add(std::process::id().wrapping_mul(7919));
        Self {
            link,
            path,
            sport,
            dport,
            isn,
            irs: 0,
            shape: Shape::default(),
        }
    }

    /// A segment of this flow: `seq` = ISN + 1 + `offset`, `ack` = the server's ISN + 1.
    pub fn seg(&self, flags: u8, offset: u32, payload: &[u8]) -> Seg {
        Seg {
            sport: self.sport,
            dport: self.dport,
            seq: self.isn.wrapping_add(1).wrapping_add(offset),
            ack: if flags & ACK != 0 {
                self.irs.wrapping_add(1)
            } else {
                0
            },
            flags,
            window: 64240,
            payload: payload.to_vec(),
            ..Seg::default()
        }
    }

    /// Sends `seg` in the flow's shape.
    pub fn send(&self, seg: &Seg) -> Result<()> {
        self.send_shaped(seg, &self.shape)
    }

    /// Sends `seg` in `shape`.
    pub fn send_shaped(&self, seg: &Seg, shape: &Shape) -> Result<()> {
        for f in self.path.frames(seg, shape) {
            self.link.send(&f)?;
        }
        Ok(())
    }

    /// The SYN of this flow (ISN, window, MSS option).
    pub fn syn(&self) -> Seg {
        let mut s = self.seg(SYN, 0, &[]);
        s.seq = self.isn;
        s.options = vec![2, 4, 0x05, 0xb4];
        s
    }

    /// SYN, the server's SYN-ACK, ACK.
    pub fn handshake(&mut self) -> Result<()> {
        self.handshake_with(self.syn())
    }

    /// Like [`Flow::handshake`] with a SYN the caller made.
    pub fn handshake_with(&mut self, syn: Seg) -> Result<()> {
        self.link.drain();
        self.send(&syn)?;
        let synack = self
            .expect(Duration::from_secs(3), |r| {
                r.flags & (SYN | ACK) == SYN | ACK
            })
            .ok_or(NoSynAck)?;
        self.irs = synack.seq;
        self.send(&self.seg(ACK, 0, &[]))
    }

    /// The next segment from the server to this flow that satisfies `want`.
    pub fn expect(&self, timeout: Duration, mut want: impl FnMut(&Reply) -> bool) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let frame = self.link.recv(left)?;
            if let Some(r) = parse(&frame) {
                if r.dst == self.path.src
                    && r.dport == self.sport
                    && r.sport == self.dport
                    && want(&r)
                {
                    return Some(r);
                }
            }
        }
    }

    /// True when the server resets this flow within `timeout`.
    pub fn reset_seen(&self, timeout: Duration) -> bool {
        self.expect(timeout, |r| r.flags & RST != 0).is_some()
    }

    /// Tears the flow down from the client side, so the app's read ends.
    pub fn abort(&self) {
        let mut rst = self.seg(RST | ACK, 0, &[]);
        // A far-ahead seq would be ignored; the server's rcv_nxt is unknown after tricks, so
        // send a few plausible ones.
        for off in [0u32, 1, 2, 3] {
            rst.seq = self.isn.wrapping_add(1).wrapping_add(off);
            let _ = self.send(&rst);
        }
    }
}

/// A syntactically valid TLS 1.3 ClientHello record (what `openssl s_client` would send, in
/// shape: record header, handshake header, version, random, session id, suites, compression,
/// extensions with SNI, supported_versions, groups, key_share, signature algorithms).
pub fn client_hello(sni: &str) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut exts = Vec::new();
    let name = sni.as_bytes();
    let mut sn = Vec::new();
    sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sn.push(0);
    sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sn.extend_from_slice(name);
    ext(&mut exts, 0x0000, &sn);
    ext(&mut exts, 0x002b, &[0x02, 0x03, 0x04]);
    ext(&mut exts, 0x000a, &[0x00, 0x02, 0x00, 0x1d]);
    let mut ks = vec![0x00, 0x24, 0x00, 0x1d, 0x00, 0x20];
    ks.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    ext(&mut exts, 0x0033, &ks);
    ext(&mut exts, 0x000d, &[0x00, 0x02, 0x08, 0x04]);

    let mut body = vec![0x03, 0x03];
    body.extend((0..32u8).map(|i| i.wrapping_mul(13).wrapping_add(5)));
    body.push(32);
    body.extend((0..32u8).map(|i| i.wrapping_mul(7)));
    body.extend_from_slice(&[0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03]);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend(exts);

    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_lengths_agree() {
        let ch = client_hello("server");
        let rec_len = usize::from(u16::from_be_bytes([ch[3], ch[4]]));
        assert_eq!(rec_len + 5, ch.len());
        let hs_len = u32::from_be_bytes([0, ch[6], ch[7], ch[8]]) as usize;
        assert_eq!(hs_len + 4, rec_len);
        assert_eq!(&ch[..3], &[0x16, 0x03, 0x01]);
        assert_eq!(ch[5], 0x01);
    }

    #[test]
    fn tcp_checksum_verifies() {
        let seg = Seg {
            sport: 1,
            dport: 80,
            seq: 7,
            flags: ACK,
            payload: b"abc".to_vec(),
            ..Seg::default()
        };
        for (s, d) in [
            (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])),
            (
                "fd00::1".parse().unwrap_or(IpAddr::from([0; 16])),
                "fd00::2".parse().unwrap_or(IpAddr::from([0; 16])),
            ),
        ] {
            let b = seg.bytes(s, d);
            // Summing the segment with its checksum in place gives all ones.
            let pseudo = match (s, d) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    sum16(sum16(0, &s.octets()), &d.octets()) + 6 + b.len() as u32
                }
                _ => sum16(sum16(0, &ip6(s).octets()), &ip6(d).octets()) + 6 + b.len() as u32,
            };
            assert_eq!(fold(sum16(pseudo, &b)), 0);
        }
    }

    #[test]
    fn extension_headers_are_eight_byte_multiples() {
        let (first, chain) = ext_chain(&[(DEST_OPTS, vec![]), (DEST_OPTS, vec![])], TCP);
        assert_eq!(first, DEST_OPTS);
        assert_eq!(chain.len(), 16);
        assert_eq!(chain[0], DEST_OPTS);
        assert_eq!(chain[8], TCP);
    }
}
