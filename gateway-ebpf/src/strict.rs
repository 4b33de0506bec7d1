//! tc ingress classifier: under STRICT, a connection whose first client payload is not the
//! start of a TLS ClientHello is reset in the kernel, before any process reads a byte.
//!
//! # What is judged: the bytes the socket will receive first
//! The program keeps no per-flow state of its own. For every segment with payload to a STRICT
//! port it asks the kernel which socket the segment will be delivered to
//! (`bpf_skc_lookup_tcp`, the same lookup TCP itself does next) and reads that socket's
//! `bytes_received` and `rcv_nxt` (`bpf_tcp_sock`):
//! - `bytes_received != 0`: the socket already took its first payload (judged then, or older
//!   than STRICT on this port): nothing to judge.
//! - `bytes_received == 0`: the next in-order byte is `rcv_nxt`. A segment with
//!   `seq <= rcv_nxt < seq + len` delivers it, wherever the segment starts: Linux trims the
//!   part before `rcv_nxt` (a first segment that starts one byte early, at the ISN, is cut to
//!   ISN+1), so the check reads the payload from offset `rcv_nxt - seq`. A segment wholly
//!   after `rcv_nxt` waits in the out-of-order queue and reaches the app only behind the
//!   segment that fills the gap, which covers `rcv_nxt` and is judged itself. A segment wholly
//!   before it is a duplicate Linux drops.
//!
//! Because the state is the socket's, a packet can only change it by being accepted by TCP:
//! a RST, a zero-length FIN or a SYN with another ISN that Linux ignores as out of window
//! leaves `rcv_nxt` alone, and a packet with a bad checksum or a failed PAWS check is dropped
//! after this program without touching the socket. Nothing can evict the state, and a flow
//! that was established before the program was attached is judged like any other as long as
//! it has not received a payload byte. Two segments racing on different CPUs are each judged
//! against the same `rcv_nxt`; whichever TCP takes first was judged.
//!
//! Other sockets the lookup can find:
//! - a listener: the data opens a connection through a SYN cookie, or races the ACK that is
//!   creating the socket on another CPU; either way the next in-order byte is unknown here (a
//!   segment starting early would pass on a ClientHello head that TCP then trims), so the data
//!   is dropped and the client retransmits it onto the socket. A client that puts its data on
//!   the cookie-completing ACK itself cannot connect while SYN cookies are in use (Linux,
//!   Windows and macOS clients send a bare ACK first);
//! - nothing: TCP answers with its own RST, so the payload is judged from its first byte. A
//!   NAT rule (REDIRECT/DNAT runs after tc) that delivers it to a socket on another port is
//!   outside what tc can see: steering, which runs at the socket lookup after NAT, covers it;
//! - a request socket (handshake not complete yet): its `rcv_nxt` is not readable from here, so
//!   data on the ACK that would complete the handshake is dropped. Clients that piggyback data
//!   on that ACK retransmit it, and the retransmission meets the established socket;
//! - a TIME_WAIT socket: data is answered with an ACK or RST, never delivered: left alone.
//!
//! # What passes: a ClientHello, not three bytes
//! The bytes from `rcv_nxt` must hold, in this segment, a TLS record header (type 22, version
//! 3.1–3.3, a length a ClientHello can have and TLS allows), a handshake header of type
//! ClientHello whose length agrees with the record's (equal, or larger for a record of the
//! maximum size that a split hello fills), and a `legacy_version` of 3.1–3.3: 11 bytes. A
//! first segment shorter than that is reset: TLS stacks write the whole hello at once. This is
//! a check of the first 11 bytes, not a TLS parser: a client that sends exactly such a header
//! and then anything it likes gets that far, which is why STRICT ports are also steered to
//! the terminator (see `steer`), so that with the daemon up the app only ever talks to it.
//!
//! A SYN to a STRICT port that offers MPTCP (option 30: MP_CAPABLE or MP_JOIN) is dropped:
//! MPTCP maps each subflow's bytes to stream offsets the client chooses, so "the subflow's
//! first payload" would not be "the first bytes the app reads". Every connection to a STRICT
//! port is plain TCP; a client that keeps offering MPTCP cannot connect (Linux clients can be
//! told to fall back to TCP after retransmitted SYNs).
//!
//! SYN payload (TCP Fast Open) never marks anything: a SYN to a STRICT port whose data is not
//! a ClientHello is dropped, and one whose data is passes without leaving any state; its
//! handshake's first in-order payload is still judged against the socket.
//!
//! # Every shape the kernel accepts is judged or dropped
//! - TCP fragments (IPv4 with MF or an offset, IPv6 with a Fragment header anywhere in the
//!   chain) are dropped, first and later ones, whenever anything is STRICT: a later fragment
//!   has no TCP header, so its port is unknowable, and real TCP does not fragment (DF, PMTU).
//! - IPv6 extension headers are walked (hop-by-hop, routing, destination options, AH, up to
//!   [`MAX_EXT_HEADERS`]); a chain that ends in TCP to a STRICT port is dropped, one that ends
//!   in another protocol passes, one longer than the walk is dropped when anything is STRICT.
//! - IPv4 or IPv6 inside IPv6 (next header 4 or 41, after any extension headers): dropped
//!   whenever anything is STRICT. SRv6 (seg6local End.DX4/DX6/DT*, SRH decapsulation with
//!   `seg6_enabled`) decapsulates them with no further tc pass, so the inner segment's port is
//!   never seen here. Tunnels through a device (ipip, sit, ip6tnl, GRE, WireGuard) deliver the
//!   inner packet on that device, where the layer-3 program judges it.
//! - A packet whose kernel protocol (`skb->protocol`, IPv4 or IPv6) disagrees with the
//!   EtherType at the start of the frame does not start where this program reads (a tun
//!   device given an Ethernet link type, a packet re-injected after decapsulation with its
//!   outer headers in front): dropped whenever anything is STRICT.
//! - IPv4 with options, to a STRICT port: dropped (the reset path assumes a bare header).
//! - VLAN tags still in the packet (the kernel strips the outer tag before tc, the inner of a
//!   QinQ or a priority tag stays, and a VID 0 inner tag is stripped later and delivered
//!   without another tc pass): up to [`MAX_VLAN_TAGS`] are walked and the packet judged like
//!   any other, except that a STRICT verdict drops instead of resetting; deeper stacks are
//!   dropped when anything is STRICT.
//! - GRO/GSO and BIG TCP super-packets: the payload length comes from the IP header, or from
//!   the skb when a BIG TCP packet carries 0 there; the judged bytes are the first ones of the
//!   aggregate, which are the first the socket receives.
//!
//! # Which ports are STRICT
//! A port with its own entry in `PORTS` follows it (`portLevelMtls`, the named ports); any
//! other port follows the default in `CONFIG` (the workload-wide PeerAuthentication). The
//! default leaves alone the node's ephemeral port range, where replies to the node's own
//! outbound connections arrive (their first payload is a server's, not a client's); those
//! ports are still covered by steering. Loopback destinations (127/8, `::1`,
//! `::ffff:127.0.0.0/104`) pass on `lo` only, where the terminator's hop to the app runs; on
//! any other device they are dropped while anything is STRICT (see `loopback_destination`).
//!
//! # How the reset works
//! A judged payload that is not a ClientHello turns into two resets, both from this one skb:
//! 1. The segment is rewritten into an RST|ACK to the client: MACs, addresses and ports
//!    swapped, `seq` = the segment's `ack_seq`, `ack` = its `seq` + payload length (+1 for FIN),
//!    a bare 20-byte TCP header (no options, so no PAWS check on the client), payload cut off
//!    with `bpf_skb_change_tail`, IP and TCP checksums computed in full here. It is sent with
//!    `bpf_clone_redirect` to the egress of the device it arrived on, i.e. back to the client.
//!    The helper un-shares the original before sending the clone, so step 2 may edit it.
//! 2. The same skb is rewritten into a bare RST in the original direction with `seq` = the
//!    socket's `rcv_nxt` (the only sequence number Linux accepts a RST at, RFC 5961) and
//!    returned with `TC_ACT_OK`, so the local socket is torn down at once and the app's read
//!    sees ECONNRESET instead of data. Dropping (`TC_ACT_SHOT`) would leave it ESTABLISHED.
//!
//! # Limits
//! Every data segment to a STRICT port costs one socket lookup (an established-hash probe and
//! a reference taken and dropped): the price of state that packets cannot write.
//! A forged segment that covers `rcv_nxt` of a connection that has not sent its first payload
//! resets it: that needs the 4-tuple and an in-window guess, like a blind RST (RFC 5961).
//! Bytes after the first 11 are not judged here (see above). Traffic that reaches the socket
//! without passing an interface this program is attached to (a tunnel device, a VRF) is not
//! judged by it; steering covers those.

use aya_ebpf::cty::c_long;
use aya_ebpf::{
    bindings::{
        bpf_sock_tuple, BPF_F_INVALIDATE_HASH, BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, TC_ACT_SHOT,
        TC_ACT_UNSPEC,
    },
    helpers::{bpf_sk_release, bpf_skb_change_tail, bpf_skc_lookup_tcp, bpf_tcp_sock},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use gateway_common::{mode, Counter, KernelConfig};

use crate::maps::{bump, config, has_entry, port_policy};

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_QINQ: u16 = 0x9100;
const IPPROTO_TCP: u8 = 6;
/// IPv4 and IPv6 as the next header of an IPv6 packet: an encapsulated packet.
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPV4_MF_OFFSET: u16 = 0x3fff;
const IPV4_DF: u16 = 0x4000;

/// VLAN tags walked inside the packet (beyond the one the kernel strips before tc).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up (and dropping, when anything is STRICT).
pub const MAX_EXT_HEADERS: usize = 8;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

const TCPOPT_MPTCP: u8 = 30;
/// The most option bytes a TCP header holds.
const MAX_OPTIONS: usize = 40;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Socket states (include/net/tcp_states.h).
const TCP_TIME_WAIT: u32 = 6;
const TCP_LISTEN: u32 = 10;
const TCP_NEW_SYN_RECV: u32 = 12;

/// `BPF_F_CURRENT_NETNS`: look the socket up in the skb's network namespace.
const CURRENT_NETNS: u64 = u64::MAX;

/// Bytes of a ClientHello's start the check needs: record header, handshake header,
/// legacy_version.
const HELLO_PREFIX: u32 = 11;
/// The smallest ClientHello record: handshake header (4), version (2), random (32),
/// session id length (1), one cipher suite with its length (4), compression (2).
const MIN_HELLO_RECORD: u32 = 45;
/// TLS's largest plaintext record (RFC 8446 §5.1).
const MAX_RECORD: u32 = 16384;

const STORE_FLAGS: u64 = (BPF_F_RECOMPUTE_CSUM | BPF_F_INVALIDATE_HASH) as u64;

#[repr(C)]
#[derive(Clone, Copy)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    version_class_flow: u32,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    saddr: [u32; 4],
    daddr: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHdr {
    sport: u16,
    dport: u16,
    seq: u32,
    ack_seq: u32,
    doff_reserved: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg_ptr: u16,
}

/// IPv4 pseudo-header for the TCP checksum (RFC 793).
#[repr(C)]
struct PseudoV4 {
    saddr: u32,
    daddr: u32,
    zero: u8,
    proto: u8,
    tcp_len: u16,
}

/// IPv6 pseudo-header for the TCP checksum (RFC 8200 §8.1).
#[repr(C)]
struct PseudoV6 {
    saddr: [u32; 4],
    daddr: [u32; 4],
    tcp_len: u32,
    zero: [u8; 3],
    next_header: u8,
}

/// What to do with the skb.
enum Verdict {
    /// Not ours, or judged fine: let later classifiers and the stack see it unchanged.
    Pass,
    /// Cannot be judged safely on a STRICT port, or must not reach the socket.
    Drop,
    /// Rewritten into the local RST: deliver it.
    Reset,
}

/// Where the layer-3 header starts, and whether VLAN tags sit in front of it in the packet.
#[derive(Clone, Copy)]
struct L3 {
    off: usize,
    tagged: bool,
}

/// The parts of a TCP segment the decision needs.
struct Segment {
    /// Local port, host order.
    port: u16,
    tcp: TcpHdr,
    /// Where the TCP options start, and how many bytes they take (0–40).
    options_off: usize,
    options_len: usize,
    payload_off: usize,
    payload_len: u32,
}

#[classifier]
pub fn strict(ctx: TcContext) -> i32 {
    match classify(&ctx) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT as i32,
        Verdict::Reset => TC_ACT_OK as i32,
    }
}

/// The check on a layer-3 device (tun, WireGuard, IP-in-IP, GRE): no link header, the packet
/// starts at the IP header and the kernel's `skb->protocol` says which. Parsing such packets
/// as Ethernet would read the IP addresses as an EtherType and pass everything. The reset
/// needs a link header to answer with, so plaintext is dropped here instead (the client
/// retransmits into a connection that never serves it), as for VLAN-tagged packets.
#[classifier]
pub fn strict_l3(ctx: TcContext) -> i32 {
    match classify_l3(&ctx) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop | Verdict::Reset => TC_ACT_SHOT as i32,
    }
}

fn classify_l3(ctx: &TcContext) -> Verdict {
    let cfg = config();
    // Only the reset path reads it, and `tagged` keeps this one off that path.
    let none = EthHdr {
        dst: [0; 6],
        src: [0; 6],
        proto: 0,
    };
    let l3 = L3 {
        off: 0,
        tagged: true,
    };
    match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => classify_v4(ctx, &none, l3, &cfg),
        ETH_P_IPV6 => classify_v6(ctx, &none, l3, &cfg),
        _ => Verdict::Pass,
    }
}

fn classify(ctx: &TcContext) -> Verdict {
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return Verdict::Pass;
    };
    let cfg = config();
    let mut proto = u16::from_be(eth.proto);
    // The kernel's `skb->protocol` says what the packet is; the EtherType at offset 12 is
    // where this program looks. For an Ethernet frame they agree (an untagged VLAN's type
    // included). They differ when the packet does not start with the link header this program
    // assumes: a tun device given an Ethernet link type (its packets start at the IP header,
    // whose source address would be read as the EtherType), or a packet the kernel re-injects
    // after decapsulating it with the outer headers still in front. Such an IP packet cannot
    // be judged here.
    let kernel_proto = u16::from_be(ctx.skb.protocol() as u16);
    if matches!(kernel_proto, ETH_P_IP | ETH_P_IPV6) && kernel_proto != proto {
        return unknowable(&cfg);
    }
    let mut l3 = L3 {
        off: ETH_LEN,
        tagged: false,
    };
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(proto) {
            break;
        }
        let Ok(tag) = ctx.load::<[u8; 4]>(l3.off) else {
            return Verdict::Pass;
        };
        proto = u16::from_be_bytes([tag[2], tag[3]]);
        l3.off += VLAN_LEN;
        l3.tagged = true;
    }
    if is_vlan(proto) {
        return unknowable(&cfg);
    }
    match proto {
        ETH_P_IP => classify_v4(ctx, &eth, l3, &cfg),
        ETH_P_IPV6 => classify_v6(ctx, &eth, l3, &cfg),
        _ => Verdict::Pass,
    }
}

fn is_vlan(proto: u16) -> bool {
    matches!(proto, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ)
}

/// A TCP packet whose port cannot be known: dropped while anything is STRICT.
fn unknowable(cfg: &KernelConfig) -> Verdict {
    if cfg.strict_anywhere != 0 {
        bump(Counter::Dropped, 0);
        return Verdict::Drop;
    }
    Verdict::Pass
}

/// Whether the port is STRICT: by its own entry, or by the default (see the module docs for
/// why the default skips the ephemeral range).
fn is_strict(port: u16, cfg: &KernelConfig) -> bool {
    if port_policy(port, cfg).mode != mode::STRICT {
        return false;
    }
    has_entry(port) || !cfg.is_ephemeral(port)
}

/// The length of the IP payload the stack will use: the header's, else (BIG TCP puts 0
/// there) what the skb holds; never more than the skb holds.
fn ip_payload_len(header_len: usize, skb_after_ip: usize) -> usize {
    if header_len == 0 || header_len > skb_after_ip {
        skb_after_ip
    } else {
        header_len
    }
}

fn classify_v4(ctx: &TcContext, eth: &EthHdr, l3: L3, cfg: &KernelConfig) -> Verdict {
    let Ok(ip) = ctx.load::<Ipv4Hdr>(l3.off) else {
        return Verdict::Pass;
    };
    if ip.proto != IPPROTO_TCP {
        return Verdict::Pass;
    }
    if u16::from_be(ip.frag_off) & IPV4_MF_OFFSET != 0 {
        // First or later fragment: a later one carries no port; neither is real TCP.
        return unknowable(cfg);
    }
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_LEN {
        // The stack drops it.
        return Verdict::Pass;
    }
    let Ok(tcp) = ctx.load::<TcpHdr>(l3.off + ihl) else {
        return Verdict::Pass;
    };
    if ip.daddr.to_ne_bytes()[0] == 127 {
        return loopback_destination(ctx, cfg);
    }
    let port = u16::from_be(tcp.dport);
    if !is_strict(port, cfg) {
        return Verdict::Pass;
    }
    if ihl != IPV4_LEN {
        bump(Counter::Dropped, port);
        return Verdict::Drop;
    }
    let doff = ((tcp.doff_reserved >> 4) as usize) * 4;
    let skb_len = ctx.len() as usize;
    if doff < TCP_LEN || skb_len < l3.off + IPV4_LEN + doff {
        return Verdict::Pass;
    }
    let ip_len = ip_payload_len(u16::from_be(ip.tot_len) as usize, skb_len - l3.off);
    if ip_len < IPV4_LEN + doff {
        return Verdict::Pass;
    }
    let seg = Segment {
        port,
        tcp,
        options_off: l3.off + IPV4_LEN + TCP_LEN,
        options_len: doff - TCP_LEN,
        payload_off: l3.off + IPV4_LEN + doff,
        payload_len: (ip_len - IPV4_LEN - doff) as u32,
    };
    // SAFETY: bpf_sock_tuple is plain integers; all-zero is a valid value.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // SAFETY: writing the ipv4 variant of a plain-data union.
    unsafe {
        let t = &mut tuple.__bindgen_anon_1.ipv4;
        t.saddr = ip.saddr;
        t.daddr = ip.daddr;
        t.sport = tcp.sport;
        t.dport = tcp.dport;
    }
    let tuple_len = core::mem::size_of::<u32>() * 2 + core::mem::size_of::<u16>() * 2;
    match judge(ctx, &seg, &mut tuple, tuple_len as u32) {
        Judgement::Let => Verdict::Pass,
        Judgement::Refuse => {
            bump(Counter::Dropped, port);
            Verdict::Drop
        }
        Judgement::Plaintext { .. } if l3.tagged => {
            bump(Counter::Dropped, port);
            Verdict::Drop
        }
        Judgement::Plaintext { local_seq } => reset_v4(ctx, eth, &ip, &seg, local_seq),
    }
}

fn classify_v6(ctx: &TcContext, eth: &EthHdr, l3: L3, cfg: &KernelConfig) -> Verdict {
    let Ok(ip) = ctx.load::<Ipv6Hdr>(l3.off) else {
        return Verdict::Pass;
    };
    if ip.next_header != IPPROTO_TCP {
        return classify_v6_chain(ctx, &ip, l3, cfg);
    }
    let Ok(tcp) = ctx.load::<TcpHdr>(l3.off + IPV6_LEN) else {
        return Verdict::Pass;
    };
    if is_loopback_v6(&ip.daddr) {
        return loopback_destination(ctx, cfg);
    }
    let port = u16::from_be(tcp.dport);
    if !is_strict(port, cfg) {
        return Verdict::Pass;
    }
    let doff = ((tcp.doff_reserved >> 4) as usize) * 4;
    let skb_len = ctx.len() as usize;
    if doff < TCP_LEN || skb_len < l3.off + IPV6_LEN + doff {
        return Verdict::Pass;
    }
    let ip_payload = ip_payload_len(
        u16::from_be(ip.payload_len) as usize,
        skb_len - l3.off - IPV6_LEN,
    );
    if ip_payload < doff {
        return Verdict::Pass;
    }
    let seg = Segment {
        port,
        tcp,
        options_off: l3.off + IPV6_LEN + TCP_LEN,
        options_len: doff - TCP_LEN,
        payload_off: l3.off + IPV6_LEN + doff,
        payload_len: (ip_payload - doff) as u32,
    };
    // SAFETY: bpf_sock_tuple is plain integers; all-zero is a valid value.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // SAFETY: writing the ipv6 variant of a plain-data union.
    unsafe {
        let t = &mut tuple.__bindgen_anon_1.ipv6;
        t.saddr = ip.saddr;
        t.daddr = ip.daddr;
        t.sport = tcp.sport;
        t.dport = tcp.dport;
    }
    let tuple_len = core::mem::size_of::<u32>() * 8 + core::mem::size_of::<u16>() * 2;
    match judge(ctx, &seg, &mut tuple, tuple_len as u32) {
        Judgement::Let => Verdict::Pass,
        Judgement::Refuse => {
            bump(Counter::Dropped, port);
            Verdict::Drop
        }
        Judgement::Plaintext { .. } if l3.tagged => {
            bump(Counter::Dropped, port);
            Verdict::Drop
        }
        Judgement::Plaintext { local_seq } => reset_v6(ctx, eth, &ip, &seg, local_seq),
    }
}

/// `::1`, or `::ffff:127.0.0.0/104` (an IPv4 loopback address written as IPv6).
fn is_loopback_v6(addr: &[u32; 4]) -> bool {
    if addr[0] != 0 || addr[1] != 0 {
        return false;
    }
    let word2 = u32::from_be(addr[2]);
    let word3 = u32::from_be(addr[3]);
    (word2 == 0 && word3 == 1) || (word2 == 0xffff && word3 >> 24 == 127)
}

/// The loopback device's index, the same in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// A TCP packet to a loopback address. On `lo` it is the terminator's hop to the app (or
/// another local client): passed by address. On any other device it is martian traffic that
/// Linux delivers only when told to (`route_localnet=1`, which kube-proxy sets, or a DNAT
/// rule rewriting to 127.0.0.1), and then it reaches an app that trusts loopback peers. Its
/// port says nothing either: a DNAT may rewrite it after this program. So it is dropped
/// whenever anything is STRICT, whatever its port; with nothing STRICT the daemon does not
/// police routing and it passes.
fn loopback_destination(ctx: &TcContext, cfg: &KernelConfig) -> Verdict {
    // SAFETY: `ctx.skb.skb` is the __sk_buff of this call; `ifindex` is the device the
    // packet arrived on at tc ingress.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if ifindex == LOOPBACK_IFINDEX || cfg.strict_anywhere == 0 {
        return Verdict::Pass;
    }
    bump(Counter::Dropped, 0);
    Verdict::Drop
}

/// An IPv6 packet with extension headers: walks the chain as the stack would and drops it
/// when it leads to TCP on a STRICT port, or when it cannot be followed to its end.
fn classify_v6_chain(ctx: &TcContext, ip: &Ipv6Hdr, l3: L3, cfg: &KernelConfig) -> Verdict {
    let mut next = ip.next_header;
    let mut off = l3.off + IPV6_LEN;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_FRAGMENT => return unknowable(cfg),
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH => {
                let Ok(hdr) = ctx.load::<[u8; 2]>(off) else {
                    return unknowable(cfg);
                };
                let len = if next == NEXTHDR_AUTH {
                    (hdr[1] as usize + 2) * 4
                } else {
                    (hdr[1] as usize + 1) * 8
                };
                next = hdr[0];
                off += len;
            }
            IPPROTO_TCP => {
                if is_loopback_v6(&ip.daddr) {
                    return loopback_destination(ctx, cfg);
                }
                let Ok(tcp) = ctx.load::<TcpHdr>(off) else {
                    return unknowable(cfg);
                };
                let port = u16::from_be(tcp.dport);
                if is_strict(port, cfg) {
                    bump(Counter::Dropped, port);
                    return Verdict::Drop;
                }
                return Verdict::Pass;
            }
            // An IPv4 or IPv6 packet inside: Linux decapsulates some of them without the inner
            // packet passing tc on any device (SRv6: seg6local End.DX4/DX6/DT*, and SRH
            // decapsulation with `seg6_enabled`), so the inner TCP segment's port is never
            // judged. Dropped while anything is STRICT; steering, which runs at the socket
            // lookup after any decapsulation, is the way to carry such tunnels.
            IPPROTO_IPIP | IPPROTO_IPV6 => return unknowable(cfg),
            // Another upper layer (UDP, ICMPv6, no next header…): not TCP.
            _ => return Verdict::Pass,
        }
    }
    unknowable(cfg)
}

enum Judgement {
    /// Not a first payload, or the start of a ClientHello.
    Let,
    /// Must not reach the socket, but there is no established socket to reset.
    Refuse,
    /// The first payload is not a ClientHello: reset the flow. `local_seq` (host order) is
    /// the socket's `rcv_nxt`, where the local RST must sit.
    Plaintext { local_seq: u32 },
}

/// Where the socket's stream starts in this segment's payload.
enum Delivery {
    /// At this offset into the payload.
    From(u32),
    /// Nowhere: the socket took its first payload already, or takes none of these bytes now.
    Nothing,
    /// The next in-order byte is unknowable here (a request socket, a listener, no socket):
    /// the data is dropped and the client retransmits it onto an established socket.
    Unknowable,
}

// Inlined: returned out of line, the enum comes back through a pointer into the caller's
// stack, which the verifier refuses ("cannot return stack pointer to the caller").
#[inline(always)]
fn judge(ctx: &TcContext, seg: &Segment, tuple: &mut bpf_sock_tuple, tuple_len: u32) -> Judgement {
    let flags = seg.tcp.flags;
    if flags & TCP_RST != 0 {
        // The stack never delivers a RST's payload.
        return Judgement::Let;
    }
    if flags & TCP_SYN != 0 {
        if flags & TCP_ACK != 0 {
            // A SYN-ACK answers one of this node's connects.
            return Judgement::Let;
        }
        if offers_mptcp(ctx, seg) {
            // MPTCP maps subflow bytes to stream offsets of the client's choosing: the first
            // payload of a subflow need not be the first the app reads. Without the SYN's
            // MP_CAPABLE/MP_JOIN, no MPTCP connection to a STRICT port exists.
            return Judgement::Refuse;
        }
        if seg.payload_len == 0 {
            return Judgement::Let;
        }
        // TCP Fast Open data reaches the app with the handshake: judge it, keep nothing.
        if is_client_hello(ctx, seg.payload_off, seg.payload_len) {
            bump(Counter::Passed, seg.port);
            return Judgement::Let;
        }
        return Judgement::Refuse;
    }
    if seg.payload_len == 0 {
        return Judgement::Let;
    }
    let seq = u32::from_be(seg.tcp.seq);
    let start = match delivery(ctx, seq, tuple, tuple_len) {
        Delivery::From(start) => start,
        Delivery::Nothing => return Judgement::Let,
        Delivery::Unknowable => return Judgement::Refuse,
    };
    if start >= seg.payload_len {
        return Judgement::Let;
    }
    if is_client_hello(
        ctx,
        seg.payload_off + start as usize,
        seg.payload_len - start,
    ) {
        bump(Counter::Passed, seg.port);
        debug!(ctx, "strict: port {} ClientHello passed", seg.port);
        return Judgement::Let;
    }
    Judgement::Plaintext {
        local_seq: seq.wrapping_add(start),
    }
}

/// Asks the kernel which socket takes this segment and where its stream starts in it.
fn delivery(ctx: &TcContext, seq: u32, tuple: &mut bpf_sock_tuple, tuple_len: u32) -> Delivery {
    // SAFETY: the skb is this program's context; the tuple lives on the stack for the call.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.skb.skb as *mut _,
            tuple as *mut _,
            tuple_len,
            CURRENT_NETNS,
            0,
        )
    };
    if sk.is_null() {
        // No socket for this address and port: TCP resets it itself. (A NAT rule, which runs
        // after tc, could deliver it to a socket on another port whose state is not visible
        // here; the README lists NAT in front of a STRICT port as outside tc-only STRICT.)
        return Delivery::From(0);
    }
    // SAFETY: non-null socket reference from the lookup; `state` is readable on any of them.
    let state = unsafe { (*sk).state };
    let result = match state {
        // Data meeting the listener can only open a connection through a SYN cookie, or race
        // the ACK that is creating the socket on another CPU: in both cases the next in-order
        // byte is unknown here (a segment starting early, judged from its first byte, would
        // be trimmed by TCP after the check). Dropped: the client retransmits onto the socket.
        TCP_LISTEN => Delivery::Unknowable,
        TCP_NEW_SYN_RECV => Delivery::Unknowable,
        TCP_TIME_WAIT => Delivery::Nothing,
        _ => {
            // SAFETY: `sk` is a referenced socket; the helper returns null unless it is a
            // full TCP socket.
            let tp = unsafe { bpf_tcp_sock(sk) };
            if tp.is_null() {
                Delivery::Unknowable
            } else {
                // SAFETY: non-null tcp_sock view of the referenced socket, read before release.
                let (received, rcv_nxt) = unsafe { ((*tp).bytes_received, (*tp).rcv_nxt) };
                let ahead = rcv_nxt.wrapping_sub(seq);
                if received != 0 || (ahead as i32) < 0 {
                    Delivery::Nothing
                } else {
                    Delivery::From(ahead)
                }
            }
        }
    };
    // SAFETY: releases the reference taken by the lookup, exactly once.
    unsafe { bpf_sk_release(sk as *mut _) };
    result
}

/// Whether the segment's TCP options include MPTCP's MP_CAPABLE or MP_JOIN (kind 30, length
/// 4 or 12, subtype 0 or 1). The options are scanned at every offset instead of walked: a walk
/// with data-dependent steps is too much for the verifier, and a stray match (in a timestamp,
/// say) only drops one SYN, which the client retransmits with other values.
fn offers_mptcp(ctx: &TcContext, seg: &Segment) -> bool {
    let len = seg.options_len;
    if len > MAX_OPTIONS {
        return false;
    }
    // Straight from the packet, four bytes at a time: a 40-byte copy would not fit the
    // program's 512-byte stack next to the reset path's headers.
    for p in 0..MAX_OPTIONS - 3 {
        if p + 4 > len {
            break;
        }
        let Ok(o) = ctx.load::<[u8; 4]>(seg.options_off + p) else {
            break;
        };
        if o[0] == TCPOPT_MPTCP && (o[1] == 4 || o[1] == 12) && o[2] >> 4 <= 1 {
            return true;
        }
    }
    false
}

/// The first 11 bytes at `off` (of `avail` in this segment) open a TLS ClientHello.
fn is_client_hello(ctx: &TcContext, off: usize, avail: u32) -> bool {
    if avail < HELLO_PREFIX {
        return false;
    }
    let Ok(b) = ctx.load::<[u8; 11]>(off) else {
        return false;
    };
    let record_len = u16::from_be_bytes([b[3], b[4]]) as u32;
    let hello_len = ((b[6] as u32) << 16) | ((b[7] as u32) << 8) | b[8] as u32;
    let lengths_agree =
        hello_len + 4 == record_len || (record_len == MAX_RECORD && hello_len + 4 > record_len);
    b[0] == 0x16
        && b[1] == 0x03
        && (0x01..=0x03).contains(&b[2])
        && (MIN_HELLO_RECORD..=MAX_RECORD).contains(&record_len)
        && b[5] == 0x01
        && lengths_agree
        && b[9] == 0x03
        && (0x01..=0x03).contains(&b[10])
}

/// The `ack` of the RST back to the client: everything it sent in this segment.
fn reply_ack(seg: &Segment) -> u32 {
    let fin = (seg.tcp.flags & TCP_FIN != 0) as u32;
    u32::from_be(seg.tcp.seq)
        .wrapping_add(seg.payload_len)
        .wrapping_add(fin)
        .to_be()
}

/// RST|ACK to the client, and a bare RST at the socket's `rcv_nxt` for the local socket.
fn rst_headers(seg: &Segment, local_seq: u32) -> (TcpHdr, TcpHdr) {
    let to_client = TcpHdr {
        sport: seg.tcp.dport,
        dport: seg.tcp.sport,
        seq: seg.tcp.ack_seq,
        ack_seq: reply_ack(seg),
        doff_reserved: ((TCP_LEN / 4) as u8) << 4,
        flags: TCP_RST | TCP_ACK,
        window: 0,
        check: 0,
        urg_ptr: 0,
    };
    let to_local = TcpHdr {
        sport: seg.tcp.sport,
        dport: seg.tcp.dport,
        seq: local_seq.to_be(),
        ack_seq: 0,
        doff_reserved: ((TCP_LEN / 4) as u8) << 4,
        flags: TCP_RST,
        window: 0,
        check: 0,
        urg_ptr: 0,
    };
    (to_client, to_local)
}

fn reset_v4(ctx: &TcContext, eth: &EthHdr, ip: &Ipv4Hdr, seg: &Segment, local_seq: u32) -> Verdict {
    let new_len = (ETH_LEN + IPV4_LEN + TCP_LEN) as u32;
    // SAFETY: the helper validates the skb and the length itself.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, new_len, 0) } != 0 {
        bump(Counter::Dropped, seg.port);
        return Verdict::Drop;
    }
    let (mut to_client, mut to_local) = rst_headers(seg, local_seq);

    let reply_eth = EthHdr {
        dst: eth.src,
        src: eth.dst,
        proto: eth.proto,
    };
    let reply_ip = ipv4_header(ip.daddr, ip.saddr, 64);
    to_client.check = tcp_checksum_v4(&reply_ip, &to_client);
    if store_v4(ctx, &reply_eth, &reply_ip, &to_client).is_err() {
        bump(Counter::Dropped, seg.port);
        return Verdict::Drop;
    }
    let ifindex = ingress_ifindex(ctx);
    let sent = ctx.clone_redirect(ifindex, 0).is_ok();

    let local_ip = ipv4_header(ip.saddr, ip.daddr, ip.ttl);
    to_local.check = tcp_checksum_v4(&local_ip, &to_local);
    if store_v4(ctx, eth, &local_ip, &to_local).is_err() {
        bump(Counter::Dropped, seg.port);
        return Verdict::Drop;
    }
    finish_reset(ctx, seg, sent)
}

fn reset_v6(ctx: &TcContext, eth: &EthHdr, ip: &Ipv6Hdr, seg: &Segment, local_seq: u32) -> Verdict {
    let new_len = (ETH_LEN + IPV6_LEN + TCP_LEN) as u32;
    // SAFETY: the helper validates the skb and the length itself.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, new_len, 0) } != 0 {
        bump(Counter::Dropped, seg.port);
        return Verdict::Drop;
    }
    let (mut to_client, mut to_local) = rst_headers(seg, local_seq);

    let reply_eth = EthHdr {
        dst: eth.src,
        src: eth.dst,
        proto: eth.proto,
    };
    let reply_ip = ipv6_header(ip.daddr, ip.saddr, 64);
    to_client.check = tcp_checksum_v6(&reply_ip, &to_client);
    if store_v6(ctx, &reply_eth, &reply_ip, &to_client).is_err() {
        bump(Counter::Dropped, seg.port);
        return Verdict::Drop;
    }
    let ifindex = ingress_ifindex(ctx);
    let sent = ctx.clone_redirect(ifindex, 0).is_ok();

    let local_ip = ipv6_header(ip.saddr, ip.daddr, ip.hop_limit);
    to_local.check = tcp_checksum_v6(&local_ip, &to_local);
    if store_v6(ctx, eth, &local_ip, &to_local).is_err() {
        bump(Counter::Dropped, seg.port);
        return Verdict::Drop;
    }
    finish_reset(ctx, seg, sent)
}

fn finish_reset(ctx: &TcContext, seg: &Segment, sent: bool) -> Verdict {
    if sent {
        bump(Counter::Reset, seg.port);
        debug!(ctx, "strict: port {} plaintext reset", seg.port);
    } else {
        // The local socket is still reset; the client learns on its next segment, which finds
        // no socket and gets the stack's own RST.
        bump(Counter::Dropped, seg.port);
        debug!(ctx, "strict: port {} clone_redirect failed", seg.port);
    }
    Verdict::Reset
}

fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel passed to this program.
    unsafe { (*ctx.skb.skb).ifindex }
}

fn ipv4_header(saddr: u32, daddr: u32, ttl: u8) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((IPV4_LEN + TCP_LEN) as u16).to_be(),
        id: 0,
        frag_off: IPV4_DF.to_be(),
        ttl,
        proto: IPPROTO_TCP,
        check: 0,
        saddr,
        daddr,
    };
    // SAFETY: Ipv4Hdr is 20 bytes of plain integers, the same size as [u16; 10].
    let words: [u16; 10] = unsafe { core::mem::transmute(ip) };
    ip.check = fold(sum_words(0, &words));
    ip
}

fn ipv6_header(saddr: [u32; 4], daddr: [u32; 4], hop_limit: u8) -> Ipv6Hdr {
    Ipv6Hdr {
        version_class_flow: (6u32 << 28).to_be(),
        payload_len: (TCP_LEN as u16).to_be(),
        next_header: IPPROTO_TCP,
        hop_limit,
        saddr,
        daddr,
    }
}

fn tcp_checksum_v4(ip: &Ipv4Hdr, tcp: &TcpHdr) -> u16 {
    let pseudo = PseudoV4 {
        saddr: ip.saddr,
        daddr: ip.daddr,
        zero: 0,
        proto: IPPROTO_TCP,
        tcp_len: (TCP_LEN as u16).to_be(),
    };
    // SAFETY: both are plain integers, 12 and 20 bytes, the sizes of the arrays.
    let pseudo: [u16; 6] = unsafe { core::mem::transmute(pseudo) };
    // SAFETY: as above.
    let tcp: [u16; 10] = unsafe { core::mem::transmute(*tcp) };
    fold(sum_words(sum_words(0, &pseudo), &tcp))
}

fn tcp_checksum_v6(ip: &Ipv6Hdr, tcp: &TcpHdr) -> u16 {
    let pseudo = PseudoV6 {
        saddr: ip.saddr,
        daddr: ip.daddr,
        tcp_len: (TCP_LEN as u32).to_be(),
        zero: [0; 3],
        next_header: IPPROTO_TCP,
    };
    // SAFETY: both are plain integers, 40 and 20 bytes, the sizes of the arrays.
    let pseudo: [u16; 20] = unsafe { core::mem::transmute(pseudo) };
    // SAFETY: as above.
    let tcp: [u16; 10] = unsafe { core::mem::transmute(*tcp) };
    fold(sum_words(sum_words(0, &pseudo), &tcp))
}

/// One's-complement sum of 16-bit words as they lie in memory. The sum is byte-order
/// independent (RFC 1071 §2(B)), so the folded result is stored back as is.
#[inline(always)]
fn sum_words(mut sum: u32, words: &[u16]) -> u32 {
    for w in words {
        sum += *w as u32;
    }
    sum
}

#[inline(always)]
fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

fn store_v4(ctx: &TcContext, eth: &EthHdr, ip: &Ipv4Hdr, tcp: &TcpHdr) -> Result<(), c_long> {
    ctx.store(0, eth, STORE_FLAGS)?;
    ctx.store(ETH_LEN, ip, STORE_FLAGS)?;
    ctx.store(ETH_LEN + IPV4_LEN, tcp, STORE_FLAGS)?;
    Ok(())
}

fn store_v6(ctx: &TcContext, eth: &EthHdr, ip: &Ipv6Hdr, tcp: &TcpHdr) -> Result<(), c_long> {
    ctx.store(0, eth, STORE_FLAGS)?;
    ctx.store(ETH_LEN, ip, STORE_FLAGS)?;
    ctx.store(ETH_LEN + IPV6_LEN, tcp, STORE_FLAGS)?;
    Ok(())
}
