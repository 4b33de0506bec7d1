//! What a connection knows about itself once accepted and (maybe) TLS-terminated.

use std::net::SocketAddr;

use crate::config::model::GatewayServer;
use crate::identity::PeerCertificate;

/// Facts about one downstream connection, shared by every request on it.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The Gateway port this connection arrived on.
    pub port: u16,
    /// The server chosen by SNI (TLS); plain HTTP chooses per request by Host.
    pub server: Option<GatewayServer>,
    pub sni: Option<String>,
    /// The verified client certificate (MUTUAL).
    pub peer_cert: Option<PeerCertificate>,
    pub tls: bool,
    /// The principal (`test.client`) read once from the certificate.
    pub principal: Option<String>,
}

impl ConnInfo {
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}
