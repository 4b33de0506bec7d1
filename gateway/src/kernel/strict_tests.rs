//! The STRICT classifier run on crafted packets with `BPF_PROG_TEST_RUN` (root only; skipped
//! loudly otherwise). Each test runs on a thread that has its own fresh network namespace, so
//! the program's socket lookups see only the sockets the test made, and the RST the program
//! sends back goes nowhere else.
//!
//! Return values are the classifier's: `TC_ACT_UNSPEC` (-1) passes the packet untouched,
//! `TC_ACT_SHOT` (2) drops it, `TC_ACT_OK` (0) delivers the skb rewritten into a RST for the
//! local socket (the RST to the client went out as a clone).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{Array, HashMap};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use gateway_common::{mode, KernelConfig, PortPolicy, MAP_CONFIG, MAP_PORTS, PROG_STRICT};

use super::EBPF_OBJECT;

const PASS: u32 = u32::MAX; // TC_ACT_UNSPEC
const RESET: u32 = 0; // TC_ACT_OK with the skb rewritten into the local RST
const DROP: u32 = 2; // TC_ACT_SHOT

const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const SERVER4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;

// ---------------------------------------------------------------------------------------------
// Loading, maps, test runs.

/// The loaded object with the strict program ready to run.
struct Strict {
    ebpf: Ebpf,
}

impl Strict {
    fn load() -> Self {
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .unwrap_or_else(|e| panic!("loading the object: {e}"));
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROG_STRICT)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("no strict program"));
        prog.load()
            .unwrap_or_else(|e| panic!("the verifier refused strict: {e:?}"));
        Self { ebpf }
    }

    fn port(&mut self, port: u16, mode: u8) -> &mut Self {
        let mut ports: HashMap<_, u16, PortPolicy> = self
            .ebpf
            .map_mut(MAP_PORTS)
            .and_then(|m| HashMap::try_from(m).ok())
            .unwrap_or_else(|| panic!("no PORTS map"));
        let policy = PortPolicy {
            mode,
            ..PortPolicy::default()
        };
        ports
            .insert(port, policy, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        self
    }

    fn config(&mut self, config: KernelConfig) -> &mut Self {
        let mut array: Array<_, KernelConfig> = self
            .ebpf
            .map_mut(MAP_CONFIG)
            .and_then(|m| Array::try_from(m).ok())
            .unwrap_or_else(|| panic!("no CONFIG map"));
        array.set(0, config, 0).unwrap_or_else(|e| panic!("{e}"));
        self
    }

    /// Port 80 STRICT, nothing else: the shape of `kernel attach --port 80=strict`.
    fn port80() -> Self {
        let mut s = Self::load();
        s.port(80, mode::STRICT).config(KernelConfig {
            strict_anywhere: 1,
            ..KernelConfig::default()
        });
        s
    }

    /// Runs the program on `frame`; returns its return value and the packet it left.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self
            .ebpf
            .program(PROG_STRICT)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("no strict program"));
        let fd = prog.fd().unwrap_or_else(|e| panic!("{e}"));
        test_run(fd.as_fd().as_raw_fd(), frame, 0)
    }

    /// [`Strict::run`] as if `frame` arrived on the device `ifindex` (the kernel's test run
    /// otherwise puts every packet on `lo`).
    fn run_on(&mut self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self
            .ebpf
            .program(PROG_STRICT)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("no strict program"));
        let fd = prog.fd().unwrap_or_else(|e| panic!("{e}"));
        test_run(fd.as_fd().as_raw_fd(), frame, ifindex)
    }
}

/// `union bpf_attr`'s `test` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The leading part of `struct __sk_buff` up to `ifindex`, the only field set here: the
/// kernel accepts a shorter context and zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct SkBuffCtx {
    before_ifindex: [u32; 10],
    ifindex: u32,
}

/// Runs the program on `frame`; with `ifindex` non-zero, as arriving on that device.
fn test_run(prog_fd: i32, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; 2048];
    let ctx = SkBuffCtx {
        ifindex,
        ..SkBuffCtx::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    if ifindex != 0 {
        attr.ctx_size_in = std::mem::size_of::<SkBuffCtx>() as u32;
        attr.ctx_in = &ctx as *const SkBuffCtx as u64;
    }
    // SAFETY: attr points at buffers that outlive the call; sizes match them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    out.truncate(attr.data_size_out as usize);
    (attr.retval, out)
}

/// Runs `f` as root on a thread in a fresh network namespace with loopback up and the test
/// addresses on it; prints a loud skip when not root.
fn in_fresh_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("\n!!!!! SKIPPED {name}: needs root (BPF_PROG_TEST_RUN, netns) !!!!!\n");
        return;
    }
    let handle = std::thread::spawn(move || {
        // SAFETY: moves only this thread into a new network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", "10.77.0.1/32", "dev", "lo"],
            &["addr", "add", "10.77.0.2/32", "dev", "lo"],
            &["addr", "add", "fd00:77::1/128", "dev", "lo", "nodad"],
            &["addr", "add", "fd00:77::2/128", "dev", "lo", "nodad"],
        ] {
            // A child forked from this thread starts in its network namespace.
            let status = std::process::Command::new("ip").args(args).status();
            assert!(matches!(status, Ok(s) if s.success()), "ip {args:?}");
        }
        f();
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------------------------------------
// Packets.

#[derive(Clone)]
struct Tcp {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    options: Vec<u8>,
    payload: Vec<u8>,
}

impl Tcp {
    fn v4(dport: u16, flags: u8, seq: u32, payload: &[u8]) -> Self {
        Self {
            src: SocketAddr::new(IpAddr::V4(CLIENT4), 40000),
            dst: SocketAddr::new(IpAddr::V4(SERVER4), dport),
            seq,
            ack: 7000,
            flags,
            options: Vec::new(),
            payload: payload.to_vec(),
        }
    }

    fn v6(dport: u16, flags: u8, seq: u32, payload: &[u8]) -> Self {
        Self {
            src: SocketAddr::new(IpAddr::V6(CLIENT6), 40000),
            dst: SocketAddr::new(IpAddr::V6(SERVER6), dport),
            ..Self::v4(dport, flags, seq, payload)
        }
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(20);
        h.extend(self.src.port().to_be_bytes());
        h.extend(self.dst.port().to_be_bytes());
        h.extend(self.seq.to_be_bytes());
        h.extend(self.ack.to_be_bytes());
        let doff = (20 + self.options.len()) / 4;
        h.extend([(doff as u8) << 4, self.flags, 0xff, 0xff, 0, 0, 0, 0]);
        h.extend(&self.options);
        h
    }

    /// The TCP header and payload (checksum left zero: tc does not verify it).
    fn segment(&self) -> Vec<u8> {
        let mut s = self.header();
        s.extend(&self.payload);
        s
    }

    /// The whole Ethernet frame.
    fn frame(&self) -> Vec<u8> {
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => frame_v4(s, d, 6, 0, &self.segment()),
            (IpAddr::V6(s), IpAddr::V6(d)) => frame_v6(s, d, &[], 6, &self.segment()),
            _ => unreachable!("mixed families"),
        }
    }
}

fn eth(proto: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend(proto.to_be_bytes());
    f
}

fn frame_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(0x0800);
    f.extend([0x45, 0]);
    f.extend(((20 + l4.len()) as u16).to_be_bytes());
    f.extend([0, 1]);
    f.extend(frag.to_be_bytes());
    f.extend([64, proto, 0, 0]);
    f.extend(src.octets());
    f.extend(dst.octets());
    f.extend(l4);
    f
}

/// IPv6 with extension headers `ext` (each: its type and its bytes, next-header included).
fn frame_v6(src: Ipv6Addr, dst: Ipv6Addr, ext: &[(u8, Vec<u8>)], upper: u8, l4: &[u8]) -> Vec<u8> {
    let ext_len: usize = ext.iter().map(|(_, b)| b.len()).sum();
    let mut f = eth(0x86dd);
    f.extend([0x60, 0, 0, 0]);
    f.extend(((ext_len + l4.len()) as u16).to_be_bytes());
    f.push(ext.first().map_or(upper, |(t, _)| *t));
    f.push(64);
    f.extend(src.octets());
    f.extend(dst.octets());
    for (_, bytes) in ext {
        f.extend(bytes);
    }
    f.extend(l4);
    f
}

/// Destination Options (type 60) of 8 bytes pointing at `next`.
fn dest_opts(next: u8) -> (u8, Vec<u8>) {
    (60, vec![next, 0, 1, 4, 0, 0, 0, 0])
}

/// A Fragment header (type 44): `offset` in 8-byte units, more-fragments flag.
fn fragment(next: u8, offset: u16, more: bool) -> (u8, Vec<u8>) {
    let field = (offset << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend(field.to_be_bytes());
    h.extend([0, 0, 0, 42]);
    (44, h)
}

/// The start of a real-looking ClientHello: record header, handshake header, version, then
/// `body_len` bytes of body.
fn client_hello(body_len: usize) -> Vec<u8> {
    let hello_len = 2 + body_len; // legacy_version + the rest
    let record_len = 4 + hello_len;
    let mut b = vec![0x16, 0x03, 0x01];
    b.extend((record_len as u16).to_be_bytes());
    b.push(0x01);
    b.extend(&(hello_len as u32).to_be_bytes()[1..]);
    b.extend([0x03, 0x03]);
    b.extend(std::iter::repeat_n(0x5a, body_len));
    b
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// The local RST the program leaves in the skb: flags and sequence number.
fn local_rst(frame: &[u8], v6: bool) -> (u8, u32) {
    let tcp = if v6 { 14 + 40 } else { 14 + 20 };
    let seq = u32::from_be_bytes([
        frame[tcp + 4],
        frame[tcp + 5],
        frame[tcp + 6],
        frame[tcp + 7],
    ]);
    (frame[tcp + 13], seq)
}

// ---------------------------------------------------------------------------------------------
// The first payload's content.

#[test]
fn plaintext_is_reset_and_a_client_hello_passes_on_both_families() {
    in_fresh_netns("strict plaintext/hello", || {
        let mut s = Strict::port80();
        for make in [Tcp::v4, Tcp::v6] {
            let v6 = make(80, 0, 0, b"").dst.is_ipv6();
            let (rc, out) = s.run(&make(80, PSH_ACK, 1001, GET).frame());
            assert_eq!(rc, RESET, "plaintext v6={v6}");
            assert_eq!(
                local_rst(&out, v6),
                (RST, 1001),
                "RST at the segment's seq, v6={v6}"
            );
            let (rc, _) = s.run(&make(80, PSH_ACK, 1001, &client_hello(300)).frame());
            assert_eq!(rc, PASS, "ClientHello v6={v6}");
            // Another port is not ours.
            let (rc, _) = s.run(&make(81, PSH_ACK, 1001, GET).frame());
            assert_eq!(rc, PASS, "port 81 v6={v6}");
        }
    });
}

#[test]
fn three_tls_bytes_are_not_a_client_hello() {
    in_fresh_netns("strict hello check", || {
        let mut s = Strict::port80();
        let good = client_hello(300);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "line protocol behind 16 03 01",
                b"\x16\x03\x01\nSET k v\r\nGET k\r\n".to_vec(),
            ),
            ("record header only", good[..5].to_vec()),
            ("ten bytes", good[..10].to_vec()),
        ];
        let mut wrong_type = good.clone();
        wrong_type[5] = 0x02; // ServerHello
        cases.push(("handshake type 2", wrong_type));
        let mut lengths = good.clone();
        lengths[8] ^= 0x01; // handshake length one off the record's
        cases.push(("lengths disagree", lengths));
        let mut version = good.clone();
        version[10] = 0x04; // legacy_version 3.4 does not exist
        cases.push(("legacy_version 3.4", version));
        let mut record = good.clone();
        record[2] = 0x00; // SSL 3.0 record
        cases.push(("record version 3.0", record));
        let mut alert = good.clone();
        alert[0] = 0x15;
        cases.push(("alert record", alert));
        for (what, payload) in cases {
            for make in [Tcp::v4, Tcp::v6] {
                let (rc, _) = s.run(&make(80, PSH_ACK, 5, &payload).frame());
                assert_eq!(rc, RESET, "{what}");
            }
        }
        // The smallest hello a TLS stack could write, and a record of the maximum size that
        // a longer handshake message fills.
        let (rc, _) = s.run(&Tcp::v4(80, PSH_ACK, 5, &client_hello(39)).frame());
        assert_eq!(rc, PASS, "minimal hello");
        let mut split = client_hello(300);
        split[3..5].copy_from_slice(&16384u16.to_be_bytes());
        split[6..9].copy_from_slice(&[0, 0x50, 0]);
        let (rc, _) = s.run(&Tcp::v4(80, PSH_ACK, 5, &split).frame());
        assert_eq!(rc, PASS, "hello longer than one record");
    });
}

#[test]
fn syn_payload_is_judged_and_never_marks_a_flow() {
    in_fresh_netns("strict syn payload", || {
        let mut s = Strict::port80();
        for make in [Tcp::v4, Tcp::v6] {
            let (rc, _) = s.run(&make(80, SYN, 1000, b"\x16\x03\x01").frame());
            assert_eq!(rc, DROP, "SYN with three TLS-looking bytes");
            let (rc, _) = s.run(&make(80, SYN, 1000, b"").frame());
            assert_eq!(rc, PASS, "bare SYN");
            // Whatever the SYNs said, the data at ISN+1 is judged on its own.
            let (rc, _) = s.run(&make(80, PSH_ACK, 1001, GET).frame());
            assert_eq!(rc, RESET, "plaintext after the SYNs");
            // RST, zero-length FIN, SYN with another ISN: nothing to remember, nothing to forget.
            for flags in [RST, FIN_ACK] {
                let (rc, _) = s.run(&make(80, flags, 1001, b"").frame());
                assert_eq!(rc, PASS);
            }
            let (rc, _) = s.run(&make(80, SYN, 99, b"").frame());
            assert_eq!(rc, PASS);
            let (rc, _) = s.run(&make(80, PSH_ACK, 1001, GET).frame());
            assert_eq!(rc, RESET, "plaintext after RST/FIN/SYN");
        }
    });
}

#[test]
fn a_syn_offering_mptcp_is_dropped() {
    in_fresh_netns("strict mptcp", || {
        let mut s = Strict::port80();
        // MSS, SACK permitted, timestamps, NOP, window scale: what every client sends.
        let plain = vec![
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        // The same, then MP_CAPABLE (v1, 4 bytes) padded with NOPs.
        let mut mptcp = plain.clone();
        mptcp.extend([30, 4, 0x10, 0x01]);
        for make in [Tcp::v4, Tcp::v6] {
            let mut syn = make(80, SYN, 1000, b"");
            syn.options = plain.clone();
            assert_eq!(s.run(&syn.frame()).0, PASS, "ordinary SYN");
            syn.options = mptcp.clone();
            assert_eq!(s.run(&syn.frame()).0, DROP, "SYN with MP_CAPABLE");
            syn.dst.set_port(81);
            assert_eq!(
                s.run(&syn.frame()).0,
                PASS,
                "MPTCP to a port that is not STRICT"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Packet shapes.

#[test]
fn fragments_to_tcp_are_dropped_first_and_later() {
    in_fresh_netns("strict fragments", || {
        let mut s = Strict::port80();
        let seg = Tcp::v4(80, PSH_ACK, 5, GET).segment();
        // First fragment with only 8 bytes of TCP header (ports, seq), more to come.
        let first = frame_v4(CLIENT4, SERVER4, 6, 0x2000, &seg[..8]);
        assert_eq!(s.run(&first).0, DROP, "IPv4 first fragment");
        // The rest: no TCP header at all, offset 1 (8 bytes).
        let later = frame_v4(CLIENT4, SERVER4, 6, 1, &seg[8..]);
        assert_eq!(s.run(&later).0, DROP, "IPv4 later fragment");
        // A later fragment to any port is dropped too: its port is unknowable.
        let other = Tcp::v4(81, PSH_ACK, 5, GET).segment();
        let later81 = frame_v4(CLIENT4, SERVER4, 6, 1, &other[8..]);
        assert_eq!(s.run(&later81).0, DROP, "IPv4 later fragment, any port");
        // UDP fragments are not TCP.
        assert_eq!(
            s.run(&frame_v4(CLIENT4, SERVER4, 17, 0x2000, &[0; 16])).0,
            PASS
        );

        let seg6 = Tcp::v6(80, PSH_ACK, 5, GET).segment();
        let first6 = frame_v6(CLIENT6, SERVER6, &[fragment(6, 0, true)], 6, &seg6[..8]);
        assert_eq!(s.run(&first6).0, DROP, "IPv6 first fragment");
        let later6 = frame_v6(CLIENT6, SERVER6, &[fragment(6, 1, false)], 6, &seg6[8..]);
        assert_eq!(s.run(&later6).0, DROP, "IPv6 later fragment");
        let frag_then_opts = frame_v6(
            CLIENT6,
            SERVER6,
            &[fragment(60, 0, false), dest_opts(6)],
            6,
            &seg6,
        );
        assert_eq!(s.run(&frag_then_opts).0, DROP, "Fragment + DestOpts");
    });
}

#[test]
fn ipv6_extension_chains_to_a_strict_port_are_dropped() {
    in_fresh_netns("strict ipv6 extension headers", || {
        let mut s = Strict::port80();
        let seg = Tcp::v6(80, PSH_ACK, 5, GET).segment();
        let five: Vec<(u8, Vec<u8>)> = std::iter::repeat_n(dest_opts(60), 4)
            .chain([dest_opts(6)])
            .collect();
        assert_eq!(
            s.run(&frame_v6(CLIENT6, SERVER6, &five, 6, &seg)).0,
            DROP,
            "5 DestOpts"
        );
        let nine: Vec<(u8, Vec<u8>)> = std::iter::repeat_n(dest_opts(60), 8)
            .chain([dest_opts(6)])
            .collect();
        assert_eq!(
            s.run(&frame_v6(CLIENT6, SERVER6, &nine, 6, &seg)).0,
            DROP,
            "a chain longer than the walk"
        );
        let hbh = vec![(0u8, vec![6, 0, 1, 4, 0, 0, 0, 0])];
        assert_eq!(
            s.run(&frame_v6(CLIENT6, SERVER6, &hbh, 6, &seg)).0,
            DROP,
            "hop-by-hop"
        );
        let other = Tcp::v6(81, PSH_ACK, 5, GET).segment();
        let to81 = frame_v6(CLIENT6, SERVER6, &[dest_opts(6)], 6, &other);
        assert_eq!(
            s.run(&to81).0,
            PASS,
            "DestOpts to a port that is not STRICT"
        );
        let udp = frame_v6(CLIENT6, SERVER6, &[dest_opts(17)], 17, &[0; 16]);
        assert_eq!(s.run(&udp).0, PASS, "DestOpts then UDP");
    });
}

/// IPv4 or IPv6 inside IPv6, with or without an SRv6 routing header in front: Linux's SRv6
/// decapsulates such packets with no further tc pass (attack review: plaintext reached the
/// app), so while anything is STRICT they are dropped; with nothing STRICT they pass.
#[test]
fn packets_encapsulated_in_ipv6_are_dropped_while_anything_is_strict() {
    in_fresh_netns("strict encapsulated in ipv6", || {
        let inner_v4 = frame_v4(
            CLIENT4,
            SERVER4,
            6,
            0,
            &Tcp::v4(80, PSH_ACK, 5, GET).segment(),
        )[14..]
            .to_vec();
        let inner_v6 = Tcp::v6(80, PSH_ACK, 5, GET).frame()[14..].to_vec();
        // A Segment Routing Header (routing type 4) with one segment, segments left 0.
        let srh = |next: u8| {
            let mut h = vec![next, 2, 4, 0, 0, 0, 0, 0];
            h.extend(SERVER6.octets());
            (43u8, h)
        };
        let cases = [
            (
                "IPv4 in IPv6",
                frame_v6(CLIENT6, SERVER6, &[], 4, &inner_v4),
            ),
            (
                "IPv6 in IPv6",
                frame_v6(CLIENT6, SERVER6, &[], 41, &inner_v6),
            ),
            (
                "SRH, then IPv4",
                frame_v6(CLIENT6, SERVER6, &[srh(4)], 4, &inner_v4),
            ),
            (
                "SRH, then IPv6",
                frame_v6(CLIENT6, SERVER6, &[srh(41)], 41, &inner_v6),
            ),
            (
                "DestOpts, then IPv4",
                frame_v6(CLIENT6, SERVER6, &[dest_opts(4)], 4, &inner_v4),
            ),
        ];
        let mut strict = Strict::port80();
        for (what, frame) in &cases {
            assert_eq!(strict.run(frame).0, DROP, "{what}, port 80 STRICT");
        }
        let mut nothing_strict = Strict::load();
        for (what, frame) in &cases {
            assert_eq!(nothing_strict.run(frame).0, PASS, "{what}, nothing STRICT");
        }
    });
}

#[test]
fn vlan_tags_in_the_packet_are_walked() {
    in_fresh_netns("strict vlan", || {
        let mut s = Strict::port80();
        for (what, tags) in [("802.1Q", vec![0x8100u16]), ("QinQ", vec![0x88a8, 0x8100])] {
            let inner = Tcp::v4(80, PSH_ACK, 5, GET).frame();
            let mut frame = eth(tags[0]);
            for (i, _) in tags.iter().enumerate() {
                let next = tags.get(i + 1).copied().unwrap_or(0x0800);
                frame.extend([0, 0]); // VID 0: the stack strips it and delivers to the parent
                frame.extend(next.to_be_bytes());
            }
            frame.extend(&inner[14..]);
            assert_eq!(s.run(&frame).0, DROP, "{what} plaintext");
        }
        let mut deep = eth(0x8100);
        for _ in 0..3 {
            deep.extend([0, 0, 0x81, 0x00]);
        }
        deep.extend([0, 0, 0x08, 0x00]);
        deep.extend(&Tcp::v4(80, PSH_ACK, 5, GET).frame()[14..]);
        assert_eq!(s.run(&deep).0, DROP, "four tags");
    });
}

#[test]
fn ipv4_options_and_big_tcp_lengths() {
    in_fresh_netns("strict ipv4 options, BIG TCP", || {
        let mut s = Strict::port80();
        let seg = Tcp::v4(80, PSH_ACK, 5, GET).segment();
        let mut opts = frame_v4(CLIENT4, SERVER4, 6, 0, &[]);
        opts[14] = 0x46; // IHL 6: one word of options
        opts[16..18].copy_from_slice(&((24 + seg.len()) as u16).to_be_bytes());
        opts.extend([1, 1, 1, 0]); // NOP NOP NOP EOL
        opts.extend(&seg);
        assert_eq!(s.run(&opts).0, DROP, "IPv4 options");
        // BIG TCP: total length 0, the payload is what the skb holds.
        let mut big = Tcp::v4(80, PSH_ACK, 5, GET).frame();
        big[16..18].copy_from_slice(&[0, 0]);
        assert_eq!(s.run(&big).0, RESET, "IPv4 total length 0");
        let mut big6 = Tcp::v6(80, PSH_ACK, 5, GET).frame();
        big6[18..20].copy_from_slice(&[0, 0]);
        assert_eq!(s.run(&big6).0, RESET, "IPv6 payload length 0");
    });
}

// ---------------------------------------------------------------------------------------------
// Which ports.

#[test]
fn the_default_covers_unnamed_ports_and_entries_are_exceptions() {
    in_fresh_netns("strict default mode", || {
        let mut s = Strict::load();
        s.port(9000, mode::DISABLE).config(KernelConfig {
            default_mode: mode::STRICT,
            strict_anywhere: 1,
            ephemeral_low: 32768,
            ephemeral_high: 60999,
            ..KernelConfig::default()
        });
        for make in [Tcp::v4, Tcp::v6] {
            assert_eq!(
                s.run(&make(6379, PSH_ACK, 5, GET).frame()).0,
                RESET,
                "unnamed port"
            );
            assert_eq!(
                s.run(&make(9000, PSH_ACK, 5, GET).frame()).0,
                PASS,
                "DISABLE exception"
            );
            // Replies to the node's own connects arrive on ephemeral ports.
            assert_eq!(
                s.run(&make(40001, PSH_ACK, 5, GET).frame()).0,
                PASS,
                "ephemeral"
            );
        }
        // An entry of its own makes an ephemeral port STRICT.
        s.port(40001, mode::STRICT);
        assert_eq!(s.run(&Tcp::v4(40001, PSH_ACK, 5, GET).frame()).0, RESET);
        // Loopback destinations: the terminator's hop to the app.
        let mut lo = Tcp::v4(6379, PSH_ACK, 5, GET);
        lo.dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6379);
        assert_eq!(s.run(&lo.frame()).0, PASS, "127.0.0.1");
        let mut lo6 = Tcp::v6(6379, PSH_ACK, 5, GET);
        lo6.dst = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 6379);
        assert_eq!(s.run(&lo6.frame()).0, PASS, "::1");
    });
}

/// A loopback destination arriving on a device other than `lo` reaches a local app only
/// through `route_localnet=1` or a DNAT to 127.0.0.1, i.e. from the wire: it is dropped
/// whatever its port (a DNAT may still change the port) while anything is STRICT, and still
/// passes on `lo`, where the terminator talks to the app.
#[test]
fn loopback_destinations_from_another_device_are_dropped() {
    in_fresh_netns("strict loopback from the wire", || {
        let status = std::process::Command::new("ip")
            .args([
                "link", "add", "pcx0", "type", "veth", "peer", "name", "pcx1",
            ])
            .status();
        assert!(matches!(status, Ok(s) if s.success()), "ip link add veth");
        // SAFETY: a NUL-terminated name.
        let veth = unsafe { libc::if_nametoindex(c"pcx0".as_ptr()) };
        assert!(veth > 1, "no ifindex for pcx0");
        let mut s = Strict::port80();
        s.port(9000, mode::DISABLE);
        let v4mapped: Ipv6Addr = "::ffff:127.0.0.1".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        let dests = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(v4mapped),
        ];
        for dst in dests {
            let make = if dst.is_ipv4() { Tcp::v4 } else { Tcp::v6 };
            // A DISABLE port, an unnamed port, a TLS hello and a bare SYN: all dropped.
            for (port, flags, payload) in [
                (80, PSH_ACK, GET),
                (9000, PSH_ACK, GET),
                (40000, PSH_ACK, GET),
                (80, SYN, &b""[..]),
                (80, PSH_ACK, &client_hello(100)[..]),
            ] {
                let mut t = make(port, flags, 5, payload);
                t.dst = SocketAddr::new(dst, port);
                assert_eq!(
                    s.run_on(veth, &t.frame()).0,
                    DROP,
                    "{dst}:{port} flags {flags:#x} on a veth"
                );
                // On lo the same packet is judged by its port as before.
                let on_lo = s.run(&t.frame()).0;
                assert_ne!(on_lo, DROP, "{dst}:{port} flags {flags:#x} on lo");
            }
            // Through an extension header chain too (IPv6).
            if let IpAddr::V6(d6) = dst {
                let t = Tcp::v6(9000, PSH_ACK, 5, GET);
                let frame = frame_v6(CLIENT6, d6, &[dest_opts(6)], 6, &t.segment());
                assert_eq!(s.run_on(veth, &frame).0, DROP, "{dst} behind dest opts");
            }
        }
        // Other destinations on the veth are judged as before.
        assert_eq!(
            s.run_on(veth, &Tcp::v4(80, PSH_ACK, 5, GET).frame()).0,
            RESET
        );
        assert_eq!(
            s.run_on(veth, &Tcp::v6(9000, PSH_ACK, 5, GET).frame()).0,
            PASS
        );
        // With nothing STRICT the daemon does not police routing.
        s.port(80, mode::PERMISSIVE).config(KernelConfig::default());
        let mut t = Tcp::v4(80, PSH_ACK, 5, GET);
        t.dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80);
        assert_eq!(s.run_on(veth, &t.frame()).0, PASS, "nothing STRICT");
    });
}

// ---------------------------------------------------------------------------------------------
// Judging against the socket.

/// A connection made over loopback in the test's namespace: the server side's 4-tuple and its
/// `rcv_nxt`, read through TCP_REPAIR.
struct Conn {
    client: TcpStream,
    server: TcpStream,
}

const TCP_REPAIR: libc::c_int = 19;
const TCP_REPAIR_QUEUE: libc::c_int = 20;
const TCP_QUEUE_SEQ: libc::c_int = 21;
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;

impl Conn {
    fn open(server_ip: IpAddr, client_ip: IpAddr) -> Self {
        let listener =
            TcpListener::bind(SocketAddr::new(server_ip, 80)).unwrap_or_else(|e| panic!("{e}"));
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(SocketAddr::new(client_ip, 0)),
            socket2::Type::STREAM,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        socket
            .bind(&SocketAddr::new(client_ip, 0).into())
            .unwrap_or_else(|e| panic!("{e}"));
        socket
            .connect(&SocketAddr::new(server_ip, 80).into())
            .unwrap_or_else(|e| panic!("{e}"));
        let (server, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        Self {
            client: socket.into(),
            server,
        }
    }

    /// The server socket's next expected sequence number.
    fn rcv_nxt(&self) -> u32 {
        let fd = self.server.as_raw_fd();
        let set = |opt, val: libc::c_int| {
            // SAFETY: setsockopt on an owned socket with an int value.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    opt,
                    &val as *const _ as *const libc::c_void,
                    4,
                )
            };
            assert_eq!(
                rc,
                0,
                "setsockopt {opt}: {}",
                std::io::Error::last_os_error()
            );
        };
        set(TCP_REPAIR, 1);
        set(TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
        let mut seq: u32 = 0;
        let mut len: libc::socklen_t = 4;
        // SAFETY: getsockopt into a u32 of the size given.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                TCP_QUEUE_SEQ,
                &mut seq as *mut u32 as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_QUEUE_SEQ: {}", std::io::Error::last_os_error());
        set(TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
        seq
    }

    /// A segment from the client side of this connection.
    fn segment(&self, seq: u32, payload: &[u8]) -> Tcp {
        Tcp {
            src: self.client.local_addr().unwrap_or_else(|e| panic!("{e}")),
            dst: self.server.local_addr().unwrap_or_else(|e| panic!("{e}")),
            seq,
            ack: 1,
            flags: PSH_ACK,
            options: Vec::new(),
            payload: payload.to_vec(),
        }
    }
}

#[test]
fn the_first_payload_byte_is_judged_wherever_the_segment_starts() {
    in_fresh_netns("strict against the socket", || {
        let mut s = Strict::port80();
        for (server, client) in [
            (IpAddr::V4(SERVER4), IpAddr::V4(CLIENT4)),
            (IpAddr::V6(SERVER6), IpAddr::V6(CLIENT6)),
        ] {
            let v6 = server.is_ipv6();
            let conn = Conn::open(server, client);
            let nxt = conn.rcv_nxt();

            // One byte early (at the ISN): Linux trims the first byte, so the bytes from
            // offset 1 are what the app would read. A ClientHello there passes...
            let mut early_hello = vec![b'X'];
            early_hello.extend(client_hello(200));
            let (rc, _) = s.run(&conn.segment(nxt.wrapping_sub(1), &early_hello).frame());
            assert_eq!(rc, PASS, "hello one byte early, v6={v6}");
            // ...and plaintext there is reset, with the local RST at rcv_nxt, where Linux
            // accepts it (not at the segment's seq).
            let mut early_get = client_hello(200)[..1].to_vec();
            early_get.extend(GET);
            let (rc, out) = s.run(&conn.segment(nxt.wrapping_sub(1), &early_get).frame());
            assert_eq!(rc, RESET, "plaintext one byte early, v6={v6}");
            assert_eq!(local_rst(&out, v6), (RST, nxt), "RST at rcv_nxt, v6={v6}");
            // A TLS-looking first byte followed by plaintext from the socket's view.
            let mut hidden = client_hello(200)[..1].to_vec();
            hidden.extend(client_hello(200)[..1].iter());
            hidden.extend(GET);
            let (rc, _) = s.run(&conn.segment(nxt.wrapping_sub(1), &hidden).frame());
            assert_eq!(rc, RESET, "0x16 then plaintext at rcv_nxt, v6={v6}");
            // Ahead of rcv_nxt: waits out of order; the segment that fills the gap is judged.
            let (rc, _) = s.run(&conn.segment(nxt.wrapping_add(10), GET).frame());
            assert_eq!(rc, PASS, "out of order, v6={v6}");
            let (rc, _) = s.run(&conn.segment(nxt, &GET[..10]).frame());
            assert_eq!(rc, RESET, "the gap filler, v6={v6}");
            // Entirely before rcv_nxt: a duplicate of the SYN's sequence space.
            let (rc, _) = s.run(&conn.segment(nxt.wrapping_sub(30), &GET[..20]).frame());
            assert_eq!(rc, PASS, "old duplicate, v6={v6}");

            // Once the socket has taken its first payload (sent for real over loopback, where
            // the program is not attached), later segments are not judged.
            let mut client = conn.client.try_clone().unwrap_or_else(|e| panic!("{e}"));
            client
                .write_all(&client_hello(200))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut server = conn.server.try_clone().unwrap_or_else(|e| panic!("{e}"));
            let mut buf = vec![0u8; 211];
            server
                .read_exact(&mut buf)
                .unwrap_or_else(|e| panic!("{e}"));
            let nxt = conn.rcv_nxt();
            let (rc, _) = s.run(&conn.segment(nxt, b"\x17\x03\x03\x00\x10").frame());
            assert_eq!(rc, PASS, "a later TLS record, v6={v6}");
        }
    });
}

/// Data that meets only the listener (a SYN-cookie ACK, or a segment racing the ACK that is
/// creating the socket on another CPU) cannot be placed in the stream: a segment starting 11
/// bytes early with a ClientHello head used to pass, and TCP then trimmed the head away and
/// delivered the plaintext behind it. Such data is dropped, whatever it holds.
#[test]
fn data_meeting_only_the_listener_is_dropped() {
    in_fresh_netns("strict against the listener", || {
        let mut s = Strict::port80();
        for server in [IpAddr::V4(SERVER4), IpAddr::V6(SERVER6)] {
            let v6 = server.is_ipv6();
            let _listener =
                TcpListener::bind(SocketAddr::new(server, 80)).unwrap_or_else(|e| panic!("{e}"));
            let mut head_then_get = client_hello(200)[..11].to_vec();
            head_then_get.extend(GET);
            for payload in [head_then_get.as_slice(), GET, &client_hello(200)] {
                let seg = if v6 {
                    Tcp::v6(80, PSH_ACK, 1000, payload)
                } else {
                    Tcp::v4(80, PSH_ACK, 1000, payload)
                };
                let (rc, _) = s.run(&seg.frame());
                assert_eq!(rc, DROP, "data meeting the listener, v6={v6}");
            }
        }
    });
}
