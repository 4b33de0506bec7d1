//! Resources + settings → [`Snapshot`]: cross-checks the resources and builds what the proxy
//! runs on.

use std::sync::Arc;

use super::lint::{never_matching, unreachable_route_matches};
use super::listeners::listeners;
use super::mesh::compile_mesh;
use super::model::{Credentials, Listener, MeshInbound};
use crate::config::model::Routes;
use crate::config::routes::routes;
use crate::config::{ConfigError, ConfigErrors, ConfigWarning, Resources, Settings};
use crate::policy::authz::{Authorizer, AuthzScope};

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
    pub warnings: Vec<ConfigWarning>,
    /// Unique to this snapshot within the process (never reused, unlike an address): what a
    /// connection's client certificate was last verified under (see `proxy::http`).
    pub generation: u64,
}

/// The source of [`Snapshot::generation`].
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Builds a snapshot, reporting every problem found.
pub fn compile(resources: Resources, settings: Settings) -> Result<Snapshot, ConfigErrors> {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut warnings: Vec<ConfigWarning> = Vec::new();
    let mut credentials = Credentials::new();
    let listeners = listeners(
        &resources,
        &settings,
        &mut credentials,
        &mut errors,
        &mut warnings,
    );
    let routes = routes(&resources, &mut errors);
    warnings.extend(unreachable_route_matches(
        &resources,
        settings.path_normalization,
    ));
    let scope = AuthzScope {
        root_namespace: settings.root_namespace.clone(),
        workload_namespace: settings.gateway_namespace.clone(),
        workload_labels: settings.gateway_labels.clone(),
    };
    let authz = Authorizer::compile(&resources.authorization_policies, &scope)
        .map_err(|ConfigErrors(mut e)| errors.append(&mut e))
        .ok();
    warnings.extend(never_matching(
        &resources.authorization_policies,
        &scope,
        &listeners,
        settings.path_normalization,
    ));
    let mesh = match &settings.mesh_credential {
        Some(name) => compile_mesh(name, &resources, &settings, &mut errors, &mut warnings),
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
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_paths;
    use crate::identity::certs::{issue_demo_set, IssueRequest};
    use crate::snapshot::model::ServerTls;

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
