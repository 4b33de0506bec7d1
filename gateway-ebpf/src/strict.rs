//! tc ingress classifier: under STRICT, a connection whose first client payload is not a TLS
//! handshake record is reset in the kernel, before any process reads a byte.
//!
//! # Which segment is judged
//! A SYN to a STRICT port records the client's ISN in the `FLOWS` LRU, keyed by the 4-tuple.
//! Only a segment whose sequence number is ISN+1 and that carries payload is judged; every
//! other segment costs one failed (or unused) map lookup. Later segments of a TLS flow start
//! with `14`/`17` or continue a record, so judging them would be wrong. The entry stays after
//! a TLS first payload passes, so a retransmission of that first segment — or a forged one at
//! the same sequence number after a corrupt "TLS-looking" decoy the socket discarded — is judged
//! the same way; it is deleted when the flow is reset, or on the client's FIN/RST, and the LRU
//! bounds the rest. Flows with no entry (established before the program, or evicted) pass.
//!
//! # How the reset works
//! A judged payload whose first bytes are not `16 03 01..04` is turned into two resets, both
//! from this one skb:
//! 1. The segment is rewritten into an RST|ACK to the client: MACs, addresses and ports
//!    swapped, `seq` = the segment's `ack_seq`, `ack` = its `seq` + payload length (+1 for FIN),
//!    a bare 20-byte TCP header (no options, so no PAWS check on the client), payload cut off
//!    with `bpf_skb_change_tail`, IP and TCP checksums computed in full here. It is sent with
//!    `bpf_clone_redirect` to the egress of the device it arrived on, i.e. back to the client.
//!    The helper un-shares the original before sending the clone, so step 2 may edit it.
//! 2. The same skb is rewritten into a bare RST in the original direction (`seq` = the
//!    segment's `seq`, which is exactly the socket's `rcv_nxt`) and returned with
//!    `TC_ACT_OK`, so the local socket is torn down at once and the app's read sees
//!    ECONNRESET instead of data. Dropping (`TC_ACT_SHOT`) would leave it ESTABLISHED.
//!
//! The client sees `Connection reset by peer` on its first read. Headers are built on the stack
//! and written back with `bpf_skb_store_bytes`, so no packet pointer needs re-checking after
//! `change_tail`.
//!
//! # What is not judged but dropped
//! On a STRICT port, IPv4 with options, IPv6 with extension headers and first fragments are
//! dropped (counted as `Dropped`): they could hide the first payload from the parser, and real
//! mesh clients do not send them. Non-first fragments carry no port and cannot be reassembled
//! without the dropped first one. A first payload shorter than 3 bytes is treated as plaintext:
//! TLS stacks write the whole record header at once.

use aya_ebpf::cty::c_long;
use aya_ebpf::{
    bindings::{
        BPF_F_INVALIDATE_HASH, BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::bpf_skb_change_tail,
    macros::{classifier, map},
    maps::LruHashMap,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use gateway_common::{mode, Counter, FlowKey, MAX_PENDING_FLOWS};

use crate::maps::{bump, port_policy};

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPV4_MF_OFFSET: u16 = 0x3fff;
const IPV4_DF: u16 = 0x4000;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

const STORE_FLAGS: u64 = (BPF_F_RECOMPUTE_CSUM | BPF_F_INVALIDATE_HASH) as u64;

/// ISN (host order) of flows to STRICT ports whose first payload is still to be judged.
#[map]
static FLOWS: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(MAX_PENDING_FLOWS, 0);

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
    /// Cannot be judged safely on a STRICT port.
    Drop,
    /// Rewritten into the local RST: deliver it.
    Reset,
}

/// The parts of a TCP segment the decision needs; addresses as read (network order).
struct Segment {
    key: FlowKey,
    port: u16,
    payload_off: usize,
    payload_len: u32,
    tcp: TcpHdr,
}

#[classifier]
pub fn strict(ctx: TcContext) -> i32 {
    match classify(&ctx) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT as i32,
        Verdict::Reset => TC_ACT_OK as i32,
    }
}

fn classify(ctx: &TcContext) -> Verdict {
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return Verdict::Pass;
    };
    match u16::from_be(eth.proto) {
        ETH_P_IP => classify_v4(ctx, &eth),
        ETH_P_IPV6 => classify_v6(ctx, &eth),
        _ => Verdict::Pass,
    }
}

fn classify_v4(ctx: &TcContext, eth: &EthHdr) -> Verdict {
    let Ok(ip) = ctx.load::<Ipv4Hdr>(ETH_LEN) else {
        return Verdict::Pass;
    };
    if ip.proto != IPPROTO_TCP {
        return Verdict::Pass;
    }
    let frag = u16::from_be(ip.frag_off) & IPV4_MF_OFFSET;
    if frag & 0x1fff != 0 {
        // Non-first fragment: no TCP header to read; useless without the first fragment.
        return Verdict::Pass;
    }
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_LEN || ihl > 60 {
        return Verdict::Pass;
    }
    let Ok(tcp) = ctx.load::<TcpHdr>(ETH_LEN + ihl) else {
        return Verdict::Pass;
    };
    let port = u16::from_be(tcp.dport);
    if !is_strict(port) {
        return Verdict::Pass;
    }
    if ihl != IPV4_LEN || frag != 0 {
        bump(Counter::Dropped, port);
        return Verdict::Drop;
    }
    let doff = ((tcp.doff_reserved >> 4) as usize) * 4;
    let ip_len = u16::from_be(ip.tot_len) as usize;
    if doff < TCP_LEN || ip_len < IPV4_LEN + doff {
        return Verdict::Pass;
    }
    let mut key = FlowKey {
        family: 4,
        sport: tcp.sport,
        dport: tcp.dport,
        ..FlowKey::default()
    };
    key.saddr[0] = ip.saddr;
    key.daddr[0] = ip.daddr;
    let seg = Segment {
        key,
        port,
        payload_off: ETH_LEN + IPV4_LEN + doff,
        payload_len: (ip_len - IPV4_LEN - doff) as u32,
        tcp,
    };
    match judge(ctx, &seg) {
        Judgement::Let => Verdict::Pass,
        Judgement::Refuse => Verdict::Drop,
        Judgement::Plaintext => reset_v4(ctx, eth, &ip, &seg),
    }
}

fn classify_v6(ctx: &TcContext, eth: &EthHdr) -> Verdict {
    let Ok(ip) = ctx.load::<Ipv6Hdr>(ETH_LEN) else {
        return Verdict::Pass;
    };
    if ip.next_header != IPPROTO_TCP {
        if is_extension_header(ip.next_header) && strict_port_behind_extensions(ctx, ip.next_header)
        {
            return Verdict::Drop;
        }
        return Verdict::Pass;
    }
    let Ok(tcp) = ctx.load::<TcpHdr>(ETH_LEN + IPV6_LEN) else {
        return Verdict::Pass;
    };
    let port = u16::from_be(tcp.dport);
    if !is_strict(port) {
        return Verdict::Pass;
    }
    let doff = ((tcp.doff_reserved >> 4) as usize) * 4;
    let ip_payload = u16::from_be(ip.payload_len) as usize;
    if doff < TCP_LEN || ip_payload < doff {
        return Verdict::Pass;
    }
    let seg = Segment {
        key: FlowKey {
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport: tcp.sport,
            dport: tcp.dport,
            family: 6,
        },
        port,
        payload_off: ETH_LEN + IPV6_LEN + doff,
        payload_len: (ip_payload - doff) as u32,
        tcp,
    };
    match judge(ctx, &seg) {
        Judgement::Let => Verdict::Pass,
        Judgement::Refuse => Verdict::Drop,
        Judgement::Plaintext => reset_v6(ctx, eth, &ip, &seg),
    }
}

fn is_extension_header(next: u8) -> bool {
    // Hop-by-hop, routing, fragment, destination options.
    matches!(next, 0 | 43 | 44 | 60)
}

/// Walks up to four IPv6 extension headers; true (and counted) when a TCP header to a STRICT
/// port sits behind them, or when a fragment header hides what follows.
fn strict_port_behind_extensions(ctx: &TcContext, first: u8) -> bool {
    let mut next = first;
    let mut off = ETH_LEN + IPV6_LEN;
    for _ in 0..4 {
        if next == 44 {
            // A fragment: the port may not even be in this packet. Judge only what we can see.
            let Ok(hdr) = ctx.load::<[u8; 8]>(off) else {
                return false;
            };
            let offset = u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8;
            if offset != 0 || hdr[0] != IPPROTO_TCP {
                return false;
            }
            next = hdr[0];
            off += 8;
            break;
        }
        if !is_extension_header(next) {
            break;
        }
        let Ok(hdr) = ctx.load::<[u8; 2]>(off) else {
            return false;
        };
        next = hdr[0];
        off += (hdr[1] as usize + 1) * 8;
    }
    if next != IPPROTO_TCP {
        return false;
    }
    let Ok(tcp) = ctx.load::<TcpHdr>(off) else {
        return false;
    };
    let port = u16::from_be(tcp.dport);
    if is_strict(port) {
        bump(Counter::Dropped, port);
        return true;
    }
    false
}

fn is_strict(port: u16) -> bool {
    matches!(port_policy(port), Some(p) if p.mode == mode::STRICT)
}

enum Judgement {
    /// Not the first payload, or a TLS handshake.
    Let,
    /// Must not reach the socket, but is not a plaintext first payload (data on a SYN).
    Refuse,
    /// A plaintext first payload: reset the flow.
    Plaintext,
}

fn judge(ctx: &TcContext, seg: &Segment) -> Judgement {
    let flags = seg.tcp.flags;
    let seq = u32::from_be(seg.tcp.seq);
    if flags & TCP_RST != 0 {
        let _ = FLOWS.remove(seg.key);
        return Judgement::Let;
    }
    if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
        if seg.payload_len > 0 {
            // TCP Fast Open data would reach the app with the handshake: judge it here.
            if starts_with_tls_handshake(ctx, seg) {
                bump(Counter::Passed, seg.port);
                return Judgement::Let;
            }
            bump(Counter::Dropped, seg.port);
            return Judgement::Refuse;
        }
        // A failed insert only means this flow goes unjudged; nothing better to do here.
        let _ = FLOWS.insert(seg.key, seq, 0);
        return Judgement::Let;
    }
    // SAFETY: plain u32 copied out at once.
    let Some(isn) = (unsafe { FLOWS.get(seg.key) }).copied() else {
        return Judgement::Let;
    };
    if flags & TCP_FIN != 0 && seg.payload_len == 0 {
        let _ = FLOWS.remove(seg.key);
        return Judgement::Let;
    }
    if seq != isn.wrapping_add(1) || seg.payload_len == 0 {
        return Judgement::Let;
    }
    if starts_with_tls_handshake(ctx, seg) {
        bump(Counter::Passed, seg.port);
        debug!(ctx, "strict: port {} TLS first payload passed", seg.port);
        return Judgement::Let;
    }
    let _ = FLOWS.remove(seg.key);
    Judgement::Plaintext
}

/// `16 03 01..04`: a TLS handshake record, versions TLS 1.0 to 1.3 on the record layer.
fn starts_with_tls_handshake(ctx: &TcContext, seg: &Segment) -> bool {
    if seg.payload_len < 3 {
        return false;
    }
    match ctx.load::<[u8; 3]>(seg.payload_off) {
        Ok(head) => head[0] == 0x16 && head[1] == 0x03 && (0x01..=0x04).contains(&head[2]),
        Err(_) => false,
    }
}

/// The `ack` of the RST back to the client: everything it sent in this segment.
fn reply_ack(seg: &Segment) -> u32 {
    let fin = (seg.tcp.flags & TCP_FIN != 0) as u32;
    u32::from_be(seg.tcp.seq)
        .wrapping_add(seg.payload_len)
        .wrapping_add(fin)
        .to_be()
}

/// RST|ACK to the client, and a bare RST in the original direction for the local socket.
fn rst_headers(seg: &Segment) -> (TcpHdr, TcpHdr) {
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
        seq: seg.tcp.seq,
        ack_seq: 0,
        doff_reserved: ((TCP_LEN / 4) as u8) << 4,
        flags: TCP_RST,
        window: 0,
        check: 0,
        urg_ptr: 0,
    };
    (to_client, to_local)
}

fn reset_v4(ctx: &TcContext, eth: &EthHdr, ip: &Ipv4Hdr, seg: &Segment) -> Verdict {
    let new_len = (ETH_LEN + IPV4_LEN + TCP_LEN) as u32;
    // SAFETY: the helper validates the skb and the length itself.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, new_len, 0) } != 0 {
        bump(Counter::Dropped, seg.port);
        return Verdict::Drop;
    }
    let (mut to_client, mut to_local) = rst_headers(seg);

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

fn reset_v6(ctx: &TcContext, eth: &EthHdr, ip: &Ipv6Hdr, seg: &Segment) -> Verdict {
    let new_len = (ETH_LEN + IPV6_LEN + TCP_LEN) as u32;
    // SAFETY: the helper validates the skb and the length itself.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, new_len, 0) } != 0 {
        bump(Counter::Dropped, seg.port);
        return Verdict::Drop;
    }
    let (mut to_client, mut to_local) = rst_headers(seg);

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
