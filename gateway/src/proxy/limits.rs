//! Deadlines and caps: what a connection may cost the daemon before it is closed.
//!
//! Every limit has a default a user would expect (Envoy's and nginx's are the reference) and a
//! `portcullis run` flag; README.md lists them. When one fires it is counted in
//! `portcullis_limits_total{reason}` ([`LimitReason`]) and logged with the peer, in one place:
//! [`LimitReason::fire`].

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelValue;

/// Why a limit fired: the `reason` label of `portcullis_limits_total`, a closed set.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LimitReason {
    tls_handshake_timeout,
    header_read_timeout,
    idle_timeout,
    max_connection_age,
    max_connections,
    max_connections_per_source,
    request_headers_too_large,
    upstream_overflow,
    upstream_connect_timeout,
    upstream_request_timeout,
    accept_error,
    http2_rapid_reset,
}

impl LimitReason {
    /// Every reason, so the metric shows each series from the start (at 0).
    pub const ALL: [LimitReason; 12] = [
        Self::tls_handshake_timeout,
        Self::header_read_timeout,
        Self::idle_timeout,
        Self::max_connection_age,
        Self::max_connections,
        Self::max_connections_per_source,
        Self::request_headers_too_large,
        Self::upstream_overflow,
        Self::upstream_connect_timeout,
        Self::upstream_request_timeout,
        Self::accept_error,
        Self::http2_rapid_reset,
    ];

    /// The reason as the metric label spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::tls_handshake_timeout => "tls_handshake_timeout",
            Self::header_read_timeout => "header_read_timeout",
            Self::idle_timeout => "idle_timeout",
            Self::max_connection_age => "max_connection_age",
            Self::max_connections => "max_connections",
            Self::max_connections_per_source => "max_connections_per_source",
            Self::request_headers_too_large => "request_headers_too_large",
            Self::upstream_overflow => "upstream_overflow",
            Self::upstream_connect_timeout => "upstream_connect_timeout",
            Self::upstream_request_timeout => "upstream_request_timeout",
            Self::accept_error => "accept_error",
            Self::http2_rapid_reset => "http2_rapid_reset",
        }
    }

    /// Counts the firing and logs it with the peer: the one place every limit reports.
    pub fn fire(self, metrics: &super::telemetry::metrics::Metrics, peer: Option<SocketAddr>) {
        metrics.record_limit(self);
        match peer {
            Some(peer) => tracing::info!(reason = self.as_str(), %peer, "limit reached"),
            None => tracing::warn!(reason = self.as_str(), "limit reached"),
        }
    }
}

impl fmt::Display for LimitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every deadline and cap, resolved (a `None` deadline is off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The whole TLS handshake, ClientHello included.
    pub tls_handshake_timeout: Option<Duration>,
    /// HTTP/1 request headers, from their first byte (first and later requests).
    pub header_read_timeout: Option<Duration>,
    /// No request in flight for this long: HTTP/1 keep-alive and HTTP/2 alike.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 PING interval (the ack must come within [`Self::HTTP2_PING_ACK_TIMEOUT`]).
    pub http2_keepalive: Option<Duration>,
    /// Connections are closed gracefully after this age.
    pub max_connection_age: Option<Duration>,
    pub upstream_connect_timeout: Option<Duration>,
    /// Request header bytes (HTTP/1 head, HTTP/2 header list).
    pub max_request_headers_size: usize,
    pub max_request_headers: usize,
    pub http2_max_concurrent_streams: u32,
    /// Open downstream connections, all listeners together.
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// Requests in flight to one upstream endpoint (one pooled connection each).
    pub upstream_max_connections: usize,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub drain_timeout: Duration,
}

impl Limits {
    pub const HTTP2_PING_ACK_TIMEOUT: Duration = Duration::from_secs(20);
    /// Descriptors kept back from the connection cap for listeners, upstreams, files and logs.
    pub const RESERVED_FDS: u64 = 64;

    /// The global connection cap derived from a descriptor limit: (limit - 64) × 0.9, since
    /// every proxied request needs an upstream descriptor as well some of the time.
    pub fn derived_max_connections(nofile: u64) -> usize {
        let usable = nofile.saturating_sub(Self::RESERVED_FDS);
        usize::try_from(usable.saturating_mul(9) / 10)
            .unwrap_or(usize::MAX)
            .max(1)
    }
}

impl Default for Limits {
    /// The documented defaults, with the connection cap derived from a 1,024-descriptor limit
    /// (`portcullis run` derives it from the real limit).
    fn default() -> Self {
        Self {
            tls_handshake_timeout: Some(Duration::from_secs(10)),
            header_read_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            http2_keepalive: Some(Duration::from_secs(60)),
            max_connection_age: None,
            upstream_connect_timeout: Some(Duration::from_secs(5)),
            max_request_headers_size: 60 * 1024,
            max_request_headers: 100,
            http2_max_concurrent_streams: 100,
            max_connections: Self::derived_max_connections(1024),
            max_connections_per_source: 256,
            upstream_max_connections: 1024,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// A duration flag: `10s`, `500ms`, `2m`, `1h`, or `0`/`off` (disabled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(pub Option<Duration>);

impl FromStr for Deadline {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "off" || s == "0" {
            return Ok(Self(None));
        }
        parse_duration(s).map(|d| Self((!d.is_zero()).then_some(d)))
    }
}

/// `10s`, `500ms`, `2m`, `1h`, `1m30s`: the humantime subset operators write.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (write e.g. 10s, 500ms, 2m)");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" | "sec" | "secs" => Duration::from_secs(n),
            "m" | "min" | "mins" => Duration::from_secs(n.saturating_mul(60)),
            "h" | "hr" | "hours" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A byte size flag: `61440`, `60KiB`, `1MiB`, `64k`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let bad = || format!("{s:?} is not a size (write e.g. 61440, 60KiB, 1MiB)");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: usize = t[..split].parse().map_err(|_| bad())?;
    let mult = match t[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(bad)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, so the connection cap (and not EMFILE)
/// is what stops a flood. Returns the soft limit now in force.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise RLIMIT_NOFILE");
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "10", "s", "10 parsecs", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!("off".parse::<Deadline>(), Ok(Deadline(None)));
        assert_eq!("0".parse::<Deadline>(), Ok(Deadline(None)));
        assert_eq!(
            "5s".parse::<Deadline>(),
            Ok(Deadline(Some(Duration::from_secs(5))))
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("61440"), Ok(61440));
        assert_eq!(parse_size("60KiB"), Ok(61440));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        for bad in ["", "KiB", "0", "1GiB", "-5"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connection_cap_leaves_room_for_other_descriptors() {
        assert_eq!(Limits::derived_max_connections(1024), 864);
        assert_eq!(Limits::derived_max_connections(10), 1);
        assert_eq!(LimitReason::ALL.len(), 12);
    }
}
