//! The pooled HTTP client that carries requests to upstream endpoints, with a cap on what
//! one endpoint may be sent at once.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::limits::Limits;
use super::trailers::RequestBody;
use crate::config::model::Upstream;

/// Connection-pooling HTTP/1.1 client to upstream endpoints.
pub struct UpstreamClient {
    client: Client<HttpConnector, RequestBody>,
    next: AtomicUsize,
    in_flight: Arc<EndpointLoad>,
}

/// Requests in flight per endpoint. Over HTTP/1.1 each holds one upstream connection, so this
/// caps the connections one endpoint is opened (Envoy's circuit breaker, `UO` when full).
///
/// One counter per endpoint, found by name under the lock and then shared with the permit, so a
/// request hashes the endpoint once and allocates nothing; the permit's drop is one atomic
/// decrement. Counters are kept at zero rather than removed: endpoints come from the
/// configuration, so the map is as big as the set of endpoints ever configured.
#[derive(Debug)]
struct EndpointLoad {
    max: usize,
    by_endpoint: Mutex<HashMap<String, Arc<AtomicUsize>, BuildHasherDefault<Fnv1a>>>,
}

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

/// A place under an endpoint's cap; dropping it frees the place.
#[derive(Debug)]
pub struct UpstreamPermit {
    in_flight: Arc<AtomicUsize>,
}

impl Drop for UpstreamPermit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new(&Limits::default())
    }
}

impl UpstreamClient {
    pub fn new(limits: &Limits) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(limits.upstream_connect_timeout);
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            client,
            next: AtomicUsize::new(0),
            in_flight: Arc::new(EndpointLoad {
                max: limits.upstream_max_connections,
                by_endpoint: Mutex::new(HashMap::default()),
            }),
        }
    }

    /// The pooled client.
    pub fn client(&self) -> &Client<HttpConnector, RequestBody> {
        &self.client
    }

    /// A place for one more request to `endpoint`, or `None` when it is at its cap (answer
    /// 503 with flag `UO`).
    pub fn admit(&self, endpoint: &str) -> Option<UpstreamPermit> {
        let counter = {
            let mut map = self
                .in_flight
                .by_endpoint
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match map.get(endpoint) {
                Some(c) => c.clone(),
                None => map.entry(endpoint.to_owned()).or_default().clone(),
            }
        };
        // Increment only below the cap, so a refused request never holds a place.
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.in_flight.max).then_some(n + 1)
            })
            .ok()?;
        Some(UpstreamPermit { in_flight: counter })
    }

    /// Picks an endpoint round-robin.
    pub fn pick<'a>(&self, upstream: &'a Upstream) -> &'a str {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % upstream.endpoints.len().max(1);
        upstream.endpoints.get(i).map_or("", String::as_str)
    }
}

/// An upstream response body that holds its endpoint's place until it is done.
pub struct WithPermit<B> {
    body: B,
    _permit: UpstreamPermit,
}

impl<B> WithPermit<B> {
    pub fn new(body: B, permit: UpstreamPermit) -> Self {
        Self {
            body,
            _permit: permit,
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for WithPermit<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether an upstream request failed because its TCP connect timed out.
pub fn is_connect_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_at_its_cap_admits_nothing_until_a_place_frees() {
        let client = UpstreamClient::new(&Limits {
            upstream_max_connections: 2,
            ..Limits::default()
        });
        let a = client.admit("10.0.0.1:80").expect("first");
        let _b = client.admit("10.0.0.1:80").expect("second");
        assert!(client.admit("10.0.0.1:80").is_none());
        assert!(client.admit("10.0.0.2:80").is_some(), "per endpoint");
        drop(a);
        assert!(client.admit("10.0.0.1:80").is_some());
    }

    #[test]
    fn a_refused_request_holds_no_place() {
        let client = UpstreamClient::new(&Limits {
            upstream_max_connections: 1,
            ..Limits::default()
        });
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
}
