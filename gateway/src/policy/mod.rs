//! Authorization (AuthorizationPolicy) and peer authentication (PeerAuthentication) compiled for the hot path.
pub mod authz;
pub mod explain;
pub mod path;
pub mod peer_auth;
