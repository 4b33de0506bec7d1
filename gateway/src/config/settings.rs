//! Settings that come from the command line rather than from YAML: which gateway this is,
//! where its credentials live, and how request paths are normalized.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::path_normalization::PathNormalization;
use super::resources::Labels;

/// Settings that come from the command line, not from YAML.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Istio's root namespace: policies there apply mesh-wide.
    pub root_namespace: String,
    /// This gateway's labels, matched by `Gateway.spec.selector` and policy selectors.
    pub gateway_labels: Labels,
    /// The namespace this gateway runs in (for namespaced policies).
    pub gateway_namespace: String,
    /// Directories holding `<credentialName>/{tls.crt,tls.key,ca.crt}`.
    pub credential_dirs: Vec<PathBuf>,
    /// The credential of this node's workload: set, it turns on the mesh side.
    pub mesh_credential: Option<String>,
    /// Which WorkloadEntry is this node's own (`name` or `namespace/name`); the others are
    /// mesh destinations. Needed only when the configuration has several.
    pub local_workload: Option<String>,
    /// The SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// How request paths are normalized before routing and authorization (`run`, `check` and
    /// `explain` all take it from here, so they agree).
    pub path_normalization: PathNormalization,
    /// Other trust domains whose workloads the mesh side accepts (Istio's
    /// `meshConfig.trustDomainAliases`); peers from any other trust domain are refused.
    pub trust_domain_aliases: Vec<String>,
    /// This node's inbound ports left outside the mesh whatever PeerAuthentication says
    /// (Istio's `traffic.sidecar.istio.io/excludeInboundPorts`): neither steered to the
    /// terminator nor judged by the kernel, e.g. a VM's SSH.
    pub exclude_inbound_ports: Vec<u16>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".to_owned(),
            gateway_labels: BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())]),
            gateway_namespace: "istio-system".to_owned(),
            credential_dirs: Vec::new(),
            mesh_credential: None,
            local_workload: None,
            trust_domain: "cluster.local".to_owned(),
            path_normalization: PathNormalization::default(),
            trust_domain_aliases: Vec::new(),
            exclude_inbound_ports: Vec::new(),
        }
    }
}
