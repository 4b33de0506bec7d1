//! The pooled HTTP client that carries requests to upstream endpoints.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::model::Upstream;

/// Connection-pooling HTTP/1.1 client to upstream endpoints.
pub struct UpstreamClient {
    client: Client<HttpConnector, Incoming>,
    next: AtomicUsize,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            client,
            next: AtomicUsize::new(0),
        }
    }

    /// The pooled client.
    pub fn client(&self) -> &Client<HttpConnector, Incoming> {
        &self.client
    }

    /// Picks an endpoint round-robin.
    pub fn pick<'a>(&self, upstream: &'a Upstream) -> &'a str {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % upstream.endpoints.len().max(1);
        upstream.endpoints.get(i).map_or("", String::as_str)
    }
}
