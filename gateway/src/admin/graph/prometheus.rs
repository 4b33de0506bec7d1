//! The graph from a Prometheus that scrapes every node (`portcullis run --prometheus URL`):
//! one instant query over the HTTP API, the rates Kiali draws its edges from.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::{Security, Series, WorkloadRef, UNKNOWN};

/// The rate window of the query (Kiali's default).
pub const WINDOW: &str = "1m";

/// How long the page waits for Prometheus.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Enough for thousands of series; a bigger answer is refused rather than buffered.
const MAX_BODY: usize = 8 << 20;

/// The query: request rates by reporter, edge, security and code.
pub fn promql() -> String {
    format!(
        "sum by (reporter,source_workload,source_workload_namespace,destination_workload,\
         destination_workload_namespace,destination_service_name,connection_security_policy,\
         response_code) (rate(istio_requests_total[{WINDOW}]))"
    )
}

/// A Prometheus base URL (`http://host:port`, optionally with a path prefix), checked once
/// when the command line is parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusUrl(Uri);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("{0:?} is not a URL: {1}")]
    Invalid(String, String),
    #[error("{0:?}: only http:// is supported (Prometheus' API on a trusted network)")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?}: give the base URL, without a query")]
    Query(String),
}

impl FromStr for PrometheusUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let uri: Uri = s
            .parse()
            .map_err(|e: http::uri::InvalidUri| UrlError::Invalid(s.to_owned(), e.to_string()))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(UrlError::Scheme(s.to_owned()));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(UrlError::NoHost(s.to_owned()));
        }
        if uri.query().is_some() {
            return Err(UrlError::Query(s.to_owned()));
        }
        Ok(Self(uri))
    }
}

impl fmt::Display for PrometheusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl PrometheusUrl {
    /// `<base>/api/v1/query?query=<promql>`.
    fn query_uri(&self, promql: &str) -> Result<Uri, http::Error> {
        let prefix = self.0.path().trim_end_matches('/');
        let path: PathAndQuery =
            format!("{prefix}/api/v1/query?query={}", encode(promql)).parse()?;
        let mut parts = self.0.clone().into_parts();
        parts.path_and_query = Some(path);
        Ok(Uri::from_parts(parts)?)
    }
}

/// Why the graph could not be read from Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("building the query URL: {0}")]
    Url(#[from] http::Error),
    #[error("cannot reach Prometheus at {url}: {source}")]
    Unreachable {
        url: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("Prometheus at {url} did not answer within {TIMEOUT:?}")]
    Timeout { url: String },
    #[error("reading Prometheus' answer from {url}: {reason}")]
    Body { url: String, reason: String },
    #[error("Prometheus at {url} answered HTTP {status} without the API's JSON: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("Prometheus' answer is not the query API's JSON: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("Prometheus refused the query ({error_type}): {error}")]
    Refused { error_type: String, error: String },
    #[error("Prometheus returned a {0} (want a vector)")]
    ResultType(String),
}

/// A client for one Prometheus.
pub struct Prometheus {
    url: PrometheusUrl,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Prometheus {
    pub fn new(url: PrometheusUrl) -> Self {
        Self {
            url,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn url(&self) -> &PrometheusUrl {
        &self.url
    }

    /// Runs [`promql`] and returns its samples as graph series (values per second).
    pub async fn request_series(&self) -> Result<Vec<Series>, QueryError> {
        let uri = self.url.query_uri(&promql())?;
        let url = self.url.to_string();
        let req = Request::get(uri).body(Empty::new())?;
        let answer = async {
            let resp =
                self.client
                    .request(req)
                    .await
                    .map_err(|source| QueryError::Unreachable {
                        url: url.clone(),
                        source,
                    })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| QueryError::Body {
                    url: url.clone(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok::<_, QueryError>((status, body))
        };
        let (status, body) = tokio::time::timeout(TIMEOUT, answer)
            .await
            .map_err(|_| QueryError::Timeout { url: url.clone() })??;
        // Prometheus explains a refused query in the API's JSON, with a 4xx status.
        decode(&body).map_err(|e| match e {
            QueryError::Decode(_) if !status.is_success() => QueryError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            },
            e => e,
        })
    }
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    data: Option<ApiData>,
    #[serde(rename = "errorType", default)]
    error_type: String,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<ApiSample>,
}

#[derive(Deserialize)]
struct ApiSample {
    metric: HashMap<String, String>,
    /// `[unix time, "value"]`.
    value: (f64, String),
}

/// The series of a `/api/v1/query` answer.
fn decode(body: &[u8]) -> Result<Vec<Series>, QueryError> {
    let resp: ApiResponse = serde_json::from_slice(body)?;
    let data = match (resp.status.as_str(), resp.data) {
        ("success", Some(data)) => data,
        _ => {
            return Err(QueryError::Refused {
                error_type: resp.error_type,
                error: resp.error,
            })
        }
    };
    if data.result_type != "vector" {
        return Err(QueryError::ResultType(data.result_type));
    }
    Ok(data
        .result
        .into_iter()
        .filter_map(|sample| {
            // "NaN" and "+Inf" parse; a rate that is not finite draws nothing.
            let value: f64 = sample
                .value
                .1
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())?;
            let label = |name: &str| {
                sample
                    .metric
                    .get(name)
                    .filter(|v| !v.is_empty())
                    .map_or(UNKNOWN, String::as_str)
                    .to_owned()
            };
            Some(Series {
                reporter: label("reporter"),
                source: WorkloadRef {
                    name: label("source_workload"),
                    namespace: label("source_workload_namespace"),
                },
                destination: WorkloadRef {
                    name: label("destination_workload"),
                    namespace: label("destination_workload_namespace"),
                },
                service: label("destination_service_name"),
                security: Security::from_label(&label("connection_security_policy")),
                response_code: label("response_code").parse().unwrap_or(0),
                value,
            })
        })
        .collect())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_once() {
        let url: PrometheusUrl = "http://127.0.0.1:9090".parse().unwrap();
        let q = url.query_uri("sum(x{a=\"b\"})").unwrap();
        assert_eq!(
            q.to_string(),
            "http://127.0.0.1:9090/api/v1/query?query=sum%28x%7Ba%3D%22b%22%7D%29"
        );
        let prefixed: PrometheusUrl = "http://prom.local/prometheus/".parse().unwrap();
        assert_eq!(
            prefixed.query_uri("up").unwrap().to_string(),
            "http://prom.local/prometheus/api/v1/query?query=up"
        );
        assert!(matches!(
            "https://prom:9090".parse::<PrometheusUrl>(),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            "prom:9090".parse::<PrometheusUrl>(),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            "http://prom:9090/?x=1".parse::<PrometheusUrl>(),
            Err(UrlError::Query(_))
        ));
        assert!(matches!(
            "http://exa mple".parse::<PrometheusUrl>(),
            Err(UrlError::Invalid(..))
        ));
    }

    #[test]
    fn decodes_a_vector_answer() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"reporter":"destination","source_workload":"unknown","source_workload_namespace":"unknown","destination_workload":"portcullis","destination_workload_namespace":"istio-system","destination_service_name":"httpbin","connection_security_policy":"mutual_tls","response_code":"403"},"value":[1764120000.5,"0.25"]},
            {"metric":{"reporter":"source","source_workload":"sleep","response_code":"200"},"value":[1764120000.5,"NaN"]},
            {"metric":{"reporter":"source","source_workload":"sleep","destination_workload":""},"value":[1764120000.5,"1"]}
        ]}}"#;
        let s = decode(body).unwrap();
        assert_eq!(s.len(), 2, "NaN rates are dropped: {s:?}");
        assert_eq!(
            (s[0].security, s[0].response_code, s[0].value),
            (Security::MutualTls, 403, 0.25)
        );
        assert_eq!(s[0].destination.name, "portcullis");
        assert_eq!(
            (
                s[1].security,
                s[1].response_code,
                s[1].destination.name.as_str()
            ),
            (Security::Unknown, 0, UNKNOWN),
            "absent and empty labels are unknown"
        );
    }

    #[test]
    fn refusals_and_garbage_say_what_went_wrong() {
        let refused =
            br#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#;
        let e = decode(refused).unwrap_err().to_string();
        assert_eq!(
            e,
            "Prometheus refused the query (bad_data): parse error at char 4"
        );
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(matches!(decode(matrix), Err(QueryError::ResultType(t)) if t == "matrix"));
        assert!(matches!(decode(b"<html>"), Err(QueryError::Decode(_))));
    }

    #[tokio::test]
    async fn an_absent_prometheus_is_an_error_naming_it() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = Prometheus::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let e = p.request_series().await.unwrap_err();
        assert!(matches!(e, QueryError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    }
}
