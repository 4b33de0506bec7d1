//! The HTTP/1.1 client that carries requests to upstream endpoints: a connection pool per
//! endpoint over hyper's low-level `client::conn::http1`, with a cap on what one endpoint
//! may be sent at once.
//!
//! Why not hyper-util's pooled client: under callgrind its checkout cost ~3.6 k instructions
//! per request and hashing its pool key with SipHash ~3.4 k more (issue 16). Here a request
//! finds its endpoint once, by name, in an FNV-keyed map ([`UpstreamClient::admit`]); the
//! [`UpstreamPermit`] it gets holds the endpoint's cap counter and its idle connections, so
//! the checkout is a pop from a short vector under an uncontended lock and allocates nothing.
//!
//! A connection is reused only after its previous response body was read to the end: the
//! body wrapper ([`WithPermit`]) returns it to its endpoint's idle list then, and drops it
//! when the body is dropped before its end (the rest of that response would otherwise be read
//! as the next one's). A request sent on an idle connection that the upstream closed in the
//! meantime is sent again, once, on a new connection when hyper hands it back unsent, as
//! hyper-util's `retry_canceled_requests` does; a request that may have reached the upstream
//! is never sent twice.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::limits::Limits;
use super::trailers::RequestBody;
use crate::config::model::Upstream;

/// How long a connection may sit idle in the pool before it is closed (hyper-util's legacy
/// pool was configured the same).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often idle connections past [`IDLE_TIMEOUT`] are closed when no request comes to take
/// them: an idle connection is closed between 60 and 75 s after its last response.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Most idle connections kept per endpoint (and never more than the endpoint's cap): past a
/// burst, the rest are closed rather than held open for a minute.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Why a request did not get a response from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connect failed or timed out (`--upstream-connect-timeout`): `UF`.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: Box<str>,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/1.1 connection could not be set up on a connected socket: `UF` too, as
    /// nothing was sent.
    #[error("starting HTTP/1.1 with {endpoint}: {source}")]
    Handshake {
        endpoint: Box<str>,
        #[source]
        source: hyper::Error,
    },
    /// The connection failed once the request was handed to it (reset, closed before the
    /// response head, unparsable response): `UC`.
    #[error("{0}")]
    Request(#[source] hyper::Error),
}

impl UpstreamError {
    /// Whether no connection to the upstream could be made (Envoy's `UF`, 503).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Handshake { .. })
    }

    /// Whether the TCP connect timed out (`portcullis_limits_total{reason="upstream_connect_timeout"}`).
    pub fn is_connect_timeout(&self) -> bool {
        matches!(self, Self::Connect { source, .. } if source.kind() == std::io::ErrorKind::TimedOut)
    }
}

/// Pooling HTTP/1.1 client to upstream endpoints.
///
/// Generic over the request body for the tests; the gateway sends [`RequestBody`].
pub struct UpstreamClient<B = RequestBody> {
    next: AtomicUsize,
    pool: Arc<Pool<B>>,
}

/// What the endpoints share: their map and the connect settings.
#[derive(Debug)]
struct Pool<B> {
    max: usize,
    max_idle: usize,
    connect_timeout: Option<Duration>,
    /// Endpoints by name. Entries are never removed: endpoints come from the configuration, so
    /// the map is as big as the set of endpoints ever configured (an entry with no request in
    /// flight and no idle connection is a counter at zero and an empty vector).
    by_endpoint: Mutex<FnvMap<Arc<Endpoint<B>>>>,
    /// Whether the task that closes expired idle connections runs (started with the first
    /// connection, inside the runtime).
    sweeping: AtomicBool,
}

/// One endpoint: requests in flight and the connections waiting for the next one.
#[derive(Debug)]
struct Endpoint<B> {
    name: Box<str>,
    /// Requests in flight. Over HTTP/1.1 each holds one upstream connection, so this caps the
    /// connections one endpoint is opened (Envoy's circuit breaker, `UO` when full).
    in_flight: AtomicUsize,
    max_idle: usize,
    /// Connections whose last response was read to the end, newest last: the newest is taken
    /// first, being the least likely to have been closed by the upstream's own idle timeout.
    idle: Mutex<Vec<Idle<B>>>,
}

#[derive(Debug)]
struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves nothing half-done (a push or a pop), so the
    // data is good to use.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<B> Endpoint<B> {
    /// The newest idle connection that can take a request now, if any. Connections closed by
    /// the upstream, expired, or not yet done with their last exchange (an upstream that
    /// answered before the request body was all sent) are dropped: hyper closes them.
    fn checkout(&self) -> Option<SendRequest<B>> {
        loop {
            let idle = lock(&self.idle).pop()?;
            if idle.since.elapsed() >= IDLE_TIMEOUT {
                // The rest are older still.
                let expired = std::mem::take(&mut *lock(&self.idle));
                drop(expired);
                return None;
            }
            if idle.sender.is_ready() {
                return Some(idle.sender);
            }
        }
    }

    /// Returns a connection whose response was read to the end; over the bound, or closed,
    /// it is dropped (which closes it).
    fn release(&self, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes the idle connections older than [`IDLE_TIMEOUT`] at `now`, and dead ones.
    fn sweep(&self, now: Instant) {
        let mut idle = lock(&self.idle);
        idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
    }
}

/// Endpoint names to `V`, hashed with [`Fnv1a`].
type FnvMap<V> = HashMap<Box<str>, V, BuildHasherDefault<Fnv1a>>;

/// FNV-1a: endpoint names come from the configuration, never from a client, so a keyed hash
/// (std's SipHash, ~650 instructions per lookup here) buys no flooding resistance.
#[derive(Debug)]
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A place under an endpoint's cap, and the way to its pooled connections; dropping it frees
/// the place.
#[derive(Debug)]
pub struct UpstreamPermit<B = RequestBody> {
    endpoint: Arc<Endpoint<B>>,
}

impl<B> Drop for UpstreamPermit<B> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new(&Limits::default())
    }
}

impl<B> UpstreamClient<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(limits: &Limits) -> Self {
        Self {
            next: AtomicUsize::new(0),
            pool: Arc::new(Pool {
                max: limits.upstream_max_connections,
                max_idle: limits.upstream_max_connections.min(MAX_IDLE_PER_ENDPOINT),
                connect_timeout: limits.upstream_connect_timeout,
                by_endpoint: Mutex::new(HashMap::default()),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// A place for one more request to `endpoint`, or `None` when it is at its cap (answer
    /// 503 with flag `UO`).
    pub fn admit(&self, endpoint: &str) -> Option<UpstreamPermit<B>> {
        let found = {
            let mut map = lock(&self.pool.by_endpoint);
            match map.get(endpoint) {
                Some(e) => Arc::clone(e),
                None => Arc::clone(map.entry(endpoint.into()).or_insert_with(|| {
                    Arc::new(Endpoint {
                        name: endpoint.into(),
                        in_flight: AtomicUsize::new(0),
                        max_idle: self.pool.max_idle,
                        idle: Mutex::new(Vec::new()),
                    })
                })),
            }
        };
        // Increment only below the cap, so a refused request never holds a place.
        found
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.pool.max).then_some(n + 1)
            })
            .ok()?;
        Some(UpstreamPermit { endpoint: found })
    }

    /// Sends `req` (origin-form URI, `Host` set) to the permit's endpoint, on an idle
    /// connection when there is one, else on a new one. The response body holds the permit
    /// and the connection until it ends.
    pub async fn send(
        &self,
        permit: UpstreamPermit<B>,
        req: Request<B>,
    ) -> Result<Response<WithPermit<B>>, UpstreamError> {
        let (resp, sender) = match permit.endpoint.checkout() {
            Some(sender) => self.send_reused(&permit.endpoint.name, sender, req).await?,
            None => Box::pin(self.send_new(&permit.endpoint.name, req)).await?,
        };
        Ok(resp.map(|body| WithPermit {
            body,
            conn: Some(sender),
            permit,
        }))
    }

    /// Sends on a pooled connection; when hyper gives the request back unsent (the upstream
    /// closed the connection before the request was written), sends it again on a new one.
    async fn send_reused(
        &self,
        endpoint: &str,
        mut sender: SendRequest<B>,
        req: Request<B>,
    ) -> Result<(Response<Incoming>, SendRequest<B>), UpstreamError> {
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, sender)),
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    tracing::debug!(upstream = endpoint, error = %e.error(), "pooled connection closed before the request was sent; sending on a new one");
                    drop(sender);
                    Box::pin(self.send_new(endpoint, req)).await
                }
                // Part of it may have reached the upstream: never sent twice.
                None => Err(UpstreamError::Request(e.into_error())),
            },
        }
    }

    /// Connects and sends. Boxed where it is awaited: connecting is the slow path, and its
    /// future (resolver, connect, handshake) would otherwise make every request's future
    /// bigger, and every move of it dearer, pooled connection or not.
    async fn send_new(
        &self,
        endpoint: &str,
        req: Request<B>,
    ) -> Result<(Response<Incoming>, SendRequest<B>), UpstreamError> {
        let mut sender = self.connect(endpoint).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Request)?;
        Ok((resp, sender))
    }

    /// A new connection to `endpoint` (TCP_NODELAY, within the connect timeout), its
    /// HTTP/1.1 state machine running on its own task until it closes.
    async fn connect(&self, endpoint: &str) -> Result<SendRequest<B>, UpstreamError> {
        let connect_err = |source| UpstreamError::Connect {
            endpoint: endpoint.into(),
            source,
        };
        let connecting = TcpStream::connect(endpoint);
        let stream = match self.pool.connect_timeout {
            Some(t) => tokio::time::timeout(t, connecting)
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect timed out after {t:?}"),
                    ))
                }),
            None => connecting.await,
        }
        .map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake {
                endpoint: endpoint.into(),
                source,
            })?;
        let name = Box::<str>::from(endpoint);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %name, error = %e, "upstream connection ended");
            }
        });
        self.start_sweeper();
        Ok(sender)
    }

    /// Starts, once, the task that closes idle connections nobody came back for. It holds
    /// the pool weakly and ends with it.
    fn start_sweeper(&self) {
        if self.pool.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool: Weak<Pool<B>> = Arc::downgrade(&self.pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { break };
                pool.sweep(Instant::now());
            }
        });
    }

    /// Picks an endpoint round-robin.
    pub fn pick<'a>(&self, upstream: &'a Upstream) -> &'a str {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % upstream.endpoints.len().max(1);
        upstream.endpoints.get(i).map_or("", String::as_str)
    }
}

impl<B> Pool<B> {
    fn sweep(&self, now: Instant) {
        let endpoints: Vec<Arc<Endpoint<B>>> = lock(&self.by_endpoint).values().cloned().collect();
        for endpoint in endpoints {
            endpoint.sweep(now);
        }
    }
}

/// An upstream response body that holds its endpoint's place until it is done, and its
/// connection until it has been read to the end, when the connection goes back to the pool.
#[derive(Debug)]
pub struct WithPermit<B = RequestBody> {
    body: Incoming,
    conn: Option<SendRequest<B>>,
    permit: UpstreamPermit<B>,
}

impl<B> WithPermit<B> {
    /// The connection is done with this response: back to the pool.
    fn release(&mut self) {
        if let Some(sender) = self.conn.take() {
            self.permit.endpoint.release(sender);
        }
    }
}

impl<B> Body for WithPermit<B> {
    type Data = <Incoming as Body>::Data;
    type Error = <Incoming as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            // Trailers end a message: hyper writes them and drops the body without polling
            // it again.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || self.body.is_end_stream() => {
                self.release()
            }
            // The connection failed mid-body: hyper closes it; never reused.
            Poll::Ready(Some(Err(_))) => self.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for WithPermit<B> {
    fn drop(&mut self) {
        // hyper never polls a body that says it has ended (an empty or `Content-Length: 0`
        // one, a HEAD response): it is done all the same. A body dropped before its end is
        // not: the connection is dropped with it, and hyper closes it rather than read the
        // rest of this response as the next one's.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    type Client = UpstreamClient<Empty<Bytes>>;

    fn client(max: usize) -> Client {
        Client::new(&Limits {
            upstream_max_connections: max,
            ..Limits::default()
        })
    }

    fn get(host: &str) -> Request<Empty<Bytes>> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, host)
            .body(Empty::new())
            .expect("request")
    }

    /// How the test upstream answers the requests on a connection.
    #[derive(Clone, Copy, PartialEq)]
    enum Answer {
        /// `200`, body `ok`, connection kept.
        KeepAlive,
        /// `200` with an empty body, connection kept.
        Empty,
        /// `200 ok`, then the socket is closed 10 ms later without `Connection: close`: what
        /// an upstream's own idle timeout does.
        ThenClose,
        /// The first request answered, the second read and the connection closed unanswered.
        HangUpOnSecond,
        /// `200`, a chunked body `ok` and a trailer field, connection kept.
        Trailers,
        /// Headers promising a megabyte and the first bytes of it; the connection held open.
        Partial,
    }

    /// A raw HTTP/1.1 upstream on loopback that counts the connections it accepts.
    async fn upstream(answer: Answer) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    for n in 0.. {
                        // GETs without bodies, one at a time.
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(len) => head.extend_from_slice(&chunk[..len]),
                            }
                        }
                        head.clear();
                        let reply: &[u8] = match answer {
                            Answer::HangUpOnSecond if n > 0 => return,
                            Answer::Empty => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                            Answer::Trailers => {
                                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
                                  trailer: x-checksum\r\n\r\n\
                                  2\r\nok\r\n0\r\nx-checksum: abc\r\n\r\n"
                            }
                            Answer::Partial => {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\npartial"
                            }
                            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        };
                        if sock.write_all(reply).await.is_err() {
                            return;
                        }
                        if answer == Answer::ThenClose {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn fetch(client: &Client, addr: &str) -> Result<Bytes, UpstreamError> {
        let permit = client.admit(addr).expect("a place");
        let resp = client.send(permit, get(addr)).await?;
        assert_eq!(resp.status(), http::StatusCode::OK);
        let body = resp.into_body().collect().await.expect("body");
        Ok(body.to_bytes())
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_body_was_read() {
        let (addr, accepted) = upstream(Answer::KeepAlive).await;
        let client = client(4);
        for _ in 0..3 {
            assert_eq!(fetch(&client, &addr).await.expect("response"), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// hyper never polls a body that is empty from the start: dropping it unread is its end.
    #[tokio::test]
    async fn an_empty_body_dropped_unread_frees_its_connection() {
        let (addr, accepted) = upstream(Answer::Empty).await;
        let client = client(4);
        for _ in 0..3 {
            let permit = client.admit(&addr).expect("a place");
            let resp = client.send(permit, get(&addr)).await.expect("response");
            assert!(resp.body().is_end_stream());
            drop(resp);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// What hyper's server does with a body whose last frame is its trailers: write them and
    /// drop the body without polling it again. The message is complete: the connection is
    /// reused.
    #[tokio::test]
    async fn a_body_dropped_after_its_trailers_frees_its_connection() {
        let (addr, accepted) = upstream(Answer::Trailers).await;
        let client = client(4);
        for _ in 0..3 {
            let permit = client.admit(&addr).expect("a place");
            let resp = client.send(permit, get(&addr)).await.expect("response");
            let mut body = resp.into_body();
            loop {
                let frame = body.frame().await.expect("a frame").expect("ok");
                if let Some(trailers) = frame.trailers_ref() {
                    assert_eq!(trailers["x-checksum"], "abc");
                    break;
                }
            }
            drop(body);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// The rest of a response dropped before its end would be read as the next response.
    #[tokio::test]
    async fn a_connection_is_not_reused_when_its_body_is_dropped_early() {
        let (addr, accepted) = upstream(Answer::Partial).await;
        let client = client(4);
        for _ in 0..2 {
            let permit = client.admit(&addr).expect("a place");
            let resp = client.send(permit, get(&addr)).await.expect("response");
            let mut body = resp.into_body();
            let frame = body.frame().await.expect("a frame").expect("data");
            assert_eq!(frame.into_data().expect("data"), "partial");
            drop(body);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (addr, accepted) = upstream(Answer::KeepAlive).await;
        let client = client(4);
        fetch(&client, &addr).await.expect("response");
        client.pool.sweep(Instant::now() + IDLE_TIMEOUT);
        fetch(&client, &addr).await.expect("response");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A pooled connection whose HTTP/1.1 task ended (here aborted) after it passed the
    /// checkout: hyper hands the request back unsent, as it does when the connection task
    /// takes the upstream's close of an idle connection before the request, and the request
    /// goes out again on a new connection. (A request already written when the close arrives
    /// is not handed back, and not sent again: see the next tests.)
    #[tokio::test]
    async fn a_request_on_a_connection_closed_while_idle_is_sent_again() {
        let (addr, accepted) = upstream(Answer::KeepAlive).await;
        let client = client(4);
        let stream = TcpStream::connect(&addr).await.expect("connect");
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let task = tokio::spawn(conn);
        let first = sender.send_request(get(&addr)).await.expect("first");
        first.into_body().collect().await.expect("body");
        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());

        let (resp, _) = client
            .send_reused(&addr, sender, get(&addr))
            .await
            .expect("sent again on a new connection");
        assert_eq!(resp.status(), http::StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// Each response is followed by the upstream closing its connection while it is idle:
    /// every request still gets its answer, on a new connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upstream_that_closes_idle_connections_is_served() {
        let (addr, accepted) = upstream(Answer::ThenClose).await;
        let client = client(4);
        for _ in 0..10 {
            assert_eq!(fetch(&client, &addr).await.expect("response"), "ok");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 10);
    }

    /// A request the upstream may have read is never sent twice, even on a reused connection.
    #[tokio::test]
    async fn a_request_that_reached_the_upstream_is_not_sent_again() {
        let (addr, accepted) = upstream(Answer::HangUpOnSecond).await;
        let client = client(4);
        fetch(&client, &addr).await.expect("first");
        let err = fetch(&client, &addr).await.expect_err("hung up");
        assert!(matches!(err, UpstreamError::Request(_)), "{err:?}");
        assert!(!err.is_connect());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_holds_its_place_until_its_body_is_done() {
        let (addr, _) = upstream(Answer::KeepAlive).await;
        let client = client(1);
        let permit = client.admit(&addr).expect("a place");
        let resp = client.send(permit, get(&addr)).await.expect("response");
        assert!(client.admit(&addr).is_none(), "at the cap");
        drop(resp);
        assert!(client.admit(&addr).is_some(), "the place was freed");
    }

    #[test]
    fn an_endpoint_at_its_cap_admits_nothing_until_a_place_frees() {
        let client = client(2);
        let a = client.admit("10.0.0.1:80").expect("first");
        let _b = client.admit("10.0.0.1:80").expect("second");
        assert!(client.admit("10.0.0.1:80").is_none());
        assert!(client.admit("10.0.0.2:80").is_some(), "per endpoint");
        drop(a);
        assert!(client.admit("10.0.0.1:80").is_some());
    }

    #[test]
    fn a_refused_request_holds_no_place() {
        let client = client(1);
        let a = client.admit("10.0.0.1:80").expect("first");
        for _ in 0..3 {
            assert!(client.admit("10.0.0.1:80").is_none());
        }
        drop(a);
        let _b = client
            .admit("10.0.0.1:80")
            .expect("the place freed by the first");
        assert!(client.admit("10.0.0.1:80").is_none());
    }

    /// A listener whose accept queue is full drops the next SYN, so a connect to it hangs
    /// until the connect timeout: `UF`, counted as `upstream_connect_timeout`.
    #[tokio::test]
    async fn a_connect_timeout_is_a_connect_failure_and_a_timeout() {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        listener.bind(&any.into()).expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        let mut queued = Vec::new();
        while let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            queued.push(s);
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        let client = Client::new(&Limits {
            upstream_connect_timeout: Some(Duration::from_millis(100)),
            ..Limits::default()
        });
        let addr = addr.to_string();
        let permit = client.admit(&addr).expect("a place");
        let err = client
            .send(permit, get(&addr))
            .await
            .expect_err("timed out");
        assert!(err.is_connect() && err.is_connect_timeout(), "{err:?}");
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_failure_not_a_timeout() {
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr").to_string();
        drop(closed);
        let client = client(4);
        let permit = client.admit(&addr).expect("a place");
        let err = client.send(permit, get(&addr)).await.expect_err("refused");
        assert!(err.is_connect() && !err.is_connect_timeout(), "{err:?}");
    }
}
