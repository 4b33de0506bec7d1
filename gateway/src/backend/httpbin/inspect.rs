//! What httpbin reports about a request: the `args`, `headers`, `origin`, `url`, `form`, `data`
//! and `json` fields, shaped the way Flask/Werkzeug shape them so that a test written against
//! the PyPI httpbin passes against this one.

use std::collections::BTreeMap;
use std::net::IpAddr;

use base64::Engine as _;
use http::request::Parts;
use http::HeaderMap;
use serde_json::Value;

/// Headers httpbin hides from `headers` unless the query has `show_env` (its `ENV_HEADERS`):
/// they are added by proxies, so hiding them makes the answer the same with or without a
/// gateway in front.
const ENV_HEADERS: &[&str] = &[
    "x-varnish",
    "x-request-start",
    "x-heroku-queue-depth",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-protocol",
    "x-forwarded-ssl",
    "x-heroku-queue-wait-time",
    "x-forwarded-for",
    "x-heroku-dynos-in-use",
    "x-forwarded-port",
    "x-request-id",
    "via",
    "total-route-time",
    "connect-time",
];

/// A query string or urlencoded form, in arrival order, keys possibly repeated.
pub(crate) type Pairs = Vec<(String, String)>;

/// The request as httpbin sees it, computed once per request.
pub(crate) struct Inspected {
    pub args: Pairs,
    pub headers: BTreeMap<String, String>,
    pub origin: String,
    pub url: String,
    pub method: String,
    pub form: Pairs,
    pub data: String,
    pub json: Value,
}

impl Inspected {
    /// Reads `parts` and the collected `body`; `peer` is the TCP peer of the connection.
    pub(crate) fn new(parts: &Parts, body: &[u8], peer: IpAddr) -> Self {
        let args = parse_urlencoded(parts.uri.query().unwrap_or("").as_bytes());
        let show_env = args.iter().any(|(k, _)| k == "show_env");
        let is_form =
            mime_type(&parts.headers).as_deref() == Some("application/x-www-form-urlencoded");
        // Werkzeug consumes a urlencoded body into `form`, leaving `data` empty.
        let (form, data) = if is_form {
            (parse_urlencoded(body), String::new())
        } else {
            (Vec::new(), json_safe(body))
        };
        let json = serde_json::from_str(&data).unwrap_or(Value::Null);
        Self {
            headers: wsgi_headers(parts, show_env),
            origin: origin(&parts.headers, peer),
            url: url(parts),
            method: parts.method.as_str().to_owned(),
            args,
            form,
            data,
            json,
        }
    }

    /// The JSON object holding the named fields, keys sorted like Flask's `jsonify`.
    pub(crate) fn select(&self, fields: &[&'static str]) -> BTreeMap<&'static str, Value> {
        fields
            .iter()
            .map(|&field| {
                let value = match field {
                    "args" => semiflatten(&self.args),
                    "form" => semiflatten(&self.form),
                    "headers" => Value::from(serde_json::Map::from_iter(
                        self.headers
                            .iter()
                            .map(|(k, v)| (k.clone(), Value::from(v.as_str()))),
                    )),
                    "origin" => Value::from(self.origin.as_str()),
                    "url" => Value::from(self.url.as_str()),
                    "method" => Value::from(self.method.as_str()),
                    "data" => Value::from(self.data.as_str()),
                    "json" => self.json.clone(),
                    // Multipart bodies are not parsed, so there are never files.
                    _ => Value::Object(serde_json::Map::new()),
                };
                (field, value)
            })
            .collect()
    }
}

/// httpbin's `origin`: the client as the nearest proxy reported it, else the TCP peer. Only the
/// first `x-forwarded-for` entry is the client; later ones are proxies.
fn origin(headers: &HeaderMap, peer: IpAddr) -> String {
    headers
        .get("x-forwarded-for")
        .map(|v| latin1(v.as_bytes()))
        .and_then(|v| v.split(',').next().map(|first| first.trim().to_owned()))
        .filter(|first| !first.is_empty())
        .unwrap_or_else(|| peer.to_string())
}

/// The URL the client asked for; the scheme follows `X-Forwarded-Proto` like httpbin's
/// `get_url`, because TLS is terminated in front of us.
fn url(parts: &Parts) -> String {
    let headers = &parts.headers;
    let header = |name: &str| headers.get(name).map(|v| latin1(v.as_bytes()));
    let scheme = header("x-forwarded-proto")
        .or_else(|| header("x-forwarded-protocol"))
        .or_else(|| {
            (header("x-forwarded-ssl").as_deref() == Some("on")).then(|| "https".to_owned())
        })
        .unwrap_or_else(|| "http".to_owned());
    let host = header("host")
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{scheme}://{host}{path}")
}

/// Request headers as a WSGI app sees them: names Title-Cased, repeats joined with `,`, names
/// with `_` dropped (Werkzeug does that so `X_Foo` cannot spoof `X-Foo`), and HTTP/2's
/// `:authority` visible as `Host`.
fn wsgi_headers(parts: &Parts, show_env: bool) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let name = name.as_str();
        if name.contains('_') || (!show_env && ENV_HEADERS.contains(&name)) {
            continue;
        }
        let value = latin1(value.as_bytes());
        out.entry(title_case(name))
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    if let Some(authority) = parts.uri.authority() {
        out.entry("Host".to_owned())
            .or_insert_with(|| authority.to_string());
    }
    out
}

/// Python's `str.title()`, which Werkzeug applies to header names: a letter is upper case when
/// the character before it is not a letter (so `x-b3-traceid` becomes `X-B3-Traceid`).
fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut after_letter = false;
    for c in name.chars() {
        if after_letter {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        after_letter = c.is_alphabetic();
    }
    out
}

/// WSGI hands header values to the app decoded as Latin-1, so every byte survives.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// The media type of `content-type`, lower case, without parameters.
fn mime_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let mime = value.split(';').next()?.trim().to_ascii_lowercase();
    Some(mime)
}

/// httpbin's `json_safe`: text stays text, anything not UTF-8 becomes a `data:` URL.
fn json_safe(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) => text.to_owned(),
        Err(_) => format!(
            "data:application/octet-stream;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(body)
        ),
    }
}

/// `application/x-www-form-urlencoded` pairs; invalid UTF-8 becomes U+FFFD like Werkzeug's
/// `errors="replace"`.
pub(crate) fn parse_urlencoded(input: &[u8]) -> Pairs {
    input
        .split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let mut kv = piece.splitn(2, |&b| b == b'=');
            let key = kv.next().unwrap_or_default();
            let value = kv.next().unwrap_or_default();
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = input
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// httpbin's `semiflatten`: a key seen once maps to its value, a repeated key to a list.
fn semiflatten(pairs: &Pairs) -> Value {
    let mut grouped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in pairs {
        grouped.entry(k).or_default().push(v);
    }
    let map = grouped.into_iter().map(|(k, mut vs)| {
        let value = if vs.len() == 1 {
            Value::from(vs.remove(0))
        } else {
            Value::from(vs)
        };
        (k.to_owned(), value)
    });
    Value::Object(map.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::request::Builder) -> Parts {
        req.body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn title_case_matches_python() {
        assert_eq!(title_case("user-agent"), "User-Agent");
        assert_eq!(title_case("x-b3-traceid"), "X-B3-Traceid");
        assert_eq!(title_case("x-1abc"), "X-1Abc");
        assert_eq!(title_case("www-authenticate"), "Www-Authenticate");
    }

    #[test]
    fn urlencoded_decodes_plus_percent_and_bad_escapes() {
        let pairs = parse_urlencoded(b"a=1&a=2&b=x+y%21&&flag&c=%zz&d=%4");
        let want = [
            ("a", "1"),
            ("a", "2"),
            ("b", "x y!"),
            ("flag", ""),
            ("c", "%zz"),
            ("d", "%4"),
        ];
        let got: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(parse_urlencoded(b"k=%ff")[0].1, "\u{fffd}");
    }

    #[test]
    fn semiflatten_lists_only_repeated_keys() {
        let pairs = parse_urlencoded(b"a=1&a=2&b=3");
        assert_eq!(
            semiflatten(&pairs),
            serde_json::json!({"a": ["1", "2"], "b": "3"})
        );
    }

    #[test]
    fn json_safe_base64s_binary() {
        assert_eq!(json_safe(b"text"), "text");
        assert_eq!(
            json_safe(&[0xff, 0xfe]),
            "data:application/octet-stream;base64,//4="
        );
    }

    #[test]
    fn headers_join_repeats_hide_env_and_drop_underscores() {
        let p = parts(
            http::Request::get("http://example.test:8080/x")
                .header("x-a", "1")
                .header("x-a", "2")
                .header("x_spoof", "no")
                .header("x-forwarded-for", "10.0.0.1"),
        );
        let h = wsgi_headers(&p, false);
        assert_eq!(h.get("X-A").map(String::as_str), Some("1,2"));
        assert_eq!(h.get("Host").map(String::as_str), Some("example.test:8080"));
        assert!(!h.contains_key("X-Spoof") && !h.contains_key("X_spoof"));
        assert!(!h.contains_key("X-Forwarded-For"));
        assert!(wsgi_headers(&p, true).contains_key("X-Forwarded-For"));
    }

    #[test]
    fn origin_is_first_forwarded_for_else_peer() {
        let peer: IpAddr = [127, 0, 0, 1].into();
        let p = parts(http::Request::get("/").header("x-forwarded-for", " 1.2.3.4 , 5.6.7.8"));
        assert_eq!(origin(&p.headers, peer), "1.2.3.4");
        assert_eq!(
            origin(&parts(http::Request::get("/")).headers, peer),
            "127.0.0.1"
        );
    }

    #[test]
    fn url_follows_forwarded_proto() {
        let p = parts(
            http::Request::get("/get?a=1")
                .header("host", "test.com")
                .header("x-forwarded-proto", "https"),
        );
        assert_eq!(url(&p), "https://test.com/get?a=1");
    }

    #[test]
    fn form_body_goes_to_form_not_data() {
        let p = parts(
            http::Request::post("/anything")
                .header("content-type", "application/x-www-form-urlencoded"),
        );
        let seen = Inspected::new(&p, b"a=1", [127, 0, 0, 1].into());
        assert_eq!(seen.data, "");
        assert_eq!(seen.json, Value::Null);
        assert_eq!(
            seen.select(&["form"])["form"],
            serde_json::json!({"a": "1"})
        );
    }
}
