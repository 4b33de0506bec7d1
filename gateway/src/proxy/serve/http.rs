//! One HTTP/1 or HTTP/2 connection served to its end: hyper's settings from the limits, the
//! deadlines of [`ConnClock`], graceful close on drain (a request already sent is served
//! first), the gateway's own 431, and a hook that closes the connection when a new
//! configuration no longer accepts its client.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use super::deadlines::{ActiveGuard, ConnClock, DrainState, Tracked};
use super::drain::DrainSignal;
use super::watched::Watched;
use crate::proxy::limits::{LimitReason, Limits};
use crate::proxy::telemetry::metrics::Metrics;

/// hyper's server settings from the limits: header size and count, HTTP/2 streams, header
/// list, keep-alive PINGs, and the reset-flood guards on.
pub fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // hyper's own header timer also runs while a keep-alive connection waits for its
        // next request; ours starts at the first byte of the head (ConnClock), so it is off.
        .header_read_timeout(None)
        // hyper answers 431 past these (the buffer has a floor of 8 KiB).
        .max_buf_size(limits.max_request_headers_size.max(8192))
        .max_headers(limits.max_request_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_request_headers_size).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.http2_keepalive)
        .keep_alive_timeout(Limits::HTTP2_PING_ACK_TIMEOUT)
        // CVE-2023-44487 (rapid reset) and its locally-reset twin: h2's defaults, made explicit.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024));
    builder
}

/// Why an open connection must close now, decided on each new snapshot by its owner (a client
/// certificate the new server settings refuse).
pub type Revalidate = Box<dyn FnMut() -> bool + Send>;

/// What [`serve_http`] needs besides the stream and the request handler.
pub struct HttpConn {
    pub peer: SocketAddr,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub drain: DrainSignal,
    /// Wakes when a new configuration is published; `revalidate` then says whether the
    /// connection may stay open.
    pub reloads: Option<(watch::Receiver<Arc<crate::snapshot::Snapshot>>, Revalidate)>,
}

/// How long a connection accepted as the drain starts may take to send its first bytes.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// How long a connection closed for a configuration change may finish its requests.
const REVOKED_GRACE: Duration = Duration::from_secs(1);

/// Serves HTTP/1 or HTTP/2 on `stream` until it ends, a deadline passes, the drain starts or
/// a reload refuses the client.
///
/// A plain function returning [`serve_with`]'s future, not an `async fn`: each `async fn`
/// layer keeps its by-value arguments (the TLS stream among them) in its state for as long as
/// the connection lives, although they were moved on; one layer fewer is one dead copy fewer
/// per idle connection.
pub fn serve_http<S, H, Fut, B>(stream: S, conn: HttpConn, handler: H) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = http_builder(&conn.limits);
    serve_with(stream, conn, handler, builder)
}

/// [`serve_http`] for HTTP/1 only (the originator, whose upstream leg is HTTP/1.1).
pub fn serve_http1<S, H, Fut, B>(stream: S, conn: HttpConn, handler: H) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = http_builder(&conn.limits).http1_only();
    serve_with(stream, conn, handler, builder)
}

async fn serve_with<S, H, Fut, B>(
    stream: S,
    conn: HttpConn,
    handler: H,
    builder: auto::Builder<TokioExecutor>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let HttpConn {
        peer,
        limits,
        metrics,
        mut drain,
        reloads,
    } = conn;
    let clock = ConnClock::new(&limits);
    let refused = Arc::new(AtomicBool::new(false));
    let service = {
        let (clock, refused) = (clock.clone(), refused.clone());
        let (limits, metrics, draining) = (limits.clone(), metrics.clone(), drain.clone());
        let handler = Arc::new(handler);
        service_fn(move |req: Request<Incoming>| {
            let http2 = req.version() == http::Version::HTTP_2;
            let guard = clock.begin(http2);
            let refused = refused.load(Ordering::Acquire);
            let too_large = headers_too_large(&req, &limits);
            if too_large {
                LimitReason::request_headers_too_large.fire(&metrics, Some(peer));
            }
            let fut = (!refused && !too_large).then(|| handler(req));
            let draining = draining.clone();
            async move {
                if too_large {
                    return Ok(headers_too_large_response(http2, guard));
                }
                match fut {
                    Some(fut) => {
                        let mut resp = fut.await;
                        // Said on the response itself: the drain may have started after the
                        // connection loop last looked (a request begun just as it started).
                        if !http2 && draining.is_draining() {
                            resp.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        }
                        Ok(resp.map(|body| Tracked {
                            body: Some(body),
                            _guard: Some(guard),
                        }))
                    }
                    // Between a reload refusing the client and the close, nothing more is served.
                    None => Err(ConnectionRefused),
                }
            }
        })
    };
    let io = Watched::new(stream, clock.clone());
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let (mut reloads, mut revalidate) = match reloads {
        Some((rx, f)) => (Some(rx), Some(f)),
        None => (None, None),
    };
    let mut hard_stop: Option<Instant> = None;
    // The drain started before this connection's first request (or mid-head): it is served
    // that request, then closed. `first_bytes_by` bounds the wait for a silent client.
    let mut drain_after_request: Option<u64> = None;
    let mut first_bytes_by: Option<Instant> = None;
    loop {
        let reload = async {
            match reloads.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        let stop_at = async {
            match hard_stop {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        let first_bytes_late = async {
            match first_bytes_by {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    report_connection_error(&metrics, peer, &*e);
                }
                return;
            }
            reason = clock.expired(), if hard_stop.is_none() => {
                reason.fire(&metrics, Some(peer));
                match reason {
                    // Mid-head or idle: nothing in flight to finish.
                    LimitReason::header_read_timeout | LimitReason::idle_timeout => return,
                    _ => {
                        served.as_mut().graceful_shutdown();
                        hard_stop = Some(Instant::now() + limits.drain_timeout);
                    }
                }
            }
            _ = drain.draining(), if hard_stop.is_none() && drain_after_request.is_none() => {
                match clock.drain_state() {
                    // `Connection: close` on HTTP/1, GOAWAY on HTTP/2; the process exits
                    // after the drain period, so no stop time of our own.
                    DrainState::Busy | DrainState::Idle => {
                        served.as_mut().graceful_shutdown();
                        hard_stop = Some(Instant::now() + limits.drain_timeout);
                    }
                    // Closing now would drop a request its client already sent (or is
                    // sending): serve it first.
                    DrainState::MidHead => drain_after_request = Some(clock.requests()),
                    DrainState::Fresh => {
                        drain_after_request = Some(clock.requests());
                        first_bytes_by = Some(Instant::now() + FIRST_REQUEST_GRACE.min(limits.drain_timeout));
                    }
                }
            }
            _ = clock.request_started(drain_after_request.unwrap_or(0)), if drain_after_request.is_some() && hard_stop.is_none() => {
                served.as_mut().graceful_shutdown();
                hard_stop = Some(Instant::now() + limits.drain_timeout);
            }
            _ = first_bytes_late, if hard_stop.is_none() => {
                first_bytes_by = None;
                // Still silent (or an HTTP/2 client that opened no stream): close. A head
                // that started arriving is waited for (its header-read deadline bounds it).
                if clock.drain_state() != DrainState::MidHead {
                    served.as_mut().graceful_shutdown();
                    hard_stop = Some(Instant::now() + limits.drain_timeout);
                }
            }
            _ = reload => {
                if let Some(still_ok) = revalidate.as_mut() {
                    if !still_ok() && !refused.swap(true, Ordering::AcqRel) {
                        tracing::warn!(%peer, "the new configuration no longer accepts this connection (its server changed or refuses its client certificate); closing");
                        served.as_mut().graceful_shutdown();
                        let at = Instant::now() + REVOKED_GRACE;
                        hard_stop = Some(hard_stop.map_or(at, |h| h.min(at)));
                    }
                }
            }
            _ = stop_at => {
                tracing::debug!(%peer, "closing: requests did not finish in time");
                return;
            }
        }
    }
}

/// A request refused because its connection is closing.
#[derive(Debug, thiserror::Error)]
#[error("the connection is closing: the configuration no longer accepts this client")]
pub struct ConnectionRefused;

/// Counts what hyper reports as a limit (431, rapid reset) and logs the rest at debug.
fn report_connection_error(
    metrics: &Metrics,
    peer: SocketAddr,
    e: &(dyn std::error::Error + 'static),
) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                LimitReason::request_headers_too_large.fire(metrics, Some(peer));
                return;
            }
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) && h2.is_go_away() {
                LimitReason::http2_rapid_reset.fire(metrics, Some(peer));
                return;
            }
        }
        source = err.source();
    }
    tracing::debug!(%peer, error = %e, "connection ended with an error");
}

/// Whether a request's headers are over `--max-request-headers` (count) or
/// `--max-request-headers-size` (bytes as on the HTTP/1 wire: the request line and each
/// `name: value\r\n`). hyper refuses most such HTTP/1 heads itself, but its size check
/// is on its read buffer, which may hold a whole oversized head that arrived at once; h2 checks
/// the size (advertised as SETTINGS_MAX_HEADER_LIST_SIZE) but not the count.
fn headers_too_large<B>(req: &Request<B>, limits: &Limits) -> bool {
    let headers = req.headers();
    if headers.len() > limits.max_request_headers {
        return true;
    }
    // "METHOD URI HTTP/1.1\r\n"
    let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
    let bytes = headers.iter().fold(line, |n, (name, value)| {
        n.saturating_add(name.as_str().len() + value.len() + 4)
    });
    bytes > limits.max_request_headers_size
}

/// The gateway's own 431 (with `Connection: close` on HTTP/1: the client is misbehaving).
fn headers_too_large_response<B>(http2: bool, guard: ActiveGuard) -> Response<Tracked<B>> {
    let mut resp = Response::new(Tracked {
        body: None,
        _guard: Some(guard),
    });
    *resp.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    if !http2 {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::proxy::serve::test_support::{limit_count, server};

    #[tokio::test]
    async fn headers_over_the_size_that_arrive_at_once_get_431() {
        let (addr, metrics, _drain) = server(Limits::default()).await;
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..62 {
            head.extend_from_slice(format!("x-big-{i:02}: {}\r\n", "a".repeat(1000)).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(&head).await.expect("write");
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).await.expect("read");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        assert_eq!(limit_count(&metrics, "request_headers_too_large"), 1);
    }

    #[test]
    fn header_count_and_size_are_checked() {
        let limits = Limits {
            max_request_headers: 3,
            max_request_headers_size: 100,
            ..Limits::default()
        };
        let mut req = Request::get("/").body(()).expect("request");
        for i in 0..3 {
            req.headers_mut().insert(
                format!("h{i}").parse::<http::HeaderName>().expect("name"),
                "v".parse().expect("value"),
            );
        }
        assert!(!headers_too_large(&req, &limits));
        req.headers_mut()
            .append("h0", "again".parse().expect("value"));
        assert!(
            headers_too_large(&req, &limits),
            "4 values over a count of 3"
        );
        let mut req = Request::get("/").body(()).expect("request");
        req.headers_mut()
            .insert("big", "a".repeat(90).parse().expect("value"));
        assert!(headers_too_large(&req, &limits), "over 100 bytes");
    }

    #[tokio::test]
    async fn a_connection_accepted_as_the_drain_starts_is_served_its_request() {
        let (addr, _metrics, drain) = server(Limits::default()).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        // Accepted, nothing sent yet; then the drain starts, then the request arrives.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drain.start();
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
        let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(got.starts_with("http/1.1 200"), "{got:?}");
        assert!(got.contains("connection: close"), "{got:?}");
    }
}
