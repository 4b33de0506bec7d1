//! The validated routing model the proxy reads: gateways as routes name them, virtual hosts,
//! route rules and upstreams. Plain data: what needs TLS material (listeners, credentials,
//! the mesh side) is in the snapshot's model, one layer up.

use std::fmt;
use std::time::Duration;

use super::hosts::{authority_host, best_match, HostMatch};

/// A Gateway named `namespace/name`, as VirtualServices refer to it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct GatewayRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for GatewayRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The HTTP routes of one VirtualService bound to gateways.
#[derive(Clone, Debug)]
pub struct VirtualHost {
    /// `namespace/name` of the VirtualService.
    pub name: String,
    pub gateways: Vec<GatewayRef>,
    pub hosts: Vec<HostMatch>,
    pub http: Vec<HttpRouteRule>,
    pub tls: Vec<TlsRouteRule>,
}

/// A request path condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UriMatch {
    Exact(String),
    Prefix(String),
}

impl UriMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            UriMatch::Exact(p) => p == path,
            UriMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// One `http[]` entry: its match conditions (any of them) and where it goes.
#[derive(Clone, Debug)]
pub struct HttpRouteRule {
    pub name: Option<String>,
    /// `(uri, port)` pairs from `match[]`; empty matches every request.
    pub matches: Vec<(Option<UriMatch>, Option<u16>)>,
    pub upstream: Upstream,
    pub timeout: Option<Duration>,
}

/// One `tls[]` entry: SNI hosts routed to an upstream (PASSTHROUGH servers).
#[derive(Clone, Debug)]
pub struct TlsRouteRule {
    pub sni_hosts: Vec<HostMatch>,
    pub port: Option<u16>,
    pub upstream: Upstream,
}

/// A destination service and the endpoints that serve it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Upstream {
    /// The destination host as the VirtualService names it.
    pub service: String,
    pub port: u16,
    /// `host:port` authorities to connect to, from the ServiceEntry.
    pub endpoints: Vec<String>,
}

/// The whole routing table for the listeners.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    pub virtual_hosts: Vec<VirtualHost>,
}

impl Routes {
    /// The HTTP route for a request that arrived through `server` on `port`.
    pub fn http(
        &self,
        gateway: &GatewayRef,
        authority: &str,
        path: &str,
        port: u16,
    ) -> Option<&HttpRouteRule> {
        let host = authority_host(authority);
        let candidates = self
            .virtual_hosts
            .iter()
            .filter(|vh| vh.gateways.contains(gateway))
            .flat_map(|vh| vh.hosts.iter().map(move |h| (h, vh)));
        let vh = best_match(candidates, &host)?;
        vh.http.iter().find(|rule| {
            rule.matches.is_empty()
                || rule.matches.iter().any(|(uri, p)| {
                    uri.as_ref().is_none_or(|u| u.matches(path)) && p.is_none_or(|p| p == port)
                })
        })
    }

    /// The passthrough route for a TLS connection with `sni` on `port`.
    pub fn tls(&self, gateway: &GatewayRef, sni: &str, port: u16) -> Option<&TlsRouteRule> {
        let candidates = self
            .virtual_hosts
            .iter()
            .filter(|vh| vh.gateways.contains(gateway))
            .flat_map(|vh| vh.tls.iter())
            .filter(|r| r.port.is_none_or(|p| p == port))
            .flat_map(|r| r.sni_hosts.iter().map(move |h| (h, r)));
        best_match(candidates, sni)
    }
}
