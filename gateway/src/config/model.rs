//! The validated model the proxy reads: listeners, routes, upstreams and credentials.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::hosts::{authority_host, best_match, HostMatch};
use crate::tls::{ClientCertChecks, Credential, ServerTlsMode};

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

/// One port the gateway listens on, with every Gateway server declared on it.
#[derive(Clone, Debug)]
pub struct Listener {
    pub port: u16,
    /// Plain HTTP, or TLS first (terminated or passed through, chosen per server by SNI).
    pub tls: bool,
    pub servers: Vec<GatewayServer>,
}

impl Listener {
    /// The server a TLS connection for `sni` belongs to. A ClientHello without SNI (a client
    /// dialing an IP) gets the server with host `*`, or the only server on the port.
    pub fn server_for_sni(&self, sni: Option<&str>) -> Option<&GatewayServer> {
        match sni {
            Some(name) => best_match(
                self.servers
                    .iter()
                    .flat_map(|s| s.hosts.iter().map(move |h| (h, s))),
                name,
            ),
            None => self
                .servers
                .iter()
                .find(|s| s.hosts.contains(&HostMatch::Any))
                .or(if self.servers.len() == 1 {
                    self.servers.first()
                } else {
                    None
                }),
        }
    }
}

/// One `servers[]` entry of a Gateway.
#[derive(Clone, Debug)]
pub struct GatewayServer {
    pub gateway: GatewayRef,
    /// `port.name`, for logs and metrics.
    pub port_name: String,
    pub hosts: Vec<HostMatch>,
    pub tls: Option<ServerTls>,
}

/// What a TLS server does with the connection.
#[derive(Clone, Debug)]
pub enum ServerTls {
    /// Terminate TLS and serve HTTP.
    Terminate {
        mode: ServerTlsMode,
        credential_name: String,
        config: Arc<rustls::ServerConfig>,
        /// What MUTUAL asks of a client beyond the chain (SANs, pins, CRL), as built into
        /// `config`; kept to describe the server and to re-check open connections
        /// (`crate::tls::verify_client_chain`).
        client_checks: ClientCertChecks,
    },
    /// Route by SNI and forward the bytes untouched.
    Passthrough,
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

/// Credentials by `credentialName`, parsed and checked.
pub type Credentials = BTreeMap<String, Arc<Credential>>;

/// The key of [`MeshInbound::modes`] that holds the mode of every port not listed.
pub const DEFAULT_PORT: u16 = 0;

/// This node's side of the mesh: its workload, its identity, what steered connections to it
/// are checked against, and the mesh destinations its clients' connections are upgraded for.
#[derive(Clone, Debug)]
pub struct MeshInbound {
    /// The workload credential's name (its certificate is what mesh peers see).
    pub credential_name: String,
    /// The workload's credential: presented to servers by the outbound side.
    pub credential: Arc<Credential>,
    /// MUTUAL: clients must present a certificate from the mesh CA (`ca.crt`).
    pub tls: Arc<rustls::ServerConfig>,
    /// What `tls` checks beyond the chain (the mesh's trust domains): kept to re-check open
    /// connections after a reload.
    pub client_checks: crate::tls::ClientCertChecks,
    /// AuthorizationPolicies compiled for this workload's namespace and labels.
    pub authz: Arc<crate::policy::authz::Authorizer>,
    /// PeerAuthentication mode of each workload port; the kernel maps get the same table.
    /// Key [`DEFAULT_PORT`] (0, never a TCP port) holds the workload-wide mode, which every
    /// port without a key of its own follows (Istio's STRICT covers every inbound port).
    pub modes: BTreeMap<u16, crate::policy::peer_auth::PeerAuthMode>,
    /// This node's WorkloadEntry: `namespace/name`.
    pub workload: String,
    /// The workload's name and namespace, for metrics.
    pub workload_name: String,
    pub workload_namespace: String,
    /// Mesh destinations by address: other WorkloadEntries and ServiceEntry endpoints.
    pub destinations: BTreeMap<std::net::SocketAddr, MeshDestination>,
}

/// A mesh workload this node's clients may call, and who it must prove to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshDestination {
    pub workload: String,
    pub namespace: String,
    /// The service host that names it (a ServiceEntry selecting it), else the workload name.
    pub service: String,
    /// Secure naming: the SPIFFE ids the server may present.
    pub identities: Vec<crate::identity::Identity>,
}

impl MeshInbound {
    /// A port's mode: its own, else the workload-wide one at [`DEFAULT_PORT`], else DISABLE
    /// (the mesh leaves the port alone).
    pub fn mode(&self, port: u16) -> crate::policy::peer_auth::PeerAuthMode {
        self.modes
            .get(&port)
            .or_else(|| self.modes.get(&DEFAULT_PORT))
            .copied()
            .unwrap_or(crate::policy::peer_auth::PeerAuthMode::Disable)
    }
}
