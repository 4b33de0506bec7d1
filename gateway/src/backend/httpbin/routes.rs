//! The httpbin endpoints: which path means what, which methods each accepts (Flask's rules,
//! HEAD and OPTIONS included), and the responses, byte-compatible with the PyPI httpbin where a
//! test could notice.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::inspect::Inspected;

/// The response body type every endpoint returns.
pub(crate) type Body = Full<Bytes>;

/// httpbin's teapot, byte for byte (`ASCII_ART` in `httpbin/helpers.py`).
pub(crate) const TEAPOT: &str = r#"
    -=[ teapot ]=-

       _...._
     .'  _ _ `.
    | ."` ^ `". _,
    \_;`"---"`|//
      |       ;/
      \_     _/
        `"""`
"#;

/// httpbin caps `/delay/{n}` at ten seconds.
const MAX_DELAY: Duration = Duration::from_secs(10);

const INDEX: &str = "portcullis httpbin: an httpbin-compatible test backend\n\n\
GET  /get              the request's args, headers, origin and url\n\
GET  /headers          the request's headers\n\
GET  /ip               the client address\n\
ANY  /anything[/...]   everything about the request, body included\n\
ANY  /status/{code}    answers with that status (418: a teapot)\n\
ANY  /delay/{n}        answers after n seconds (at most 10)\n";

/// Flask's routes with `methods=[...]` also answer HEAD and OPTIONS.
const ANY_METHOD: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::TRACE,
    Method::HEAD,
    Method::OPTIONS,
];
const GET_ONLY: &[Method] = &[Method::GET, Method::HEAD, Method::OPTIONS];

/// An endpoint, with whatever its path carries.
#[derive(Debug, PartialEq)]
enum Route<'a> {
    Index,
    Get,
    Headers,
    Ip,
    Anything,
    Status(&'a str),
    Delay(&'a str),
    NotFound,
}

impl<'a> Route<'a> {
    fn from_path(path: &'a str) -> Self {
        // A `<param>` segment in Flask never spans a `/` and is never empty.
        let segment = |rest: &'a str| Some(rest).filter(|s| !s.is_empty() && !s.contains('/'));
        match path {
            "/" => Route::Index,
            "/get" => Route::Get,
            "/headers" => Route::Headers,
            "/ip" => Route::Ip,
            "/anything" => Route::Anything,
            _ if path.starts_with("/anything/") => Route::Anything,
            _ => {
                if let Some(code) = path.strip_prefix("/status/").and_then(segment) {
                    Route::Status(code)
                } else if let Some(n) = path.strip_prefix("/delay/").and_then(segment) {
                    Route::Delay(n)
                } else {
                    Route::NotFound
                }
            }
        }
    }

    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Anything | Route::Status(_) | Route::Delay(_) => ANY_METHOD,
            _ => GET_ONLY,
        }
    }
}

/// Answers one request whose body has already been collected.
pub(crate) async fn respond(parts: &Parts, body: &[u8], peer: IpAddr) -> Response<Body> {
    let route = Route::from_path(parts.uri.path());
    if route == Route::NotFound {
        return html_error(StatusCode::NOT_FOUND, "Not Found", NOT_FOUND_TEXT);
    }
    let methods = route.methods();
    if !methods.contains(&parts.method) {
        let mut resp = html_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            NOT_ALLOWED_TEXT,
        );
        resp.headers_mut()
            .insert(header::ALLOW, allow_header(methods));
        return resp;
    }
    if parts.method == Method::OPTIONS {
        let mut resp = text(StatusCode::OK, "text/html; charset=utf-8", "");
        resp.headers_mut()
            .insert(header::ALLOW, allow_header(methods));
        return resp;
    }
    let seen = Inspected::new(parts, body, peer);
    match route {
        Route::Index => text(StatusCode::OK, "text/plain; charset=utf-8", INDEX),
        Route::Get => json(&seen.select(&["url", "args", "headers", "origin"])),
        Route::Headers => json(&seen.select(&["headers"])),
        Route::Ip => json(&seen.select(&["origin"])),
        Route::Anything => json(&seen.select(&[
            "url", "args", "headers", "origin", "method", "form", "data", "files", "json",
        ])),
        Route::Status(code) => status(code),
        Route::Delay(n) => {
            let Some(delay) = parse_delay(n) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "text/plain; charset=utf-8",
                    "Invalid delay",
                );
            };
            tokio::time::sleep(delay).await;
            json(&seen.select(&["url", "args", "form", "data", "origin", "headers", "files"]))
        }
        Route::NotFound => html_error(StatusCode::NOT_FOUND, "Not Found", NOT_FOUND_TEXT),
    }
}

/// Adds the CORS headers httpbin puts on every response (its `set_cors_headers`).
pub(crate) fn add_cors(parts: &Parts, resp: &mut Response<Body>) {
    let headers = resp.headers_mut();
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    if parts.method == Method::OPTIONS {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE, PATCH, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("3600"),
        );
        if let Some(requested) = parts.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
        }
    }
}

/// `/status/{code}`, with the bodies and headers of httpbin's `status_code` helper.
fn status(code: &str) -> Response<Body> {
    // 1xx cannot be a final response, so unlike `int()` in httpbin we refuse it rather than
    // send something no client can read.
    let Some(code) = code
        .parse::<u16>()
        .ok()
        .filter(|c| *c >= 200)
        .and_then(|c| StatusCode::from_u16(c).ok())
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "Invalid status code",
        );
    };
    // httpbin replaces all headers for the codes it special-cases, so those carry no
    // content-type.
    let special = |body: &'static str, headers: &[(HeaderName, &'static str)]| {
        let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = code;
        for (name, value) in headers {
            resp.headers_mut()
                .insert(name.clone(), HeaderValue::from_static(value));
        }
        resp
    };
    match code.as_u16() {
        301 | 302 | 303 | 305 | 307 => special("", &[(header::LOCATION, "/redirect/1")]),
        401 => special(
            "",
            &[(header::WWW_AUTHENTICATE, "Basic realm=\"Fake Realm\"")],
        ),
        406 => special(
            "{\"message\": \"Client did not request a supported media type.\", \"accept\": \
             [\"image/webp\", \"image/svg+xml\", \"image/jpeg\", \"image/png\", \"image/*\"]}",
            &[(header::CONTENT_TYPE, "application/json")],
        ),
        407 => special(
            "",
            &[(header::PROXY_AUTHENTICATE, "Basic realm=\"Fake Realm\"")],
        ),
        418 => special(
            TEAPOT,
            &[(
                HeaderName::from_static("x-more-info"),
                "http://tools.ietf.org/html/rfc2324",
            )],
        ),
        _ => text(code, "text/html; charset=utf-8", ""),
    }
}

/// Seconds as httpbin reads them (`float(n)`, capped at ten); negative or not a number is a
/// 400 here where httpbin answers 500.
fn parse_delay(n: &str) -> Option<Duration> {
    let secs = n
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)?;
    Some(Duration::from_secs_f64(secs).min(MAX_DELAY))
}

/// Flask's `jsonify` with `compact = False`: two-space indent, sorted keys, final newline.
fn json(value: &BTreeMap<&'static str, serde_json::Value>) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        // Serializing a map of JSON values cannot fail; answer rather than panic anyway.
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "",
        ),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

const NOT_FOUND_TEXT: &str = "The requested URL was not found on the server. If you entered \
the URL manually please check your spelling and try again.";
const NOT_ALLOWED_TEXT: &str = "The method is not allowed for the requested URL.";

/// Werkzeug's HTML error page.
fn html_error(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let body = format!(
        "<!doctype html>\n<html lang=en>\n<title>{code} {title}</title>\n<h1>{title}</h1>\n<p>{text}</p>\n",
        code = status.as_u16()
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn allow_header(methods: &[Method]) -> HeaderValue {
    let joined = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&joined).unwrap_or(HeaderValue::from_static("GET"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_routes() {
        assert_eq!(Route::from_path("/"), Route::Index);
        assert_eq!(Route::from_path("/anything/a/b"), Route::Anything);
        assert_eq!(Route::from_path("/status/418"), Route::Status("418"));
        assert_eq!(Route::from_path("/status/"), Route::NotFound);
        assert_eq!(Route::from_path("/status/418/x"), Route::NotFound);
        assert_eq!(Route::from_path("/delay/2"), Route::Delay("2"));
        assert_eq!(Route::from_path("/getx"), Route::NotFound);
    }

    #[test]
    fn delay_is_capped_and_validated() {
        assert_eq!(parse_delay("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_delay("60"), Some(MAX_DELAY));
        assert_eq!(parse_delay("-1"), None);
        assert_eq!(parse_delay("nan"), None);
        assert_eq!(parse_delay("x"), None);
    }

    #[test]
    fn status_rejects_what_is_not_a_final_code() {
        for bad in ["abc", "99", "100", "1000", "-1", ""] {
            assert_eq!(status(bad).status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert_eq!(status("599").status().as_u16(), 599);
    }
}
