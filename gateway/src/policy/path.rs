//! The request path that routes, policies, `explain`, metrics and the access log see, and that
//! the upstream receives: one normalization, applied once per request.
//!
//! A gateway is only as good as the gap between the path it checked and the path the upstream
//! serves. Flask, Spring, Express and most other frameworks decode `%XX` and resolve or merge
//! slashes before routing, so a DENY on `/status/418` that compares the raw path is bypassed by
//! `/status/%34%31%38` or `//status/418`. The cure (Envoy's) is to normalize first and to
//! forward the normalized path, so there is one path for everybody.
//!
//! Modes carry Istio's names (`meshConfig.pathNormalization`):
//!
//! | mode | what happens |
//! |---|---|
//! | `NONE` | the path is matched and forwarded as received |
//! | `BASE` | RFC 3986 §6: percent-encoded unreserved characters decoded, remaining `%xx` uppercased, `\` → `/`, dot segments removed |
//! | `MERGE_SLASHES` (default) | `BASE`, then `//` → `/` |
//! | `DECODE_AND_MERGE_SLASHES` | `MERGE_SLASHES`, and `%2F`/`%5C` decoded to `/` first |
//!
//! Refused (`400`) in every mode, as malformed: a path that is not origin-form (does not start
//! with `/`; `*` included), a bad percent-encoding (`%zz`, `%` at the end, `%4`), an encoded
//! control character (`%00`, `%0A`, …: no path needs one, and decoders disagree on them), a raw
//! control character, space, `#` or non-ASCII byte.
//!
//! Refused (`400`) in `BASE` and the merge modes, as ambiguous: the upstream would read them
//! differently from the policy, and no rewrite is right for every upstream:
//! - an encoded slash or backslash (`%2F`, `%5C`, any case), unless `DECODE_AND_MERGE_SLASHES`:
//!   Istio's `BASE` passes it through and Flask then serves `/status%2F418` as `/status/418`;
//! - a second layer of encoding (`%25` followed by two hex digits, also when the digits were
//!   themselves encoded): it is never decoded twice here, and an upstream that decodes twice
//!   would see a different path than the policy did;
//! - a path parameter (`;`): Tomcat, Jetty and Spring strip `;…` from a segment before routing
//!   (`/..;/` is the classic bypass of proxies in front of them), Envoy and Flask keep it;
//! - percent-encoded bytes that are not UTF-8, such as the overlong `%C0%AF` that old decoders
//!   read as `/`.
//!
//! Not changed: letter case (paths are case-sensitive, as in Istio; an upstream that folds case
//! needs policies written for that), a trailing slash (`/a/` and `/a` are different
//! resources), encoded reserved characters such as `%3F` or `%20` (decoding them would change
//! the path's structure), and the query string, which is never part of the path.

use std::borrow::Cow;

/// The mode is plain configuration data, so it is defined with the settings; normalizing is
/// request-path work and stays here.
pub use crate::config::path_normalization::{PathNormalization, UnknownMode};

/// Why a path is refused with `400`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("not origin-form: the path must start with `/`")]
    NotOriginForm,
    #[error("asterisk-form (`*`) is not served: it names no path to route or authorize")]
    AsteriskForm,
    #[error("bad percent-encoding at byte {at} (`%` must be followed by two hex digits)")]
    BadEncoding { at: usize },
    #[error("encoded control character %{byte:02X}")]
    EncodedControl { byte: u8 },
    #[error("byte 0x{byte:02X} is not allowed in a path (control, space, `#` or non-ASCII)")]
    BadCharacter { byte: u8 },
    #[error("encoded slash or backslash (%2F, %5C): refused unless the path normalization is DECODE_AND_MERGE_SLASHES")]
    EncodedSlash,
    #[error("double percent-encoding (%25 followed by two hex digits): the upstream would decode it once more")]
    DoubleEncoding,
    #[error(
        "path parameter (`;`): Tomcat, Jetty and Spring strip it before routing, others keep it"
    )]
    PathParameter,
    #[error("percent-encoded bytes that are not UTF-8 (an overlong %C0%AF is read as `/` by old decoders)")]
    NotUtf8,
}

impl PathError {
    /// The `reason` label of `portcullis_requests_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            PathError::NotOriginForm | PathError::AsteriskForm => "not_origin_form",
            PathError::BadEncoding { .. } => "bad_encoding",
            PathError::EncodedControl { .. } => "encoded_control",
            PathError::BadCharacter { .. } => "bad_character",
            PathError::EncodedSlash => "encoded_slash",
            PathError::DoubleEncoding => "double_encoding",
            PathError::PathParameter => "path_parameter",
            PathError::NotUtf8 => "not_utf8",
        }
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte `%XX` at `at` encodes.
fn decode_at(b: &[u8], at: usize) -> Result<u8, PathError> {
    match (
        b.get(at + 1).copied().and_then(hex_value),
        b.get(at + 2).copied().and_then(hex_value),
    ) {
        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
        _ => Err(PathError::BadEncoding { at }),
    }
}

fn push_encoded(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[
        b'%',
        HEX[usize::from(byte >> 4)],
        HEX[usize::from(byte & 15)],
    ]);
}

/// Normalizes the path of a request target (the query string already split off) by `mode`.
/// Borrows when nothing changes, which is the common case.
pub fn normalize(path: &str, mode: PathNormalization) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b == b"*" {
        return Err(PathError::AsteriskForm);
    }
    if b.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // One pass refuses what is malformed in every mode and notes whether a rewrite can
    // change anything.
    let mut rewrite = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let byte = decode_at(b, i)?;
                if byte < 0x20 || byte == 0x7f {
                    return Err(PathError::EncodedControl { byte });
                }
                rewrite = true;
                i += 3;
                continue;
            }
            c if c <= b' ' || c == 0x7f || c >= 0x80 || c == b'#' => {
                return Err(PathError::BadCharacter { byte: c })
            }
            b'\\' | b';' => rewrite = true,
            // A dot segment or an empty segment may start here.
            b'/' if matches!(b.get(i + 1), Some(b'.' | b'/')) => rewrite = true,
            _ => {}
        }
        i += 1;
    }
    if mode == PathNormalization::None || !rewrite {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(b, mode)?;
    let resolved = remove_dot_segments(&decoded);
    let out = if mode.merges() {
        merge_slashes(&resolved)
    } else {
        resolved
    };
    // Only ASCII was kept (non-ASCII stays percent-encoded), so this cannot fail.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::NotUtf8)
}

/// Decodes what RFC 3986 §6.2.2 says is safe to decode (unreserved characters), uppercases
/// the rest, turns `\` into `/`, and refuses what is ambiguous (module docs).
fn decode(b: &[u8], mode: PathNormalization) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let byte = decode_at(b, i)?;
                match byte {
                    _ if is_unreserved(byte) => out.push(byte),
                    b'/' | b'\\' if mode == PathNormalization::DecodeAndMergeSlashes => {
                        out.push(b'/')
                    }
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    0x80.. => {
                        // A run of encoded non-ASCII bytes must be UTF-8 (no overlongs).
                        let mut run = Vec::new();
                        while b.get(i) == Some(&b'%') {
                            match decode_at(b, i)? {
                                byte @ 0x80.. => run.push(byte),
                                _ => break,
                            }
                            i += 3;
                        }
                        if std::str::from_utf8(&run).is_err() {
                            return Err(PathError::NotUtf8);
                        }
                        for byte in run {
                            push_encoded(&mut out, byte);
                        }
                        continue;
                    }
                    _ => push_encoded(&mut out, byte),
                }
                i += 3;
            }
            b'\\' => {
                out.push(b'/');
                i += 1;
            }
            b';' => return Err(PathError::PathParameter),
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    // After one decoding, `%25` must not start another encoding: `%2573` and `%25%37%33`
    // would both be `s` to an upstream that decodes twice.
    let double = out
        .windows(5)
        .any(|w| w.starts_with(b"%25") && hex_value(w[3]).is_some() && hex_value(w[4]).is_some());
    if double {
        return Err(PathError::DoubleEncoding);
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments go, `..` removes the segment before it
/// (never above the root), and a trailing dot segment leaves a trailing `/`.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let parts: Vec<&[u8]> = path[1..].split(|&c| c == b'/').collect();
    let last = parts.len() - 1;
    let mut kept: Vec<&[u8]> = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        match part {
            b"." => {}
            b".." => {
                kept.pop();
            }
            _ => {
                kept.push(part);
                continue;
            }
        }
        if i == last {
            kept.push(b"");
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for part in kept {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn merge_slashes(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &c in path {
        if c == b'/' && out.last() == Some(&b'/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Why a configured path pattern (`/exact`, `/prefix*`, `*suffix`) can never equal a
/// normalized request path, if it cannot: `check` warns about such AuthorizationPolicy and
/// VirtualService paths. The literal part is completed into a whole path (`z` after a prefix,
/// `/z` before a suffix) so that a prefix ending in `.` is not taken for a dot segment.
pub fn never_normalized(pattern: &str, mode: PathNormalization) -> Option<String> {
    let sample = if let Some(prefix) = pattern.strip_suffix('*') {
        format!("{prefix}z")
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        format!("/z{suffix}")
    } else {
        pattern.to_owned()
    };
    if pattern == "*" || !sample.starts_with('/') {
        return None;
    }
    match normalize(&sample, mode) {
        Ok(n) if n == sample => None,
        Ok(n) if pattern.ends_with('*') || pattern.starts_with('*') => {
            Some(format!("a request path it would match becomes {n:?}"))
        }
        Ok(n) => Some(format!("it becomes {n:?}")),
        Err(e) => Some(format!("a request path like it is refused with 400 ({e})")),
    }
}

#[cfg(test)]
mod tests;
