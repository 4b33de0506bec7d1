//! The mesh part of a snapshot: this node's workload (its credential, policies and port
//! modes) and the mesh destinations its clients call (with the identities secure naming
//! expects of them).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::credentials::load_credential;
use super::model::{MeshDestination, MeshInbound, DEFAULT_PORT};
use crate::config::resources::WorkloadEntrySpec;
use crate::config::{ConfigError, ConfigErrors, ConfigWarning, Doc, Resources, Settings};
use crate::identity::Identity;
use crate::policy::authz::{Authorizer, AuthzScope};
use crate::policy::peer_auth::{default_mode, port_modes, PeerAuthMode};
use crate::tls::{server_config_with, ClientCertChecks, ServerOptions, ServerTlsMode, TlsVersions};

/// Builds the mesh section for the credential `name` (the `--mesh-credential` flag).
pub fn compile_mesh(
    name: &str,
    resources: &Resources,
    settings: &Settings,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigWarning>,
) -> Option<MeshInbound> {
    let flag_error = |msg: String| ConfigError::file("--mesh-credential", msg);
    let cred = match load_credential(&flag_error, name, settings, resources, warnings) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    if cred.roots.is_none() {
        errors.push(flag_error(format!(
            "credential {name:?} has no ca.crt: mesh peers cannot be verified"
        )));
        return None;
    }
    let local = match local_workload(resources, settings) {
        Ok(w) => w,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    // Istio's sidecars accept peers of the mesh's trust domain and its aliases only, even
    // when another domain's certificates chain to the same CA.
    let trust_domains = std::iter::once(settings.trust_domain.clone())
        .chain(settings.trust_domain_aliases.iter().cloned())
        .collect();
    let options = ServerOptions {
        mode: ServerTlsMode::Mutual,
        versions: TlsVersions::default(),
        cipher_suites: Vec::new(),
        client_checks: ClientCertChecks {
            trust_domains,
            ..ClientCertChecks::default()
        },
        alpn: &[b"h2", b"http/1.1"],
    };
    let client_checks = options.client_checks.clone();
    let tls = match server_config_with(&cred, &options) {
        Ok(t) => t,
        Err(e) => {
            errors.push(flag_error(format!("credential {name:?}: {e}")));
            return None;
        }
    };
    let scope = AuthzScope {
        root_namespace: settings.root_namespace.clone(),
        workload_namespace: local.namespace().to_owned(),
        workload_labels: local.spec.labels.clone(),
    };
    let authz = Authorizer::compile(&resources.authorization_policies, &scope)
        .map_err(|ConfigErrors(mut e)| errors.append(&mut e))
        .ok()?;
    let modes = workload_port_modes(resources, settings)
        .map_err(|mut e| errors.append(&mut e))
        .ok()?;
    let destinations = destinations(resources, local, settings, errors);
    Some(MeshInbound {
        client_checks,
        credential_name: name.to_owned(),
        credential: cred,
        tls,
        authz: Arc::new(authz),
        modes,
        workload: format!("{}/{}", local.namespace(), local.metadata.name),
        workload_name: local.metadata.name.clone(),
        workload_namespace: local.namespace().to_owned(),
        destinations,
    })
}

/// The PeerAuthentication mode of every port of this node's workload: what the kernel maps
/// hold. `portcullis run --mesh-credential` and `portcullis kernel run` both use this, so the
/// same YAML gives the same maps. The workload-wide default (STRICT on every port not
/// named) is the entry at [`DEFAULT_PORT`].
pub fn workload_port_modes(
    resources: &Resources,
    settings: &Settings,
) -> Result<BTreeMap<u16, PeerAuthMode>, Vec<ConfigError>> {
    // Port modes are this node's business only: the other WorkloadEntries are destinations.
    // Without any WorkloadEntry (`kernel run --config` of policies only) the whole config.
    let own = if resources.workload_entries.is_empty() {
        resources.clone()
    } else {
        let local = local_workload(resources, settings).map_err(|e| vec![e])?;
        Resources {
            workload_entries: vec![local.clone()],
            ..resources.clone()
        }
    };
    let root = &settings.root_namespace;
    let mut modes = port_modes(&own, root)?;
    let default = default_mode(&own, root)?;
    modes.extend(default.map(|mode| (DEFAULT_PORT, mode)));
    // Last, so an exclusion wins over a port-level mode and over the default alike.
    for &port in &settings.exclude_inbound_ports {
        modes.insert(port, PeerAuthMode::Disable);
    }
    Ok(modes)
}

/// This node's WorkloadEntry: the one `--workload` names, or the only one.
fn local_workload<'a>(
    resources: &'a Resources,
    settings: &Settings,
) -> Result<&'a Doc<WorkloadEntrySpec>, ConfigError> {
    let flag = |msg: String| ConfigError::file("--workload", msg);
    let entries = &resources.workload_entries;
    match (&settings.local_workload, entries.as_slice()) {
        (_, []) => Err(flag(
            "the mesh side needs a WorkloadEntry describing this node's workload (address, ports, labels)".to_owned(),
        )),
        (None, [only]) => Ok(only),
        (None, _) => Err(flag(format!(
            "{} WorkloadEntries in the configuration: name this node's own with --workload NAME",
            entries.len()
        ))),
        (Some(want), _) => entries
            .iter()
            .find(|w| {
                *want == w.metadata.name || *want == format!("{}/{}", w.namespace(), w.metadata.name)
            })
            .ok_or_else(|| flag(format!("no WorkloadEntry named {want:?}"))),
    }
}

/// Every other WorkloadEntry's address and ports, with the identity it must present.
fn destinations(
    resources: &Resources,
    local: &Doc<WorkloadEntrySpec>,
    settings: &Settings,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<SocketAddr, MeshDestination> {
    let mut out = BTreeMap::new();
    for we in resources
        .workload_entries
        .iter()
        .filter(|w| !std::ptr::eq(*w, local))
    {
        let Some(address) = &we.spec.address else {
            continue;
        };
        let Ok(ip) = address.parse::<IpAddr>() else {
            errors.push(we.error(
                "spec.address",
                address,
                format!(
                    "{address:?} is not an IP address (mesh destinations are dialed by address)"
                ),
            ));
            continue;
        };
        let sa = we.spec.service_account.as_deref().unwrap_or("default");
        let uri = format!(
            "spiffe://{}/ns/{}/sa/{sa}",
            settings.trust_domain,
            we.namespace()
        );
        let identity = match Identity::parse(&uri) {
            Ok(identity) => identity,
            Err(why) => {
                errors.push(we.error(
                    "spec.serviceAccount",
                    sa,
                    format!("{uri:?} is not a valid SPIFFE id: {why}"),
                ));
                continue;
            }
        };
        // The service that selects this workload names it in metrics; else the workload.
        let service = resources
            .service_entries
            .iter()
            .find(|se| {
                se.namespace() == we.namespace()
                    && se.spec.workload_selector.as_ref().is_some_and(|sel| {
                        !sel.labels.is_empty()
                            && sel
                                .labels
                                .iter()
                                .all(|(k, v)| we.spec.labels.get(k) == Some(v))
                    })
            })
            .and_then(|se| se.spec.hosts.first().cloned())
            .unwrap_or_else(|| we.metadata.name.clone());
        for &port in we.spec.ports.values() {
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            out.insert(
                SocketAddr::new(ip, port),
                MeshDestination {
                    workload: we.metadata.name.clone(),
                    namespace: we.namespace().to_owned(),
                    service: service.clone(),
                    identities: vec![identity.clone()],
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_paths;
    use crate::identity::certs::{issue_demo_set, IssueRequest};
    use crate::snapshot::compile;

    const TWO_WORKLOADS: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: sleep, namespace: default}\nspec: {address: 10.0.0.2, labels: {app: sleep}, serviceAccount: sleep, ports: {http: 8080}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: hello, namespace: shop}\nspec: {address: 10.0.0.1, labels: {app: hello}, serviceAccount: hello, ports: {http: 80}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: hello, namespace: shop}\nspec: {hosts: [hello.shop.svc.cluster.local], ports: [{number: 80, name: http}], workloadSelector: {labels: {app: hello}}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";

    fn compile_mesh_for(workload: Option<&str>) -> Result<MeshInbound, ConfigErrors> {
        let dir = tempfile::tempdir().expect("tmp");
        issue_demo_set(&IssueRequest {
            out_dir: dir.path().join("certs"),
            server_hosts: vec!["sleep".into()],
            ..IssueRequest::default()
        })
        .expect("certs");
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, TWO_WORKLOADS).expect("write");
        let settings = Settings {
            credential_dirs: vec![dir.path().join("certs")],
            mesh_credential: Some("sleep".into()),
            local_workload: workload.map(str::to_owned),
            ..Settings::default()
        };
        compile(load_paths(&[file])?, settings).map(|s| s.mesh.expect("mesh section"))
    }

    #[test]
    fn excluded_inbound_ports_are_left_out_whatever_the_policy_says() {
        // The configuration makes every port of the workload STRICT, 8080 among them.
        let resources = crate::config::load_str(std::path::Path::new("mesh.yaml"), TWO_WORKLOADS)
            .expect("loads");
        let settings = Settings {
            local_workload: Some("sleep".into()),
            exclude_inbound_ports: vec![22, 8080],
            ..Settings::default()
        };
        let modes = workload_port_modes(&resources, &settings).expect("modes");
        assert_eq!(modes[&22], PeerAuthMode::Disable);
        assert_eq!(modes[&8080], PeerAuthMode::Disable);
        assert_eq!(modes[&DEFAULT_PORT], PeerAuthMode::Strict);
        let none = Settings {
            local_workload: Some("sleep".into()),
            ..Settings::default()
        };
        let modes = workload_port_modes(&resources, &none).expect("modes");
        assert!(!modes.contains_key(&22), "nothing excluded unless asked");
    }

    #[test]
    fn the_named_workload_is_local_and_the_others_are_destinations() {
        let mesh = compile_mesh_for(Some("sleep")).expect("compiles");
        assert_eq!(mesh.workload, "default/sleep");
        assert_eq!(
            mesh.modes.keys().copied().collect::<Vec<_>>(),
            vec![DEFAULT_PORT, 8080],
            "only this node's ports get modes, plus the workload-wide one"
        );
        let dest = &mesh.destinations[&"10.0.0.1:80".parse().expect("addr")];
        assert_eq!(dest.service, "hello.shop.svc.cluster.local");
        assert_eq!(
            dest.identities[0].uri(),
            "spiffe://cluster.local/ns/shop/sa/hello"
        );
        assert_eq!(mesh.destinations.len(), 1);
        assert!(
            compile_mesh_for(Some("shop/hello")).is_ok(),
            "namespace/name works too"
        );
    }

    #[test]
    fn several_workloads_need_the_local_one_named() {
        let err = compile_mesh_for(None).expect_err("ambiguous");
        assert!(
            err.to_string()
                .contains("name this node's own with --workload"),
            "{err}"
        );
        let err = compile_mesh_for(Some("nope")).expect_err("unknown");
        assert!(
            err.to_string().contains("no WorkloadEntry named \"nope\""),
            "{err}"
        );
    }

    #[test]
    fn mesh_peers_from_another_trust_domain_are_refused_unless_aliased() {
        use crate::tls::testing::{handshake, leaf, test_ca};
        let ca = test_ca("Mesh CA");
        let dir = tempfile::tempdir().expect("tmp");
        let own = leaf(
            &ca,
            &["test.com"],
            &["spiffe://cluster.local/ns/default/sa/sleep"],
            1,
        );
        let cred = dir.path().join("certs/sleep");
        std::fs::create_dir_all(&cred).expect("mkdir");
        std::fs::write(cred.join("tls.crt"), &own.cert_pem).expect("write");
        std::fs::write(cred.join("tls.key"), &own.key_pem).expect("write");
        std::fs::write(cred.join("ca.crt"), ca.cert.pem()).expect("write");
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, TWO_WORKLOADS).expect("write");
        let mesh = |aliases: &[&str]| {
            let settings = Settings {
                credential_dirs: vec![dir.path().join("certs")],
                mesh_credential: Some("sleep".into()),
                local_workload: Some("sleep".into()),
                trust_domain_aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
                ..Settings::default()
            };
            compile(
                load_paths(std::slice::from_ref(&file)).expect("load"),
                settings,
            )
            .expect("compiles")
            .mesh
            .expect("mesh section")
        };
        let peer = leaf(
            &ca,
            &["test.com"],
            &["spiffe://cluster.local/ns/shop/sa/hello"],
            2,
        );
        let foreign = leaf(
            &ca,
            &["test.com"],
            &["spiffe://partner.example/ns/shop/sa/hello"],
            3,
        );
        let plain = mesh(&[]);
        assert_eq!(
            handshake(plain.tls.clone(), &ca, Some(&peer), false),
            Ok(())
        );
        let err = handshake(plain.tls, &ca, Some(&foreign), false).expect_err("foreign domain");
        assert!(err.contains("ForeignTrustDomain"), "{err}");
        let aliased = mesh(&["partner.example"]);
        assert_eq!(handshake(aliased.tls, &ca, Some(&foreign), false), Ok(()));
    }
}
