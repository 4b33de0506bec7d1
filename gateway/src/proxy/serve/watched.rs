//! The connection's stream as hyper reads it, telling the [`ConnClock`] when bytes arrive
//! (the header-read deadline starts at a head's first byte) and when the HTTP/2 preface does
//! (from then on the connection is idle while no stream is open).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::deadlines::ConnClock;

/// The connection's stream, telling the clock when bytes arrive.
pub(super) struct Watched<S> {
    inner: S,
    clock: Arc<ConnClock>,
    /// The connection's first bytes, until they show whether it is HTTP/2.
    sniffed: Option<Vec<u8>>,
}

/// The start of the HTTP/2 client connection preface (RFC 9113 §3.4), enough to tell it from
/// any HTTP/1 request line.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

impl<S> Watched<S> {
    pub(super) fn new(inner: S, clock: Arc<ConnClock>) -> Self {
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
