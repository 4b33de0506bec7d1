use proptest::prelude::*;

use super::PathNormalization::{Base, DecodeAndMergeSlashes, MergeSlashes, None as Untouched};
use super::*;

fn ok(path: &str, mode: PathNormalization) -> String {
    match normalize(path, mode) {
        Ok(p) => p.into_owned(),
        Err(e) => panic!("{path:?} in {mode}: {e}"),
    }
}

fn err(path: &str, mode: PathNormalization) -> PathError {
    match normalize(path, mode) {
        Ok(p) => panic!("{path:?} in {mode} should be refused, got {p:?}"),
        Err(e) => e,
    }
}

#[test]
fn spellings_of_the_walkthrough_path() {
    for path in [
        "/status/418",
        "/status/%34%31%38",
        "/status/41%38",
        "/%73tatus/418",
        "/%73%74%61%74%75%73/%34%31%38",
        "//status/418",
        "/status//418",
        "/./status/418",
        "/status/./418",
        "/status/x/../418",
        "/../status/418",
        "/..",
        "/status/%2e/418",
        "/status/x/%2E%2E/418",
        "/%2e%2e/status/418",
        "/status\\418",
        "\\status/418",
    ] {
        if path == "/.." {
            assert_eq!(ok(path, MergeSlashes), "/");
            continue;
        }
        if path.starts_with('\\') {
            assert_eq!(err(path, MergeSlashes), PathError::NotOriginForm);
            continue;
        }
        assert_eq!(ok(path, MergeSlashes), "/status/418", "{path}");
        assert_eq!(ok(path, DecodeAndMergeSlashes), "/status/418", "{path}");
    }
}

#[test]
fn base_keeps_double_slashes_and_merge_modes_merge_them() {
    assert_eq!(ok("//status//418", Base), "//status//418");
    assert_eq!(ok("//status//418", MergeSlashes), "/status/418");
    assert_eq!(ok("/a//../b", Base), "/a/b");
    assert_eq!(ok("/a/..//b", MergeSlashes), "/b");
}

#[test]
fn none_forwards_as_received_but_refuses_the_malformed() {
    assert_eq!(ok("/status/%34%31%38", Untouched), "/status/%34%31%38");
    assert_eq!(ok("//a/../b%2F;x", Untouched), "//a/../b%2F;x");
    assert_eq!(err("/a%zz", Untouched), PathError::BadEncoding { at: 2 });
    assert_eq!(
        err("/a%00", Untouched),
        PathError::EncodedControl { byte: 0 }
    );
    assert_eq!(err("*", Untouched), PathError::AsteriskForm);
}

#[test]
fn encoded_slashes_need_decode_and_merge_slashes() {
    for path in [
        "/status%2F418",
        "/status%2f418",
        "/status%5C418",
        "/status%5c418",
    ] {
        for mode in [Base, MergeSlashes] {
            assert_eq!(err(path, mode), PathError::EncodedSlash, "{path} {mode}");
        }
        assert_eq!(ok(path, DecodeAndMergeSlashes), "/status/418", "{path}");
    }
    // Decoded before dot segments are resolved, so `..%2F` is a parent reference.
    assert_eq!(
        ok("/status/x/..%2F418", DecodeAndMergeSlashes),
        "/status/418"
    );
}

#[test]
fn malformed_paths_are_refused_in_every_mode() {
    let cases: [(&str, PathError); 10] = [
        ("/a%zz", PathError::BadEncoding { at: 2 }),
        ("/a%", PathError::BadEncoding { at: 2 }),
        ("/a%4", PathError::BadEncoding { at: 2 }),
        ("/a%00", PathError::EncodedControl { byte: 0 }),
        ("/a%0d%0a", PathError::EncodedControl { byte: 0x0d }),
        ("/a%7F", PathError::EncodedControl { byte: 0x7f }),
        ("/a\tb", PathError::BadCharacter { byte: b'\t' }),
        ("/a b", PathError::BadCharacter { byte: b' ' }),
        ("/a#f", PathError::BadCharacter { byte: b'#' }),
        ("status/418", PathError::NotOriginForm),
    ];
    for mode in PathNormalization::ALL {
        for (path, want) in cases {
            assert_eq!(err(path, mode), want, "{path:?} {mode}");
        }
        assert_eq!(err("", mode), PathError::NotOriginForm);
        assert_eq!(err("*", mode), PathError::AsteriskForm);
        assert_eq!(err("/é", mode), PathError::BadCharacter { byte: 0xc3 });
    }
}

#[test]
fn ambiguous_paths_are_refused_unless_none() {
    let cases = [
        ("/%2573tatus/418", PathError::DoubleEncoding),
        ("/status/%25%34%31%38", PathError::DoubleEncoding),
        ("/status/418;x", PathError::PathParameter),
        ("/status/..;/status/418", PathError::PathParameter),
        ("/status/418/..;/", PathError::PathParameter),
        ("/status%c0%af418", PathError::NotUtf8),
        ("/a%e9", PathError::NotUtf8),
        ("/a%C3", PathError::NotUtf8),
    ];
    for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
        for (path, want) in cases {
            assert_eq!(err(path, mode), want, "{path:?} {mode}");
        }
    }
    for (path, _) in cases {
        assert_eq!(ok(path, Untouched), path);
    }
}

#[test]
fn what_is_left_alone() {
    for path in [
        "/STATUS/418",
        "/status/418/",
        "/status/418%20",
        "/a%3Fb",
        "/a%25",
        "/a%25zz",
        "/caf%C3%A9",
        "/a:b@c!$&'()*+,=",
        "/",
    ] {
        assert_eq!(ok(path, MergeSlashes), path, "{path}");
    }
    // Hex digits of what stays encoded are uppercased (RFC 3986 §6.2.2.1).
    assert_eq!(ok("/caf%c3%a9/%3f", MergeSlashes), "/caf%C3%A9/%3F");
    assert_eq!(ok("/status/418/.", MergeSlashes), "/status/418/");
}

#[test]
fn untouched_paths_are_borrowed() {
    assert!(matches!(
        normalize("/status/418", MergeSlashes),
        Ok(Cow::Borrowed(_))
    ));
}

/// Paths over a small alphabet that hits every rule: slashes, dots, `%`, hex digits, letters,
/// backslashes, semicolons.
fn any_path() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("/"),
            Just("."),
            Just(".."),
            Just("%"),
            Just("%2"),
            Just("%2F"),
            Just("%2e"),
            Just("%25"),
            Just("%41"),
            Just("%7e"),
            Just("%c3%a9"),
            Just("%C0%AF"),
            Just("\\"),
            Just(";"),
            Just("a"),
            Just("F"),
            Just("5"),
            Just("-"),
            Just("%3B"),
            Just("%5c"),
        ],
        0..24,
    )
    .prop_map(|parts| format!("/{}", parts.concat()))
}

fn has_encoded_unreserved(p: &str) -> bool {
    let b = p.as_bytes();
    (0..b.len()).any(|i| b[i] == b'%' && matches!(decode_at(b, i), Ok(c) if is_unreserved(c)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn normalization_is_idempotent(path in any_path()) {
        for mode in PathNormalization::ALL {
            if let Ok(once) = normalize(&path, mode) {
                let twice = normalize(&once, mode);
                prop_assert_eq!(twice.as_deref(), Ok(&*once), "{} in {}", path, mode);
            }
        }
    }

    #[test]
    fn normalized_paths_are_canonical(path in any_path()) {
        for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
            let Ok(p) = normalize(&path, mode) else { continue };
            prop_assert!(p.starts_with('/'));
            for bad in ["/./", "/../"] {
                prop_assert!(!p.contains(bad), "{:?} -> {:?} in {}", path, p, mode);
            }
            prop_assert!(!p.ends_with("/.") && !p.ends_with("/.."), "{:?} -> {:?}", path, p);
            prop_assert!(!p.contains('\\'), "{:?} -> {:?}", path, p);
            prop_assert!(!has_encoded_unreserved(&p), "{:?} -> {:?}", path, p);
            prop_assert!(!p.contains(';'), "{:?} -> {:?}", path, p);
            if mode.merges() {
                prop_assert!(!p.contains("//"), "{:?} -> {:?} in {}", path, p, mode);
            }
        }
    }
}

/// One way to write a segment's character: itself, or percent-encoded in either case.
fn spell_char(c: char, how: u8) -> String {
    match how % 3 {
        0 => c.to_string(),
        1 => format!("%{:02X}", c as u32),
        _ => format!("%{:02x}", c as u32),
    }
}

/// Every spelling of `/seg1/seg2/…` an attacker might try: characters encoded at random,
/// `./` and `x/../` inserted, slashes doubled or written as `\`, `%2F` or `%5c`.
fn spelling_of(segments: Vec<String>) -> impl Strategy<Value = (String, bool)> {
    let n: usize = segments.iter().map(|s| s.len() + 1).sum();
    (
        proptest::collection::vec(any::<u8>(), n),
        proptest::collection::vec(0u8..8, segments.len() + 1),
    )
        .prop_map(move |(char_how, sep_how)| {
            let mut out = String::new();
            let mut encoded_slash = false;
            let mut k = 0;
            for (i, seg) in segments.iter().enumerate() {
                out.push_str(match sep_how[i] {
                    0..=2 => "/",
                    3 => "//",
                    4 => "/./",
                    5 => "/zz/../",
                    // Origin-form starts with `/`; after that, `\` is a slash.
                    6 if i == 0 => "/\\",
                    6 => "\\",
                    _ => {
                        encoded_slash = true;
                        if k % 2 == 0 {
                            "/%2F"
                        } else {
                            "/%5c"
                        }
                    }
                });
                for c in seg.chars() {
                    out.push_str(&spell_char(c, char_how[k]));
                    k += 1;
                }
            }
            (out, encoded_slash)
        })
}

fn segments() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-zA-Z0-9._~-]{1,6}", 1..4)
        .prop_map(|v| {
            // `.` and `..` are dot segments, not names.
            v.into_iter()
                .filter(|s| s != "." && s != "..")
                .collect::<Vec<_>>()
        })
        .prop_filter("at least one segment", |v| !v.is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A DENY on `/a/b` catches every spelling that decodes to `/a/b`: each normalizes to the
    /// plain path, or is refused (an encoded slash outside DECODE_AND_MERGE_SLASHES).
    #[test]
    fn every_spelling_normalizes_to_the_path_or_is_refused(
        (plain, (spelled, encoded_slash)) in segments().prop_flat_map(|segs| {
            let plain = format!("/{}", segs.join("/"));
            (Just(plain), spelling_of(segs))
        })
    ) {
        prop_assert_eq!(ok(&spelled, DecodeAndMergeSlashes), plain.clone(), "{}", spelled);
        match normalize(&spelled, MergeSlashes) {
            Ok(p) => prop_assert_eq!(p.as_ref(), plain.as_str(), "{}", spelled),
            Err(e) => {
                prop_assert!(encoded_slash, "{} refused: {}", spelled, e);
                prop_assert_eq!(e, PathError::EncodedSlash);
            }
        }
    }
}

#[test]
fn configured_patterns_that_can_never_match() {
    let dead = |p: &str| never_normalized(p, MergeSlashes);
    for live in [
        "/status/418",
        "/api/*",
        "/api/.*",
        "*.json",
        "*/admin",
        "*",
        "/",
    ] {
        assert_eq!(dead(live), None, "{live}");
    }
    assert_eq!(
        dead("/status//418").as_deref(),
        Some("it becomes \"/status/418\"")
    );
    assert!(dead("/%73tatus/*").is_some());
    assert!(dead("*//admin").is_some());
    assert!(dead("/a;b").is_some_and(|w| w.contains("refused with 400")));
    assert!(dead("/a%2Fb").is_some());
    assert_eq!(never_normalized("/a%2Fb", Untouched), None);
}
