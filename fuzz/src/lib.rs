//! Helpers shared by the fuzz targets: splitting fuzzer bytes into string fields, and
//! independent readers of the formats the gateway writes (XFCC, the text access log), so a
//! target can check that what was written reads back as exactly what was meant.
//!
//! The readers follow the formats' documentation, not the writers' code: a writer that
//! forgets an escape produces text these readers read differently, and the target fails.

/// Splits fuzzer bytes into `n` string fields on NUL bytes (missing fields are `None`, extra
/// NULs stay in the last field), lossily as UTF-8: the seed files stay readable text.
pub fn fields(data: &[u8], n: usize) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = data
        .splitn(n, |&b| b == 0)
        .map(|f| Some(String::from_utf8_lossy(f).into_owned()))
        .collect();
    out.resize(n, None);
    out
}

/// Envoy's `x-forwarded-client-cert`: elements separated by `,`, each a `;`-separated list
/// of `key=value` pairs; a value holding `,`, `;` or `=` is double-quoted, and inside quotes
/// a backslash makes the next character literal (`\"` for a quote). Returns the elements'
/// pairs in order, or why the text is not XFCC.
pub fn parse_xfcc(header: &str) -> Result<Vec<Vec<(String, String)>>, String> {
    let mut elements = vec![Vec::new()];
    let mut chars = header.chars().peekable();
    loop {
        let mut key = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                Some(c @ (',' | ';' | '"')) => return Err(format!("{c:?} in a key")),
                Some(c) => key.push(c),
                None => return Err(format!("key {key:?} without a value")),
            }
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or("escape at the end")?),
                    Some(c) => value.push(c),
                    None => return Err("unterminated quoted value".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if matches!(c, ',' | ';') {
                    break;
                }
                if matches!(c, '=' | '"') {
                    return Err(format!("unquoted {c:?} in the value of {key}"));
                }
                value.push(c);
                chars.next();
            }
        }
        let element = elements.last_mut().ok_or("no element")?;
        element.push((key, value));
        match chars.next() {
            None => return Ok(elements),
            Some(';') => {}
            Some(',') => elements.push(Vec::new()),
            Some(c) => return Err(format!("{c:?} after a quoted value")),
        }
    }
}

/// Checks that `header`, which `xfcc(cert)` wrote, reads back as one element holding exactly
/// the certificate's `Hash`, `Subject`, first `URI` and every `DNS`.
pub fn xfcc_reads_back(cert: &portcullis::identity::PeerCertificate, header: &str) {
    let elements =
        parse_xfcc(header).unwrap_or_else(|e| panic!("XFCC {header:?} does not parse: {e}"));
    let mut want = vec![
        ("Hash".to_owned(), cert.sha256_hex.clone()),
        ("Subject".to_owned(), cert.subject.clone()),
    ];
    if let Some(uri) = cert.uris.first() {
        want.push(("URI".to_owned(), uri.clone()));
    }
    want.extend(cert.dns_names.iter().map(|d| ("DNS".to_owned(), d.clone())));
    assert_eq!(elements, vec![want], "XFCC {header:?} reads back wrong");
}

/// One text access-log line (`<time> access <kind> k=v k="quoted" …\n`) read back into its
/// fields. Quoted values use Rust's string escapes (`\"`, `\\`, `\n`, `\u{…}`, …).
pub fn parse_text_log(line: &str) -> Result<(String, String, Vec<(String, String)>), String> {
    let body = line.strip_suffix('\n').ok_or("no final newline")?;
    if let Some(c) = body.chars().find(|c| is_line_break(*c)) {
        return Err(format!("line break {c:?} inside the line"));
    }
    let mut words = body.splitn(3, ' ');
    let time = words.next().ok_or("no time")?.to_owned();
    if words.next() != Some("access") {
        return Err("no `access` marker".into());
    }
    let rest = words.next().ok_or("no kind")?;
    let (kind, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut pairs = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').ok_or("a field without `=`")?;
        if key.contains([' ', '"']) {
            return Err(format!("bad key {key:?}"));
        }
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            unescape_rust(quoted)?
        } else {
            let (v, a) = after.split_at(after.find(' ').unwrap_or(after.len()));
            if v.contains(['"', '=']) {
                return Err(format!("unquoted value {v:?} holds a quote or `=`"));
            }
            (v.to_owned(), a)
        };
        pairs.push((key.to_owned(), value));
        rest = match after {
            "" => "",
            a => a.strip_prefix(' ').ok_or("no space between fields")?,
        };
        if rest.is_empty() && !after.is_empty() {
            return Err("trailing space".into());
        }
    }
    Ok((time, kind.to_owned(), pairs))
}

/// Characters that end a line for some reader of a log: terminals, JSON-lines splitters,
/// Python's `str.splitlines`, Unicode-aware viewers.
pub fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{1c}'
            ..='\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// Reads a Rust `{:?}` string body up to its closing quote; returns it and the text after.
fn unescape_rust(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('0') => out.push('\0'),
                Some(c @ ('\\' | '"' | '\'')) => out.push(c),
                Some('u') => {
                    let rest = &s[i + 2..];
                    let body = rest.strip_prefix('{').ok_or("\\u without {")?;
                    let end = body.find('}').ok_or("\\u without }")?;
                    let code = u32::from_str_radix(&body[..end], 16).map_err(|e| e.to_string())?;
                    out.push(char::from_u32(code).ok_or("bad \\u code point")?);
                    // Skip `{hex}`.
                    for _ in 0..end + 2 {
                        chars.next();
                    }
                }
                other => return Err(format!("unknown escape {other:?}")),
            },
            c => out.push(c),
        }
    }
    Err("unterminated quoted value".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_reader_follows_envoy_docs() {
        let got = parse_xfcc(r#"Hash=ab;Subject="CN=a,O=\"b\"";URI=spiffe://x,By=y"#).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0][1], ("Subject".into(), r#"CN=a,O="b""#.into()));
        assert!(parse_xfcc("Hash=a=b").is_err());
    }

    #[test]
    fn text_log_reader_undoes_debug_quoting() {
        let line = format!("T access http a=1 b={:?} c=-\n", "x \"y\"\n\u{2028}");
        let (_, kind, pairs) = parse_text_log(&line).unwrap();
        assert_eq!(kind, "http");
        assert_eq!(pairs[1].1, "x \"y\"\n\u{2028}");
        assert!(parse_text_log("T access http a=x\ny\n").is_err());
    }
}
