//! Resources → [`Snapshot`]: cross-checks the resources and builds the model.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::listeners::listeners;
use super::model::{Credentials, Listener, MeshInbound, Routes};
use super::resources::Labels;
use super::routes::routes;
use super::{ConfigErrors, Resources};
use crate::policy::authz::{Authorizer, AuthzScope};
use super::path_normalization::PathNormalization;

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
        }
    }
}

/// One immutable, validated configuration. The proxy holds it behind an `Arc` and a reload
/// swaps in a new one whole.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub settings: Settings,
    pub listeners: Vec<Listener>,
    pub routes: Routes,
    pub credentials: Credentials,
    /// The AuthorizationPolicies that apply to this gateway, compiled once.
    pub authz: Arc<Authorizer>,
    /// The mesh terminator's configuration, when this node runs one.
    pub mesh: Option<MeshInbound>,
    pub resources: Resources,
    /// What loads but will not do what it seems to say; `check` and `explain` print these.
    pub warnings: Vec<super::ConfigWarning>,
}

/// Builds a snapshot, reporting every problem found.
pub fn compile(resources: Resources, settings: Settings) -> Result<Snapshot, ConfigErrors> {
    let mut errors: Vec<super::ConfigError> = Vec::new();
    let mut warnings: Vec<super::ConfigWarning> = Vec::new();
    let mut credentials = Credentials::new();
    let listeners = listeners(
        &resources,
        &settings,
        &mut credentials,
        &mut errors,
        &mut warnings,
    );
    let routes = routes(
        &resources,
        settings.path_normalization,
        &mut errors,
        &mut warnings,
    );
    let scope = AuthzScope {
        root_namespace: settings.root_namespace.clone(),
        workload_namespace: settings.gateway_namespace.clone(),
        workload_labels: settings.gateway_labels.clone(),
    };
    let authz = Authorizer::compile(&resources.authorization_policies, &scope)
        .map_err(|ConfigErrors(mut e)| errors.append(&mut e))
        .ok();
    warnings.extend(crate::policy::lint::never_matching(
        &resources.authorization_policies,
        &scope,
        &listeners,
        settings.path_normalization,
    ));
    let mesh = match &settings.mesh_credential {
        Some(name) => {
            super::mesh::compile_mesh(name, &resources, &settings, &mut errors, &mut warnings)
        }
        None => None,
    };
    match authz {
        Some(authz) if errors.is_empty() => Ok(Snapshot {
            settings,
            listeners,
            routes,
            credentials,
            authz: Arc::new(authz),
            mesh,
            resources,
            warnings,
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_paths;
    use crate::config::model::ServerTls;
    use crate::identity::certs::{issue_demo_set, IssueRequest};

    /// A walkthrough-shaped config with `tls_extra` added to the 443 server's `tls`.
    fn compile_with(tls_extra: &str) -> Result<(Snapshot, Vec<u8>), ConfigErrors> {
        let dir = tempfile::tempdir().expect("tmp");
        issue_demo_set(&IssueRequest {
            out_dir: dir.path().join("certs"),
            ..IssueRequest::default()
        })
        .expect("certs");
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - hosts: [test.com]\n    port: {{number: 443, name: https, protocol: HTTPS}}\n    tls: {{mode: SIMPLE, credentialName: test.com{tls_extra}}}\n"
        );
        let file = dir.path().join("gw.yaml");
        std::fs::write(&file, yaml).expect("write");
        let settings = Settings {
            credential_dirs: vec![dir.path().join("certs")],
            ..Settings::default()
        };
        let ca = std::fs::read(dir.path().join("certs/cacert.pem")).expect("ca");
        compile(load_paths(&[file])?, settings).map(|s| (s, ca))
    }

    /// Whether a client offering only `version` completes a handshake with the server.
    fn accepts(
        snapshot: &Snapshot,
        ca: &[u8],
        version: &'static rustls::SupportedProtocolVersion,
    ) -> bool {
        let Some(ServerTls::Terminate { config, .. }) = &snapshot.listeners[0].servers[0].tls
        else {
            panic!("expected a terminating server");
        };
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls_pemfile::certs(&mut &ca[..]) {
            roots.add(der.expect("pem")).expect("root");
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::provider()))
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("test.com").expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut s = rustls::ServerConnection::new(config.clone()).expect("server");
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).expect("client writes");
            if s.read_tls(&mut &buf[..]).is_err() || s.process_new_packets().is_err() {
                return false;
            }
            buf.clear();
            s.write_tls(&mut buf).expect("server writes");
            if c.read_tls(&mut &buf[..]).is_err() || c.process_new_packets().is_err() {
                return false;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return true;
            }
        }
        false
    }

    fn versions(extra: &str) -> (bool, bool) {
        let (snapshot, ca) = compile_with(extra).expect(extra);
        (
            accepts(&snapshot, &ca, &rustls::version::TLS12),
            accepts(&snapshot, &ca, &rustls::version::TLS13),
        )
    }

    #[test]
    fn protocol_versions_follow_the_gateway() {
        assert_eq!(versions(""), (true, true));
        assert_eq!(versions(", minProtocolVersion: TLSV1_3"), (false, true));
        assert_eq!(versions(", maxProtocolVersion: TLSV1_2"), (true, false));
        assert_eq!(versions(", minProtocolVersion: TLSV1_2"), (true, true));
    }

    #[test]
    fn impossible_or_unknown_versions_are_errors() {
        for (extra, needle) in [
            (", maxProtocolVersion: TLSV1_1", "TLS 1.2 and 1.3 only"),
            (", minProtocolVersion: TLSV9", "unknown TLS version"),
            (
                ", minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2",
                "above maxProtocolVersion",
            ),
        ] {
            let err = compile_with(extra).expect_err(extra);
            assert!(err.to_string().contains(needle), "{extra}: {err}");
            assert_eq!(err.0[0].line, Some(9), "{err}");
        }
    }

    #[test]
    fn unsupported_modes_are_clear_errors() {
        let err = compile_with("").map(|_| ()).and_then(|_| {
            let dir = tempfile::tempdir().expect("tmp");
            let file = dir.path().join("gw.yaml");
            std::fs::write(
                &file,
                "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - hosts: ['*']\n    port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: ISTIO_MUTUAL}\n",
            )
            .expect("write");
            compile(load_paths(&[file])?, Settings::default()).map(|_| ())
        });
        let err = err.expect_err("ISTIO_MUTUAL is rejected");
        assert!(
            err.to_string()
                .contains("tls mode ISTIO_MUTUAL is not supported yet"),
            "{err}"
        );
        assert_eq!(err.0[0].field.as_deref(), Some("spec.servers[0].tls.mode"));
    }
}
