//! Log injection: a client controls the SNI, method, authority and path it sends, and a
//! certificate's SAN controls the principal. Whatever they hold, the access log must get one
//! line per record that reads back as exactly the fields written, so a forged record or a
//! forged field can never appear.
//!
//! Input: the string fields `sni \0 principal \0 method \0 authority \0 path \0 authz \0
//! policy \0 upstream`; a missing field is `None`.
//!
//! Properties, for both formats:
//! - exactly one line: a single `\n`, at the end, and no other line break (`\r`, VT, FF, NEL,
//!   U+2028, U+2029) anywhere;
//! - JSON: one object whose fields are the ones given;
//! - text: `<time> access <kind>` then every field in order, each reading back as its value
//!   (`-` for absent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::telemetry::access_log::{format_line, AccessEntry, AccessLogFormat};
use portcullis::proxy::telemetry::ResponseFlags;
use portcullis_fuzz::{fields, is_line_break, parse_text_log};

const TIME: &str = "2026-01-02T03:04:05.678Z";

fuzz_target!(|data: &[u8]| {
    let f = fields(data, 8);
    let s = |i: usize| f[i].as_deref();
    let entry = AccessEntry {
        kind: "http",
        peer: Some("[2001:db8::1]:40000".parse().expect("constant address")),
        sni: s(0),
        principal: s(1),
        method: s(2),
        authority: s(3),
        path: s(4),
        status: Some(403),
        duration_ms: 1,
        bytes_received: 2,
        bytes_sent: 3,
        authz: f[5].clone(),
        policy: f[6].clone(),
        upstream: s(7),
        response_flags: ResponseFlags::None,
    };

    let json = format_line(AccessLogFormat::Json, TIME, &entry);
    one_line(&json);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}): {json:?}"));
    for (key, want) in [
        ("sni", s(0)),
        ("principal", s(1)),
        ("method", s(2)),
        ("authority", s(3)),
        ("path", s(4)),
        ("authz", s(5)),
        ("policy", s(6)),
        ("upstream", s(7)),
    ] {
        assert_eq!(
            v.get(key).and_then(|v| v.as_str()),
            want,
            "JSON {key}: {json:?}"
        );
    }

    let text = format_line(AccessLogFormat::Text, TIME, &entry);
    one_line(&text);
    let (time, kind, pairs) =
        parse_text_log(&text).unwrap_or_else(|e| panic!("text line unreadable ({e}): {text:?}"));
    assert_eq!((time.as_str(), kind.as_str()), (TIME, "http"));
    let want: Vec<(String, String)> = [
        ("peer", Some("[2001:db8::1]:40000")),
        ("sni", s(0)),
        ("principal", s(1)),
        ("method", s(2)),
        ("authority", s(3)),
        ("path", s(4)),
        ("status", Some("403")),
        ("duration_ms", Some("1")),
        ("bytes_received", Some("2")),
        ("bytes_sent", Some("3")),
        ("authz", s(5)),
        ("policy", s(6)),
        ("upstream", s(7)),
        ("response_flags", Some("-")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.unwrap_or("-").to_owned()))
    .collect();
    assert_eq!(pairs, want, "text fields read back wrong: {text:?}");
});

fn one_line(line: &str) {
    let body = line.strip_suffix('\n');
    assert!(
        body.is_some_and(|b| !b.chars().any(is_line_break)),
        "not exactly one line: {line:?}"
    );
}
