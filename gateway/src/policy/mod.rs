//! Authorization (AuthorizationPolicy) and peer authentication (PeerAuthentication) compiled for the hot path.
pub mod authz;
pub mod explain;
pub mod path;
pub mod peer_auth;

/// Whether the daemon refuses a method before any policy: one with a lowercase letter.
/// Policies match methods exactly, as Istio does, but Werkzeug (and other upstreams that accept
/// non-uppercase tokens) uppercases them, so `get` would slip past a `methods: [GET]` DENY and
/// be served as GET. No registered method has a lowercase letter; gunicorn 22+ refuses them too.
/// The daemon and `explain` both ask this.
pub fn method_refused(method: &str) -> bool {
    method.bytes().any(|b| b.is_ascii_lowercase())
}
