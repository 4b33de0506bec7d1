//! The one accept loop, the per-connection deadlines and the drain, shared by every listener
//! (ingress ports, the mesh terminator, the outbound originator, the admin listener).
//!
//! - [`accept_loop`]: admits a connection under the global and per-source caps (over a cap it
//!   is accepted and closed at once, never left in the accept queue), backs off on accept
//!   errors (EMFILE) without spinning, and stops when the [`Drain`] starts.
//! - [`serve_http`]: one HTTP/1 or HTTP/2 connection with the header-read, idle and
//!   max-age deadlines, hyper's HTTP/2 settings, graceful close on drain, and a hook that
//!   closes it when a new configuration no longer accepts its client.
//!
//! Every deadline and cap that fires goes through [`LimitReason::fire`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::limits::{LimitReason, Limits};
use super::telemetry::metrics::Metrics;

/// Starts the drain: listeners stop accepting, open connections close gracefully.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// What a listener or a connection watches to learn that the drain started.
#[derive(Clone, Debug)]
pub struct DrainSignal {
    rx: watch::Receiver<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(false).0,
        }
    }

    pub fn signal(&self) -> DrainSignal {
        DrainSignal {
            rx: self.tx.subscribe(),
        }
    }

    pub fn start(&self) {
        self.tx.send_replace(true);
    }
}

impl DrainSignal {
    /// A signal that never fires (tests, and listeners that live as long as the process).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // The sender is leaked on purpose: a dropped sender would read as "drain".
        std::mem::forget(tx);
        Self { rx }
    }

    /// Resolves once the drain has started (or its [`Drain`] is gone).
    pub async fn draining(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

/// The downstream connection caps, shared by every listener of the process.
#[derive(Debug)]
pub struct ConnLimiter {
    max: usize,
    per_source: usize,
    open: AtomicUsize,
    by_source: Mutex<HashMap<IpAddr, usize>>,
    closed: Notify,
}

/// One admitted connection; dropping it frees its place under the caps.
#[derive(Debug)]
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    source: IpAddr,
}

impl ConnLimiter {
    pub fn new(max: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_source,
            open: AtomicUsize::new(0),
            by_source: Mutex::new(HashMap::new()),
            closed: Notify::new(),
        })
    }

    /// Admits a connection from `source`, or says which cap it is over.
    pub fn try_admit(self: &Arc<Self>, source: IpAddr) -> Result<ConnPermit, LimitReason> {
        let source = source.to_canonical();
        let mut by_source = self
            .by_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.max {
            return Err(LimitReason::max_connections);
        }
        let n = by_source.entry(source).or_insert(0);
        if *n >= self.per_source {
            return Err(LimitReason::max_connections_per_source);
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(ConnPermit {
            limiter: self.clone(),
            source,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Resolves when no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut by_source = self
            .limiter
            .by_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
        if self.limiter.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.limiter.closed.notify_waiters();
        }
    }
}

/// Something connections are accepted from: a [`TcpListener`], or a fake in tests.
pub trait Accept: Send + 'static {
    type Conn: Send + 'static;
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Conn, SocketAddr)>> + Send;

    /// Called once when the drain starts, just before the listener is closed: stops new
    /// handshakes and returns the connections already in the accept queue, which closing
    /// the listener would otherwise reset.
    fn take_backlog(&mut self) -> Vec<(Self::Conn, SocketAddr)> {
        Vec::new()
    }
}

/// The most connections taken from the accept queue when the drain starts (the queue's
/// length is bounded by the listen backlog anyway; this only bounds the loop).
const BACKLOG_SWEEP_MAX: usize = 4096;

impl Accept for TcpListener {
    type Conn = TcpStream;
    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }

    fn take_backlog(&mut self) -> Vec<(TcpStream, SocketAddr)> {
        // Closing a listening socket resets every connection still in its accept queue: a
        // client whose handshake completed just before the drain would lose its request. So
        // first stop handshakes from completing (a socket filter that drops every packet:
        // a new SYN goes unanswered, and its retry finds the port closed, a clean refusal),
        // then accept what is queued until EAGAIN; those are served like any other.
        if let Err(e) = drop_all_packets(self) {
            tracing::warn!(error = %e, "could not stop new handshakes before closing the listener");
        }
        let sock = socket2::SockRef::from(&*self);
        let mut taken = Vec::new();
        while taken.len() < BACKLOG_SWEEP_MAX {
            let (conn, peer) = match sock.accept() {
                Ok(c) => c,
                // EAGAIN: the queue is empty (the listener is non-blocking).
                Err(_) => break,
            };
            let Some(peer) = peer.as_socket() else {
                continue;
            };
            let stream = std::net::TcpStream::from(conn);
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if let Ok(stream) = TcpStream::from_std(stream) {
                let _ = stream.set_nodelay(true);
                taken.push((stream, peer));
            }
        }
        taken
    }
}

/// Attaches a classic BPF filter that drops every packet to `listener`: no new connection
/// enters its accept queue.
fn drop_all_packets(listener: &TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut drop_all = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: drop_all.as_mut_ptr(),
    };
    // SAFETY: `prog` and the one instruction it points to outlive the call; the kernel copies
    // the program; the fd is the listener's own.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The first and the longest pause after a failed accept. EMFILE leaves the connection in
/// the queue, so retrying at once would spin; a second is short enough to recover quickly.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// What the accept loop shares with the rest of the process.
#[derive(Clone, Debug)]
pub struct Admission {
    pub limiter: Arc<ConnLimiter>,
    pub metrics: Arc<Metrics>,
}

/// Accepts until the drain starts; each admitted connection runs `handle` in its own task
/// with its permit (drop it when the connection ends).
pub async fn accept_loop<A, H, Fut>(
    mut listener: A,
    name: &'static str,
    admission: Admission,
    mut drain: DrainSignal,
    handle: H,
) where
    A: Accept,
    H: Fn(A::Conn, SocketAddr, ConnPermit) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = drain.draining() => {
                let backlog = listener.take_backlog();
                tracing::info!(listener = name, queued = backlog.len(), "draining: no new connections");
                for (conn, peer) in backlog {
                    admit(&admission, &handle, conn, peer);
                }
                return;
            }
        };
        let (conn, peer) = match accepted {
            Ok(a) => {
                backoff = ACCEPT_BACKOFF.0;
                a
            }
            Err(e) => {
                admission.metrics.record_limit(LimitReason::accept_error);
                tracing::warn!(listener = name, error = %e, pause_ms = backoff.as_millis() as u64, reason = "accept_error", "accept failed; pausing");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        admit(&admission, &handle, conn, peer);
    }
}

/// Runs `handle` on a connection under the caps, or closes it at once when over one.
fn admit<C, H, Fut>(admission: &Admission, handle: &H, conn: C, peer: SocketAddr)
where
    H: Fn(C, SocketAddr, ConnPermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match admission.limiter.try_admit(peer.ip()) {
        Ok(permit) => {
            tokio::spawn(handle(conn, peer, permit));
        }
        // Closed at once: the peer sees a FIN (or a reset) instead of waiting in the queue.
        Err(reason) => {
            reason.fire(&admission.metrics, Some(peer));
            drop(conn);
        }
    }
}

/// The deadlines of one HTTP connection: when its request headers started arriving, whether
/// a request is in flight, and since when it has been idle.
#[derive(Debug)]
pub struct ConnClock {
    state: Mutex<ClockState>,
    changed: Notify,
    /// Wakes [`ConnClock::request_started`].
    began: Notify,
    started: Instant,
    header_read: Option<Duration>,
    idle: Option<Duration>,
    max_age: Option<Duration>,
}

#[derive(Debug)]
struct ClockState {
    active: usize,
    idle_since: Instant,
    headers_since: Option<Instant>,
    http2: bool,
    /// Requests begun on this connection so far.
    requests: u64,
    /// Whether any byte arrived.
    read_any: bool,
}

impl ConnClock {
    pub fn new(limits: &Limits) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            state: Mutex::new(ClockState {
                active: 0,
                idle_since: now,
                headers_since: None,
                http2: false,
                requests: 0,
                read_any: false,
            }),
            changed: Notify::new(),
            began: Notify::new(),
            started: now,
            header_read: limits.header_read_timeout,
            idle: limits.idle_timeout,
            max_age: limits.max_connection_age,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes arrived. With no request in flight on HTTP/1 they are the next request's head:
    /// its header-read deadline starts now.
    fn on_read(&self) {
        let mut s = self.lock();
        s.read_any = true;
        if !s.http2 && s.active == 0 && s.headers_since.is_none() {
            s.headers_since = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A request's headers are complete; the connection is busy until the guard drops (when
    /// the response body has been sent or abandoned).
    fn begin(self: &Arc<Self>, http2: bool) -> ActiveGuard {
        let mut s = self.lock();
        s.active += 1;
        s.headers_since = None;
        s.http2 |= http2;
        s.requests += 1;
        drop(s);
        self.began.notify_waiters();
        ActiveGuard(self.clone())
    }

    /// The client sent the HTTP/2 connection preface: from now on the connection is idle
    /// while no stream is open, whatever frames (SETTINGS, PING) it sends.
    fn on_http2_preface(&self) {
        let mut s = self.lock();
        s.http2 = true;
        s.headers_since = None;
        drop(s);
        self.changed.notify_one();
    }

    /// Requests begun so far.
    fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Resolves once more than `after` requests have begun on this connection.
    async fn request_started(&self, after: u64) {
        loop {
            let began = self.began.notified();
            if self.lock().requests > after {
                return;
            }
            began.await;
        }
    }

    /// What the drain must do with this connection now.
    fn drain_state(&self) -> DrainState {
        let s = self.lock();
        if s.active > 0 {
            DrainState::Busy
        } else if s.headers_since.is_some() {
            DrainState::MidHead
        } else if s.requests == 0 && !(s.http2 && s.read_any) {
            DrainState::Fresh
        } else {
            DrainState::Idle
        }
    }

    fn next_deadline(&self) -> Option<(Instant, LimitReason)> {
        let s = self.lock();
        let age = self
            .max_age
            .map(|d| (self.started + d, LimitReason::max_connection_age));
        let other = match s.headers_since {
            Some(since) => self
                .header_read
                .map(|d| (since + d, LimitReason::header_read_timeout)),
            None if s.active == 0 => self
                .idle
                .map(|d| (s.idle_since + d, LimitReason::idle_timeout)),
            None => None,
        };
        match (age, other) {
            (Some(a), Some(o)) => Some(if a.0 <= o.0 { a } else { o }),
            (a, o) => a.or(o),
        }
    }

    /// Resolves with the first deadline that passes.
    pub async fn expired(&self) -> LimitReason {
        loop {
            let changed = self.changed.notified();
            match self.next_deadline() {
                Some((at, reason)) if at <= Instant::now() => return reason,
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// Where a connection stands when the drain starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DrainState {
    /// A request in flight: it finishes, answered with `Connection: close` / after a GOAWAY.
    Busy,
    /// An HTTP/1 request head is arriving: it is served, then the connection closes.
    MidHead,
    /// Accepted but nothing has arrived yet (typically accepted just as the drain started):
    /// its client is about to send its first request, which is served.
    Fresh,
    /// Between requests: closed now.
    Idle,
}

/// How long a connection accepted as the drain starts may take to send its first bytes.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// A request in flight (see [`ConnClock::begin`]).
#[derive(Debug)]
struct ActiveGuard(Arc<ConnClock>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.active = s.active.saturating_sub(1);
        if s.active == 0 {
            s.idle_since = Instant::now();
        }
        drop(s);
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request counted as in flight until it is done.
pub struct Tracked<B> {
    /// None: an empty body (an answer of the gateway's own, such as 431).
    body: Option<B>,
    _guard: Option<ActiveGuard>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// The connection's stream, telling the clock when bytes arrive.
struct Watched<S> {
    inner: S,
    clock: Arc<ConnClock>,
    /// The connection's first bytes, until they show whether it is HTTP/2.
    sniffed: Option<Vec<u8>>,
}

/// The start of the HTTP/2 client connection preface (RFC 9113 §3.4), enough to tell it from
/// any HTTP/1 request line.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

impl<S> Watched<S> {
    fn new(inner: S, clock: Arc<ConnClock>) -> Self {
        Self {
            inner,
            clock,
            sniffed: Some(Vec::with_capacity(H2_PREFACE.len())),
        }
    }

    /// Looks at newly read bytes until the preface is recognised or ruled out.
    fn sniff(&mut self, new: &[u8]) {
        let Some(seen) = self.sniffed.as_mut() else {
            return;
        };
        let want = H2_PREFACE.len() - seen.len();
        seen.extend_from_slice(&new[..new.len().min(want)]);
        if !H2_PREFACE.starts_with(seen) {
            self.sniffed = None;
        } else if seen.len() == H2_PREFACE.len() {
            self.sniffed = None;
            self.clock.on_http2_preface();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.on_read();
            if self.sniffed.is_some() {
                self.sniff(&buf.filled()[before..]);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

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
    pub reloads: Option<(watch::Receiver<Arc<crate::config::Snapshot>>, Revalidate)>,
}

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
                        tracing::warn!(%peer, "the new configuration refuses this client's certificate; closing the connection");
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

/// Runs `fut` under `deadline` (none: no limit); `Err(())` when it passed.
pub async fn within<T>(deadline: Option<Duration>, fut: impl Future<Output = T>) -> Result<T, ()> {
    match deadline {
        Some(d) => tokio::time::timeout(d, fut).await.map_err(|_| ()),
        None => Ok(fut.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::telemetry::metrics::Workload;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(Workload {
            name: "t".into(),
            namespace: "t".into(),
        }))
    }

    fn limit_count(metrics: &Metrics, reason: &str) -> u64 {
        let text = metrics.encode().expect("encode");
        let want = format!("portcullis_limits_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&want))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {want} in\n{text}"))
    }

    /// An HTTP server on loopback whose connections run through [`serve_http`].
    async fn server(limits: Limits) -> (SocketAddr, Arc<Metrics>, Drain) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = metrics();
        let limits = Arc::new(limits);
        let drain = Drain::new();
        let admission = Admission {
            limiter: ConnLimiter::new(limits.max_connections, limits.max_connections_per_source),
            metrics: metrics.clone(),
        };
        let (m, signal) = (metrics.clone(), drain.signal());
        tokio::spawn(accept_loop(
            listener,
            "test",
            admission,
            drain.signal(),
            move |stream, peer, permit| {
                let conn = HttpConn {
                    peer,
                    limits: limits.clone(),
                    metrics: m.clone(),
                    drain: signal.clone(),
                    reloads: None,
                };
                async move {
                    serve_http(stream, conn, |_req| async {
                        Response::new(Full::new(Bytes::from_static(b"ok")))
                    })
                    .await;
                    drop(permit);
                }
            },
        ));
        (addr, metrics, drain)
    }

    /// Reads until the server closes; true when it did (EOF or reset) before `wait`.
    async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(wait, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn a_slowloris_client_is_closed_by_its_header_deadline() {
        let (addr, metrics, _drain) = server(Limits {
            header_read_timeout: Some(Duration::from_millis(300)),
            ..Limits::default()
        })
        .await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        // One header line now and then, never the blank line.
        let trickle = async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if slow.write_all(b"X-A: b\r\n").await.is_err() {
                    return;
                }
            }
        };
        trickle.await;
        assert!(
            closed_within(&mut slow, Duration::from_secs(5)).await,
            "the slow client was not closed"
        );
        assert_eq!(limit_count(&metrics, "header_read_timeout"), 1);
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
        let (addr, metrics, _drain) = server(Limits {
            idle_timeout: Some(Duration::from_millis(300)),
            ..Limits::default()
        })
        .await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        for _ in 0..4 {
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 256];
            let n = c.read(&mut buf).await.expect("read");
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(limit_count(&metrics, "idle_timeout"), 0);
        assert!(closed_within(&mut c, Duration::from_secs(5)).await);
        assert_eq!(limit_count(&metrics, "idle_timeout"), 1);
        assert_eq!(limit_count(&metrics, "header_read_timeout"), 0);
    }

    #[tokio::test]
    async fn a_connection_past_its_max_age_is_closed_between_requests() {
        let (addr, metrics, _drain) = server(Limits {
            max_connection_age: Some(Duration::from_millis(300)),
            ..Limits::default()
        })
        .await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        assert!(closed_within(&mut c, Duration::from_secs(5)).await);
        assert_eq!(limit_count(&metrics, "max_connection_age"), 1);
        assert_eq!(limit_count(&metrics, "idle_timeout"), 0);
    }

    #[tokio::test]
    async fn connections_over_the_caps_are_closed_at_once() {
        let (addr, metrics, _drain) = server(Limits {
            max_connections: 3,
            max_connections_per_source: 2,
            ..Limits::default()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut third = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_within(&mut third, Duration::from_secs(5)).await);
        assert_eq!(limit_count(&metrics, "max_connections_per_source"), 1);
        // The held ones are still served.
        held[0]
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let n = held[0].read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // Another source address takes the last global place, then the cap is full.
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        other
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind");
        let _fourth = other.connect(addr).await.expect("connect");
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        other
            .bind("127.0.0.3:0".parse().expect("addr"))
            .expect("bind");
        let mut fifth = other.connect(addr).await.expect("connect");
        assert!(closed_within(&mut fifth, Duration::from_secs(5)).await);
        assert_eq!(limit_count(&metrics, "max_connections"), 1);
    }

    #[tokio::test]
    async fn drain_closes_idle_connections_and_stops_accepting() {
        let (addr, _metrics, drain) = server(Limits::default()).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        let _ = c.read(&mut buf).await.expect("read");
        drain.start();
        assert!(closed_within(&mut c, Duration::from_secs(5)).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }

    #[tokio::test]
    async fn an_http2_connection_without_streams_is_closed_by_the_idle_timeout() {
        let (addr, metrics, _drain) = server(Limits {
            idle_timeout: Some(Duration::from_millis(300)),
            header_read_timeout: Some(Duration::from_secs(30)),
            ..Limits::default()
        })
        .await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        // The preface, an empty SETTINGS frame, then PINGs now and then: frames, no stream.
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .expect("write");
        assert!(closed_within(&mut c, Duration::from_secs(5)).await);
        assert_eq!(limit_count(&metrics, "idle_timeout"), 1);
        assert_eq!(limit_count(&metrics, "header_read_timeout"), 0);
    }

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

    #[tokio::test]
    async fn connections_in_the_accept_queue_when_the_drain_starts_are_served() {
        let (addr, _metrics, drain) = server(Limits::default()).await;
        // Handshakes the kernel completes while the (single-threaded) runtime does not run the
        // accept loop: they sit in the accept queue when the drain starts.
        let queued: Vec<std::net::TcpStream> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        drain.start();
        for c in queued {
            c.set_nonblocking(true).expect("nonblocking");
            let mut c = TcpStream::from_std(c).expect("tokio stream");
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut got = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
            let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
            assert!(got.starts_with("http/1.1 200"), "{r:?} {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }

    /// Fails every accept with EMFILE.
    struct Exhausted(Arc<AtomicUsize>);

    impl Accept for Exhausted {
        type Conn = ();
        async fn accept(&mut self) -> io::Result<((), SocketAddr)> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_instead_of_spinning() {
        let tries = Arc::new(AtomicUsize::new(0));
        let metrics = metrics();
        let admission = Admission {
            limiter: ConnLimiter::new(10, 10),
            metrics: metrics.clone(),
        };
        let drain = Drain::new();
        let task = tokio::spawn(accept_loop(
            Exhausted(tries.clone()),
            "test",
            admission,
            drain.signal(),
            |_, _, _| async {},
        ));
        // Ten seconds of (paused, virtual) time: 10+20+…+640 ms, then one try a second.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let n = tries.load(Ordering::Relaxed);
        assert!((8..=20).contains(&n), "{n} accept attempts in 10 s");
        assert_eq!(limit_count(&metrics, "accept_error"), n as u64);
        drain.start();
        task.await.expect("the loop ends on drain");
    }
}
