//! What the compiled snapshot holds beside the routes: listeners with their rustls
//! configurations, the credentials they were built from, and this node's side of the mesh.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::hosts::{best_match, HostMatch};
use crate::config::model::GatewayRef;
use crate::policy::authz::Authorizer;
use crate::policy::peer_auth::PeerAuthMode;
use crate::tls::{ClientCertChecks, Credential, ServerTlsMode};

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
    pub client_checks: ClientCertChecks,
    /// AuthorizationPolicies compiled for this workload's namespace and labels.
    pub authz: Arc<Authorizer>,
    /// PeerAuthentication mode of each workload port; the kernel maps get the same table.
    /// Key [`DEFAULT_PORT`] (0, never a TCP port) holds the workload-wide mode, which every
    /// port without a key of its own follows (Istio's STRICT covers every inbound port).
    pub modes: BTreeMap<u16, PeerAuthMode>,
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
    pub fn mode(&self, port: u16) -> PeerAuthMode {
        self.modes
            .get(&port)
            .or_else(|| self.modes.get(&DEFAULT_PORT))
            .copied()
            .unwrap_or(PeerAuthMode::Disable)
    }
}
