//! The deadlines of one HTTP connection (`--header-read-timeout`, `--idle-timeout`,
//! `--max-connection-age`): [`ConnClock`] knows when the request head started arriving,
//! whether a request is in flight and since when the connection has been idle, and resolves
//! with the first deadline that passes. A request stays in flight until its response body is
//! done ([`Tracked`]). [`within`] bounds one step (a handshake, a connect) the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::proxy::limits::{LimitReason, Limits};

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
    pub(super) fn on_read(&self) {
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
    pub(super) fn begin(self: &Arc<Self>, http2: bool) -> ActiveGuard {
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
    pub(super) fn on_http2_preface(&self) {
        let mut s = self.lock();
        s.http2 = true;
        s.headers_since = None;
        drop(s);
        self.changed.notify_one();
    }

    /// Requests begun so far.
    pub(super) fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Resolves once more than `after` requests have begun on this connection.
    pub(super) async fn request_started(&self, after: u64) {
        loop {
            let began = self.began.notified();
            if self.lock().requests > after {
                return;
            }
            began.await;
        }
    }

    /// What the drain must do with this connection now.
    pub(super) fn drain_state(&self) -> DrainState {
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
pub(super) enum DrainState {
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

/// A request in flight (see [`ConnClock::begin`]).
#[derive(Debug)]
pub(super) struct ActiveGuard(Arc<ConnClock>);

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
    pub(super) body: Option<B>,
    pub(super) _guard: Option<ActiveGuard>,
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

/// Runs `fut` under `deadline` (none: no limit); `Err(())` when it passed.
pub async fn within<T>(deadline: Option<Duration>, fut: impl Future<Output = T>) -> Result<T, ()> {
    match deadline {
        Some(d) => tokio::time::timeout(d, fut).await.map_err(|_| ()),
        None => Ok(fut.await),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::proxy::limits::Limits;
    use crate::proxy::serve::test_support::{closed_within, limit_count, server};

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
}
