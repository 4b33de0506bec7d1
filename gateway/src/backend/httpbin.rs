//! An httpbin-compatible HTTP server, the upstream of the demo and of tests that must not
//! depend on Python.
//!
//! It answers `/status/{code}` (418 is httpbin's teapot), `/get`, `/headers`, `/ip`,
//! `/anything[/...]`, `/delay/{n}` and `/` with the same JSON shapes as the PyPI `httpbin`, so a
//! test passes against either. HTTP/1.1 and cleartext HTTP/2 (h2c) share one port.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! portcullis::backend::httpbin::serve(listener, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

pub mod cli;
mod inspect;
mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use routes::Body;

/// Request bodies beyond this are refused with 413; a test backend has no use for more.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// After shutdown, connections get this long to finish requests in flight (a `/delay` can take
/// ten seconds; we do not wait for all of it).
const DRAIN: Duration = Duration::from_secs(5);

/// How long to pause accepting after a resource error such as `EMFILE`, so the loop does not
/// spin while no descriptor is free.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves httpbin on `listener` until `shutdown` resolves, then stops accepting, lets open
/// connections finish (up to a few seconds) and returns.
///
/// # Errors
/// An accept error that is not about one connection or a temporary lack of resources.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let span = tracing::info_span!("httpbin_conn", %peer);
                    connections.spawn(serve_connection(stream, peer, closing_rx.clone()).instrument(span));
                }
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, "httpbin accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                Err(e) => return Err(e),
            },
            // Reap finished connections so the set does not grow with every client.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "httpbin shutdown: closing connections still busy"
        );
    }
    Ok(())
}

/// Errors that concern one connection or momentary resource exhaustion, after which accepting
/// can go on.
fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, mut closing: watch::Receiver<bool>) {
    let service = service_fn(move |req| handle(req, peer));
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // Either shutdown was signalled or the server is gone: finish the request in flight.
        // (The guard `wait_for` returns is dropped inside, so it is never held across an await.)
        () = async { drop(closing.wait_for(|closing| *closing).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "httpbin connection ended with an error");
    }
}

async fn handle(req: Request<Incoming>, peer: SocketAddr) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut resp = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => routes::respond(&parts, &collected.to_bytes(), peer.ip()).await,
        Err(e) => {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = status;
            resp
        }
    };
    routes::add_cors(&parts, &mut resp);
    tracing::info!(
        method = %parts.method,
        path = parts.uri.path(),
        version = ?parts.version,
        status = resp.status().as_u16(),
        "httpbin request"
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};
    use serde_json::{json, Value};
    use tokio::sync::oneshot;

    /// An httpbin on an ephemeral loopback port, stopped when dropped.
    struct Server {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Server {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let addr = listener.local_addr().expect("local addr");
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, async {
                let _ = stopped.await;
            }));
            Server {
                addr,
                stop: Some(stop),
                task,
            }
        }

        async fn shutdown(mut self) -> io::Result<()> {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            (&mut self.task).await.expect("server task")
        }
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("JSON body")
        }
    }

    /// One HTTP/1.1 request on a fresh connection.
    async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Answer {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    fn request(method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "test.com")
    }

    async fn get(addr: SocketAddr, path: &str) -> Answer {
        send(
            addr,
            request(Method::GET, path)
                .body(Full::default())
                .expect("request"),
        )
        .await
    }

    #[tokio::test]
    async fn status_418_is_the_teapot() {
        let server = Server::start().await;
        let answer = get(server.addr, "/status/418").await;
        assert_eq!(answer.status.as_u16(), 418);
        assert_eq!(&answer.body[..], routes::TEAPOT.as_bytes());
        // The bytes of httpbin's ASCII_ART, pinned so an edit of the art cannot slip through.
        assert!(answer
            .body
            .starts_with(b"\n    -=[ teapot ]=-\n\n       _...._\n"));
        assert!(answer
            .body
            .ends_with(b"      \\_     _/\n        `\"\"\"`\n"));
        assert_eq!(answer.body.len(), 135);
        assert_eq!(
            answer.headers["x-more-info"],
            "http://tools.ietf.org/html/rfc2324"
        );
        assert!(answer.headers.get("content-type").is_none());
        server.shutdown().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn status_answers_any_method_and_rejects_bad_codes() {
        let server = Server::start().await;
        let ok = get(server.addr, "/status/200").await;
        assert_eq!(ok.status, StatusCode::OK);
        assert!(ok.body.is_empty());
        assert_eq!(ok.headers["access-control-allow-origin"], "*");
        let post = request(Method::POST, "/status/503")
            .body(Full::from("x"))
            .expect("request");
        assert_eq!(
            send(server.addr, post).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let bad = get(server.addr, "/status/teapot").await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(&bad.body[..], b"Invalid status code");
        let redirect = get(server.addr, "/status/302").await;
        assert_eq!(redirect.headers["location"], "/redirect/1");
    }

    #[tokio::test]
    async fn head_has_headers_but_no_body() {
        let server = Server::start().await;
        let head = request(Method::HEAD, "/get")
            .body(Full::default())
            .expect("request");
        let answer = send(server.addr, head).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["content-type"], "application/json");
        assert!(answer.body.is_empty());
    }

    #[tokio::test]
    async fn get_reports_args_headers_origin_and_url() {
        let server = Server::start().await;
        let req = request(Method::GET, "/get?a=1&a=2&b=x+y")
            .header("x-custom", "v")
            .header("x-forwarded-for", "10.1.2.3")
            .body(Full::default())
            .expect("request");
        let answer = send(server.addr, req).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body.ends_with(b"}\n"), "jsonify ends with a newline");
        let body = answer.json();
        assert_eq!(body["args"], json!({"a": ["1", "2"], "b": "x y"}));
        assert_eq!(body["headers"]["X-Custom"], "v");
        assert_eq!(body["headers"]["Host"], "test.com");
        assert!(body["headers"].get("X-Forwarded-For").is_none());
        assert_eq!(body["origin"], "10.1.2.3");
        assert_eq!(body["url"], "http://test.com/get?a=1&a=2&b=x+y");
        let keys: Vec<&str> = body
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["args", "headers", "origin", "url"]);
    }

    #[tokio::test]
    async fn get_is_get_only() {
        let server = Server::start().await;
        let post = request(Method::POST, "/get")
            .body(Full::default())
            .expect("request");
        let answer = send(server.addr, post).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.headers["allow"], "GET, HEAD, OPTIONS");
    }

    #[tokio::test]
    async fn headers_are_title_cased() {
        let server = Server::start().await;
        let req = request(Method::GET, "/headers")
            .header("x-b3-traceid", "abc")
            .header("user-agent", "curl/8")
            .body(Full::default())
            .expect("request");
        let body = send(server.addr, req).await.json();
        assert_eq!(
            body,
            json!({"headers": {"Host": "test.com", "User-Agent": "curl/8", "X-B3-Traceid": "abc"}})
        );
    }

    #[tokio::test]
    async fn ip_is_peer_or_first_forwarded_for() {
        let server = Server::start().await;
        assert_eq!(
            get(server.addr, "/ip").await.json(),
            json!({"origin": "127.0.0.1"})
        );
        let req = request(Method::GET, "/ip")
            .header("x-forwarded-for", "192.0.2.7, 10.0.0.1")
            .body(Full::default())
            .expect("request");
        assert_eq!(
            send(server.addr, req).await.json(),
            json!({"origin": "192.0.2.7"})
        );
    }

    #[tokio::test]
    async fn anything_echoes_method_body_and_json() {
        let server = Server::start().await;
        let req = request(Method::PUT, "/anything/x/y?q=1")
            .header("content-type", "application/json")
            .body(Full::from(r#"{"k": [1, 2]}"#))
            .expect("request");
        let body = send(server.addr, req).await.json();
        assert_eq!(body["method"], "PUT");
        assert_eq!(body["args"], json!({"q": "1"}));
        assert_eq!(body["data"], r#"{"k": [1, 2]}"#);
        assert_eq!(body["json"], json!({"k": [1, 2]}));
        assert_eq!(body["form"], json!({}));
        assert_eq!(body["files"], json!({}));
        assert_eq!(body["url"], "http://test.com/anything/x/y?q=1");
        assert_eq!(body["headers"]["Content-Length"], "13");

        let binary = request(Method::POST, "/anything")
            .body(Full::from(vec![0xffu8, 0xfe]))
            .expect("request");
        let body = send(server.addr, binary).await.json();
        assert_eq!(body["data"], "data:application/octet-stream;base64,//4=");
        assert_eq!(body["json"], Value::Null);
    }

    #[tokio::test]
    async fn delay_waits_then_answers() {
        let server = Server::start().await;
        let started = tokio::time::Instant::now();
        let answer = get(server.addr, "/delay/0.3").await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["url"], "http://test.com/delay/0.3");
        assert_eq!(
            get(server.addr, "/delay/soon").await.status,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn index_and_unknown_paths() {
        let server = Server::start().await;
        let index = get(server.addr, "/").await;
        assert_eq!(index.status, StatusCode::OK);
        assert!(index.body.starts_with(b"portcullis httpbin"));
        assert_eq!(
            get(server.addr, "/nope").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(server.addr, "/status/").await.status,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn h2c_prior_knowledge_works() {
        let server = Server::start().await;
        let stream = TcpStream::connect(server.addr).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let req = Request::get("http://test.com/headers")
            .body(Full::<Bytes>::default())
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let body: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["headers"]["Host"], "test.com");
    }

    #[tokio::test]
    async fn shutdown_finishes_the_request_in_flight() {
        let server = Server::start().await;
        let addr = server.addr;
        let slow = tokio::spawn(async move { get(addr, "/delay/0.5").await.status });
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.shutdown().await.expect("clean shutdown");
        assert_eq!(slow.await.expect("client task"), StatusCode::OK);
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "listener is closed"
        );
    }
}
