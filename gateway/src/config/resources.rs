//! Raw Istio / Kubernetes resources as they appear in YAML, field for field.
//!
//! Every struct denies unknown fields: a typo in a policy must be an error, never a silently
//! ignored rule. These types carry no meaning yet; the snapshot's `compile` turns them into the
//! validated model the proxy uses.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Labels or a label selector's `matchLabels`.
pub type Labels = BTreeMap<String, String>;

/// Kubernetes object metadata (the fields Portcullis reads; server-populated fields that
/// `kubectl get -o yaml` adds are accepted and ignored).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
    #[serde(default)]
    pub uid: Option<serde_norway::Value>,
    #[serde(default)]
    pub resource_version: Option<serde_norway::Value>,
    #[serde(default)]
    pub generation: Option<serde_norway::Value>,
    #[serde(default)]
    pub creation_timestamp: Option<serde_norway::Value>,
    #[serde(default)]
    pub managed_fields: Option<serde_norway::Value>,
}

/// `selector: {matchLabels: …}` as used by AuthorizationPolicy and PeerAuthentication.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: Labels,
}

// ---------------------------------------------------------------------------------------------
// networking.istio.io: Gateway

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Labels of the gateway workloads this Gateway configures.
    #[serde(default)]
    pub selector: Labels,
    pub servers: Vec<Server>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    pub port: Port,
    #[serde(default)]
    pub bind: Option<String>,
    pub hosts: Vec<String>,
    #[serde(default)]
    pub tls: Option<ServerTlsSettings>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    pub number: u32,
    pub protocol: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// Istio's `ServerTLSSettings`, every field of it: the ones Portcullis does not support are
/// read so that they can be refused by name (see `config::server_tls`), never dropped.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTlsSettings {
    #[serde(default)]
    pub https_redirect: bool,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub server_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub ca_crl: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub credential_names: Vec<String>,
    #[serde(default)]
    pub tls_certificates: Vec<serde_norway::Value>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    #[serde(default)]
    pub min_protocol_version: Option<String>,
    #[serde(default)]
    pub max_protocol_version: Option<String>,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// networking.istio.io: VirtualService

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    /// Istio duration, e.g. `5s`, `250ms`.
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatchRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub gateways: Vec<String>,
}

/// Istio's `StringMatch`: exactly one of the three, written as a one-key map
/// (`uri: {prefix: /api}`). The YAML library reads an externally tagged enum only from a
/// `!prefix` tag, which no Istio user writes, so the map is read as fields and checked here.
#[derive(Clone, Debug, PartialEq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatchFields {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = StringMatchFields::deserialize(d)?;
        match (f.exact, f.prefix, f.regex) {
            (Some(v), None, None) => Ok(StringMatch::Exact(v)),
            (None, Some(v), None) => Ok(StringMatch::Prefix(v)),
            (None, None, Some(v)) => Ok(StringMatch::Regex(v)),
            _ => Err(serde::de::Error::custom(
                "a string match takes exactly one of `exact`, `prefix`, `regex`",
            )),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsRoute {
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    pub sni_hosts: Vec<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub gateways: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L4MatchAttributes {
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub gateways: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// networking.istio.io: ServiceEntry, WorkloadEntry

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Istio spells this selector `labels`, not `matchLabels`.
    #[serde(default)]
    pub workload_selector: Option<EntrySelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// `ServiceEntry.spec.workloadSelector`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntrySelector {
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    pub number: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    pub name: String,
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// A WorkloadEntry's spec, also the shape of a ServiceEntry endpoint.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    #[serde(default)]
    pub address: Option<String>,
    /// Port name → workload port.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub service_account: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// security.istio.io: AuthorizationPolicy

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// ALLOW (default), DENY, AUDIT, CUSTOM.
    #[serde(default)]
    pub action: Option<String>,
    /// Only meaningful with CUSTOM, which Portcullis rejects.
    #[serde(default)]
    pub provider: Option<serde_norway::Value>,
    /// `None`: the field is absent (an ALLOW policy with no rules denies everything);
    /// `Some(vec![Rule::default()])`: `rules: [{}]` (matches everything).
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    #[serde(default)]
    pub to: Vec<RuleTo>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFrom {
    pub source: Source,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleTo {
    pub operation: Operation,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// security.istio.io: PeerAuthentication

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Workload port → mode. Istio requires a selector for port-level settings.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MutualTls {
    /// UNSET, DISABLE, PERMISSIVE, STRICT.
    #[serde(default)]
    pub mode: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// v1 Secret

/// A Kubernetes `Secret`: `data` (base64) and `stringData` (plain) with keys such as
/// `tls.key`, `tls.crt`, `ca.crt`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretBody {
    #[serde(default, rename = "type")]
    pub secret_type: Option<String>,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
    #[serde(default)]
    pub immutable: Option<bool>,
}
