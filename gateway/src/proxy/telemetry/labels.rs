//! The closed sets of label values shared by the metrics and the access log, spelled as Istio
//! and Envoy spell them.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// `reporter`: which side of the connection reports a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The client side: the mesh originator, about the destination it verified.
    Source,
    /// The server side: the ingress gateway and the mesh terminator.
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// `connection_security_policy`: whether the client proved an identity with mutual TLS.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// A verified client certificate (or, on the originator, a verified server).
    MutualTls,
    /// Plain HTTP, or TLS without a client certificate.
    None,
}

impl SecurityPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::None => "none",
        }
    }
}

/// Envoy's response flags that the gateway can produce (`response_flags` in the metrics and
/// the access log). The codes are Envoy's, so dashboards and log queries written for Envoy
/// read ours.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum ResponseFlags {
    /// Nothing went wrong in the proxy (`-`).
    #[default]
    None,
    /// No route for the request (`NR`).
    NoRouteFound,
    /// The upstream could not be connected to (`UF`).
    UpstreamConnectionFailure,
    /// The upstream reset the connection before responding (`UC`).
    UpstreamConnectionTermination,
    /// The upstream did not answer within the route timeout (`UT`).
    UpstreamRequestTimeout,
    /// The upstream's connection cap was full: Envoy's circuit breaker (`UO`).
    UpstreamOverflow,
    /// The request was malformed or ambiguous and refused before routing (`DPE`).
    DownstreamProtocolError,
    /// The client went away (stream reset, connection closed) before the answer (`DC`).
    DownstreamConnectionTermination,
}

impl ResponseFlags {
    /// Envoy's short code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::NoRouteFound => "NR",
            Self::UpstreamConnectionFailure => "UF",
            Self::UpstreamConnectionTermination => "UC",
            Self::UpstreamRequestTimeout => "UT",
            Self::UpstreamOverflow => "UO",
            Self::DownstreamProtocolError => "DPE",
            Self::DownstreamConnectionTermination => "DC",
        }
    }
}

/// Display, Prometheus label and JSON all write [`as_str`](Reporter::as_str): one spelling.
macro_rules! label_text {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                fmt::Write::write_str(encoder, self.as_str())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    )*};
}

label_text!(Reporter, SecurityPolicy, ResponseFlags);

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition and the access log must keep Envoy's and Istio's exact spellings.
    #[test]
    fn values_are_spelled_as_istio_and_envoy_do() {
        use ResponseFlags as F;
        let flags = [
            (F::None, "-"),
            (F::NoRouteFound, "NR"),
            (F::UpstreamConnectionFailure, "UF"),
            (F::UpstreamConnectionTermination, "UC"),
            (F::UpstreamRequestTimeout, "UT"),
            (F::UpstreamOverflow, "UO"),
            (F::DownstreamProtocolError, "DPE"),
            (F::DownstreamConnectionTermination, "DC"),
        ];
        for (flag, code) in flags {
            assert_eq!(flag.to_string(), code);
            assert_eq!(serde_json::to_string(&flag).unwrap(), format!("\"{code}\""));
        }
        assert_eq!(Reporter::Source.to_string(), "source");
        assert_eq!(Reporter::Destination.to_string(), "destination");
        assert_eq!(SecurityPolicy::MutualTls.to_string(), "mutual_tls");
        assert_eq!(SecurityPolicy::None.to_string(), "none");
    }
}
