//! Path normalization decides which path routes and policies see and the upstream serves:
//! any gap between the two is an authorization bypass.
//!
//! Input: a mode byte, then the path (a request target without its query, as the proxy
//! passes it; hyper hands over any bytes it accepted, so the path is arbitrary text here).
//!
//! Properties, for a path the mode accepts:
//! - `NONE` forwards the path unchanged;
//! - normalizing is idempotent: the result normalizes to itself;
//! - the result is origin-form (starts with `/`) and holds no control character, space,
//!   `#` or non-ASCII byte;
//! - in `BASE` and the merge modes, neither the result nor what an upstream reads after
//!   percent-decoding it once has a `.` or `..` segment, and in the merge modes neither has
//!   an empty segment (`//`): the upstream resolves the same path the policy matched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::path::{normalize, PathNormalization};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, path)) = data.split_first() else {
        return;
    };
    let mode = PathNormalization::ALL[usize::from(mode) % PathNormalization::ALL.len()];
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let Ok(out) = normalize(path, mode) else {
        return;
    };
    if mode == PathNormalization::None {
        assert_eq!(out, path, "NONE changed the path");
        return;
    }
    match normalize(&out, mode) {
        Ok(again) => assert_eq!(again, out, "{mode} is not idempotent on {path:?}"),
        Err(e) => panic!("{mode}: {path:?} -> {out:?}, which is then refused: {e}"),
    }
    assert!(out.starts_with('/'), "{mode}: {path:?} -> {out:?}");
    if let Some(b) = out
        .bytes()
        .find(|&b| b <= b' ' || b == 0x7f || b >= 0x80 || b == b'#')
    {
        panic!("{mode}: {path:?} -> {out:?} holds byte {b:#04x}");
    }
    let merges = matches!(
        mode,
        PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
    );
    let upstream = percent_decode(out.as_bytes());
    for (what, p) in [
        ("result", out.as_bytes()),
        ("decoded result", &upstream[..]),
    ] {
        let segments: Vec<&[u8]> = p[1..].split(|&c| c == b'/').collect();
        let last = segments.len() - 1;
        for (i, s) in segments.iter().enumerate() {
            assert!(
                !matches!(*s, b"." | b".."),
                "{mode}: {path:?} -> {out:?}: the {what} has a dot segment"
            );
            // An empty segment is a `//`, except the one after a trailing `/` (or the root).
            if merges && i != last {
                assert!(
                    !s.is_empty(),
                    "{mode}: {path:?} -> {out:?}: the {what} has an empty segment"
                );
            }
        }
    }
});

/// What an upstream that decodes `%XX` once reads (invalid escapes kept as they are).
fn percent_decode(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(hi), Some(lo)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}
