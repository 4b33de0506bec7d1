//! The one accept loop, the per-connection deadlines and the drain, shared by every listener
//! (ingress ports, the mesh terminator, the outbound originator, the admin listener).
//!
//! - [`accept_loop`] (`accept.rs`): admits a connection under the global and per-source caps
//!   ([`ConnLimiter`], `limiter.rs`; over a cap it is accepted and closed at once, never left
//!   in the accept queue), backs off on accept errors (EMFILE) without spinning, and stops
//!   when the [`Drain`] (`drain.rs`) starts.
//! - [`serve_http`] (`http.rs`): one HTTP/1 or HTTP/2 connection with hyper's HTTP/2
//!   settings, graceful close on drain, and a hook that closes it when a new configuration no
//!   longer accepts its client.
//! - [`ConnClock`] (`deadlines.rs`): the header-read, idle and max-age deadlines, fed by the
//!   stream wrapper in `watched.rs`.
//!
//! Every deadline and cap that fires goes through
//! [`LimitReason::fire`](super::limits::LimitReason::fire).

mod accept;
mod deadlines;
mod drain;
mod http;
mod limiter;
mod watched;

#[cfg(test)]
mod test_support;

pub use accept::{accept_loop, Accept, Admission};
pub use deadlines::{within, ConnClock, Tracked};
pub use drain::{Drain, DrainSignal};
pub use http::{http_builder, serve_http, serve_http1, ConnectionRefused, HttpConn, Revalidate};
pub use limiter::{ConnLimiter, ConnPermit};
