//! The accept loop every listener runs: admission under the caps (over one, the connection is
//! accepted and closed at once, never left in the accept queue), backoff on accept errors
//! (EMFILE) without spinning, and on drain the connections already queued taken and served
//! before the listener closes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::drain::DrainSignal;
use super::limiter::{ConnLimiter, ConnPermit};
use crate::proxy::limits::LimitReason;
use crate::proxy::telemetry::metrics::Metrics;

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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::proxy::limits::Limits;
    use crate::proxy::serve::test_support::{closed_within, limit_count, metrics, server};
    use crate::proxy::serve::Drain;

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
