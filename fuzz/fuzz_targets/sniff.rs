//! The ClientHello sniffer reads the first bytes of every connection, before any TLS state
//! exists, from anyone who can reach a port.
//!
//! Properties:
//! - `classify` never panics, whatever the bytes.
//! - Its answer is final: once a prefix is classified as anything but `NeedMore`, every longer
//!   buffer that starts with it gets the same answer (a proxy that re-reads as bytes arrive
//!   must not route a connection one way and then another). In particular a buffer
//!   classified as a ClientHello keeps the same SNI and ALPN when more bytes are appended.
//! - A ClientHello's server name is already lowercase (SNI routing compares it as-is).
//! - It never waits for more than one record: anything at or past `MAX_HELLO` bytes is decided.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::tls::sniff::{classify, FirstBytes, MAX_HELLO};

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    if data.len() >= MAX_HELLO {
        assert_ne!(
            whole,
            FirstBytes::NeedMore,
            "still waiting after {MAX_HELLO} bytes"
        );
    }
    if let FirstBytes::ClientHello(info) = &whole {
        if let Some(name) = &info.server_name {
            assert_eq!(*name, name.to_ascii_lowercase(), "SNI not lowercased");
        }
    }
    // Every prefix is either undecided or already says what the whole buffer says. Checking
    // every cut is quadratic, so take the short ones, the ones around the record's end, and a
    // spread of others.
    let record_end = data
        .get(3..5)
        .map(|l| 5 + usize::from(u16::from_be_bytes([l[0], l[1]])));
    let mut cuts: Vec<usize> = (0..data.len().min(12)).collect();
    if let Some(end) = record_end {
        cuts.extend([end.saturating_sub(1), end, end + 1]);
    }
    let step = (data.len() / 16).max(1);
    cuts.extend((0..data.len()).step_by(step));
    for cut in cuts.into_iter().filter(|&c| c <= data.len()) {
        let prefix = classify(&data[..cut]);
        if prefix != FirstBytes::NeedMore {
            assert_eq!(
                prefix,
                whole,
                "the first {cut} bytes decided differently from all {} bytes",
                data.len()
            );
        }
    }
    // Appending bytes to a decided buffer changes nothing.
    if whole != FirstBytes::NeedMore {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00GET / HTTP/1.1\r\n");
        assert_eq!(
            classify(&longer),
            whole,
            "appending bytes changed the answer"
        );
    }
});
