//! The request body forwarded upstream, with its trailer section filtered.
//!
//! HTTP/1.1 chunked requests and HTTP/2 requests can end with trailer fields. The header
//! section is sanitized before authorization; a trailer section passed on verbatim would carry
//! a forged `x-forwarded-client-cert` or `x-original-url` to any upstream that merges trailers
//! into headers (attack review, issue 12; CVE-2013-5704 is the same bypass in Apache httpd).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::headers::drop_untrusted_trailers;
use super::telemetry::metrics::Metrics;

/// A downstream body whose trailers lose what the header section would have lost, and the
/// fields the gateway manages ([`drop_untrusted_trailers`]). Data frames pass untouched.
pub struct RequestBody<B = Incoming> {
    inner: B,
    metrics: Arc<Metrics>,
    peer: SocketAddr,
}

impl<B> RequestBody<B> {
    pub fn new(inner: B, metrics: Arc<Metrics>, peer: SocketAddr) -> Self {
        Self {
            inner,
            metrics,
            peer,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        Poll::Ready(Some(Ok(match frame.into_trailers() {
            Ok(mut trailers) => {
                drop_untrusted_trailers(&mut trailers, &this.metrics, this.peer);
                Frame::trailers(trailers)
            }
            Err(data) => data,
        })))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::{HeaderMap, HeaderValue};
    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::proxy::telemetry::metrics::Workload;

    /// What the attack review sent as trailers (issue 12): every forged field is dropped and
    /// counted, the data and an innocent trailer pass.
    #[tokio::test]
    async fn forged_trailers_are_dropped_and_counted() {
        let metrics = Arc::new(Metrics::new(Workload {
            name: "portcullis".to_owned(),
            namespace: "istio-system".to_owned(),
        }));
        let mut forged = HeaderMap::new();
        for (name, value) in [
            (
                "x-forwarded-client-cert",
                "Hash=00;URI=spiffe://cluster.local/ns/prod/sa/admin",
            ),
            ("x_forwarded_client_cert", "URI=spiffe://evil"),
            ("x-original-url", "/status/418"),
            ("x-http-method-override", "DELETE"),
            ("x-envoy-original-path", "/status/418"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("host", "admin.internal"),
            ("content-length", "0"),
            ("connection", "close"),
            ("x-checksum", "abc"),
        ] {
            forged.append(
                http::header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let inner = Full::new(Bytes::from_static(b"payload"))
            .with_trailers(std::future::ready(Some(Ok::<_, Infallible>(forged))));
        let body = RequestBody::new(
            inner,
            Arc::clone(&metrics),
            "127.0.0.1:1".parse().expect("addr"),
        );
        let collected = body.collect().await.expect("infallible");
        let trailers = collected.trailers().cloned().expect("trailers");
        let left: Vec<&str> = trailers.keys().map(|n| n.as_str()).collect();
        assert_eq!(left, ["x-checksum"]);
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"payload"));
        let text = metrics.encode().expect("encode");
        for want in [
            r#"portcullis_request_headers_dropped_total{reason="underscore_in_name"} 1"#,
            r#"portcullis_request_headers_dropped_total{reason="path_or_method_override"} 3"#,
            r#"portcullis_request_headers_dropped_total{reason="gateway_managed_trailer"} 6"#,
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }
}
