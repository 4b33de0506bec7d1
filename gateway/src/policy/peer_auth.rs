//! PeerAuthentication → the mTLS mode of each workload port.
//!
//! Istio's rules, as implemented here:
//! - a policy in the root namespace (default `istio-system`) without a selector is mesh-wide;
//!   one in another namespace without a selector covers that namespace; one with
//!   `selector.matchLabels` covers the matching workloads of its namespace;
//! - the most specific wins: `portLevelMtls` of the workload policy, then the workload
//!   policy's `mtls`, then the namespace policy, then the mesh policy;
//! - `UNSET` (or no `mtls` at all) inherits from the next level up; with nothing set anywhere
//!   the mode is PERMISSIVE, Istio's default;
//! - `portLevelMtls` needs a selector (Istio's validation rejects it otherwise);
//! - when two policies sit at the same level Istio takes the oldest; YAML files carry no
//!   creation time, so the first by name wins, and that is deterministic.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::resources::{
    Labels, MutualTls, PeerAuthenticationSpec, ServiceEntrySpec, WorkloadEntrySpec,
};
use crate::config::{ConfigError, Doc};

/// Istio's default root namespace.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The mTLS mode a workload port accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PeerAuthMode {
    /// Plaintext only; the mesh leaves the port alone.
    Disable,
    /// Plaintext and mTLS.
    Permissive,
    /// mTLS only: plaintext is reset in the kernel.
    Strict,
}

impl PeerAuthMode {
    /// Parses Istio's spelling; `Ok(None)` is UNSET (inherit).
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        match text {
            "UNSET" => Ok(None),
            "DISABLE" => Ok(Some(Self::Disable)),
            "PERMISSIVE" => Ok(Some(Self::Permissive)),
            "STRICT" => Ok(Some(Self::Strict)),
            other => Err(format!(
                "`{other}` is not a PeerAuthentication mode (UNSET, DISABLE, PERMISSIVE, STRICT)"
            )),
        }
    }
}

impl std::fmt::Display for PeerAuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disable => "DISABLE",
            Self::Permissive => "PERMISSIVE",
            Self::Strict => "STRICT",
        })
    }
}

/// One PeerAuthentication, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Policy {
    name: String,
    namespace: String,
    selector: Option<Labels>,
    mode: Option<PeerAuthMode>,
    ports: BTreeMap<u16, Option<PeerAuthMode>>,
}

/// Every PeerAuthentication of a snapshot, ready to answer "which mode for this port".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerAuthentications {
    root_namespace: String,
    policies: Vec<Policy>,
}

/// A workload as PeerAuthentication sees it: its namespace and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Namespace of the workload.
    pub namespace: String,
    /// Its labels, matched against `selector.matchLabels`.
    pub labels: Labels,
}

/// One port a local workload listens on, with the mode PeerAuthentication gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortMode {
    /// `namespace/name` of the WorkloadEntry.
    pub workload: String,
    /// The port the workload listens on (the packet's destination port).
    pub port: u16,
    /// The effective mode.
    pub mode: PeerAuthMode,
}

fn parse_mode(
    doc: &Doc<PeerAuthenticationSpec>,
    field: &str,
    mtls: &MutualTls,
) -> Result<Option<PeerAuthMode>, Box<ConfigError>> {
    match mtls.mode.as_deref() {
        None => Ok(None),
        Some(text) => {
            PeerAuthMode::parse(text).map_err(|msg| Box::new(doc.error(field, text, msg)))
        }
    }
}

impl PeerAuthentications {
    /// Parses and validates the PeerAuthentication documents. `root_namespace` is the mesh
    /// root (Istio's `rootNamespace`, [`DEFAULT_ROOT_NAMESPACE`] unless configured).
    pub fn compile(
        docs: &[Doc<PeerAuthenticationSpec>],
        root_namespace: &str,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut policies = Vec::new();
        let mut errors = Vec::new();
        for doc in docs {
            match Self::policy(doc) {
                Ok(p) => policies.push(p),
                Err(e) => errors.push(*e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(Self {
            root_namespace: root_namespace.to_owned(),
            policies,
        })
    }

    fn policy(doc: &Doc<PeerAuthenticationSpec>) -> Result<Policy, Box<ConfigError>> {
        let mode = match &doc.spec.mtls {
            Some(mtls) => parse_mode(doc, "spec.mtls.mode", mtls)?,
            None => None,
        };
        // An empty matchLabels selects every workload of the namespace, as in Istio.
        let selector = doc
            .spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .filter(|labels| !labels.is_empty());
        let mut ports = BTreeMap::new();
        for (port, mtls) in &doc.spec.port_level_mtls {
            let field = format!("spec.portLevelMtls.{port}");
            if selector.is_none() {
                return Err(Box::new(doc.error(
                    &field,
                    "portLevelMtls",
                    "portLevelMtls needs a workload selector (Istio rejects it on mesh- and namespace-wide policies)",
                )));
            }
            let port16 = u16::try_from(*port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    doc.error(
                        &field,
                        &port.to_string(),
                        format!("{port} is not a TCP port"),
                    )
                })?;
            ports.insert(port16, parse_mode(doc, &format!("{field}.mode"), mtls)?);
        }
        Ok(Policy {
            name: doc.metadata.name.clone(),
            namespace: doc.namespace().to_owned(),
            selector,
            mode,
            ports,
        })
    }

    /// The effective mode of `port` on `workload`.
    pub fn mode_for(&self, workload: &Workload, port: u16) -> PeerAuthMode {
        self.mode_of(workload, Some(port))
    }

    /// The mode of every port of `workload` that no `portLevelMtls` names: Istio's STRICT
    /// covers every inbound port of the workload, not only the ports a ServiceEntry names.
    pub fn workload_mode(&self, workload: &Workload) -> PeerAuthMode {
        self.mode_of(workload, None)
    }

    /// The ports the `portLevelMtls` of `workload`'s own policy names: exceptions to the
    /// workload mode even when no ServiceEntry names them.
    pub fn port_level_ports(&self, workload: &Workload) -> Vec<u16> {
        self.workload_policy(workload)
            .map(|p| p.ports.keys().copied().collect())
            .unwrap_or_default()
    }

    fn workload_policy(&self, workload: &Workload) -> Option<&Policy> {
        self.policies.iter().find(|p| {
            p.namespace == workload.namespace
                && p.selector
                    .as_ref()
                    .is_some_and(|sel| selects(sel, &workload.labels))
        })
    }

    fn mode_of(&self, workload: &Workload, port: Option<u16>) -> PeerAuthMode {
        let workload_policy = self.workload_policy(workload);
        let namespace_policy = self
            .policies
            .iter()
            .find(|p| p.namespace == workload.namespace && p.selector.is_none());
        let mesh_policy = self
            .policies
            .iter()
            .find(|p| p.namespace == self.root_namespace && p.selector.is_none());

        workload_policy
            .and_then(|p| p.ports.get(&port?).copied().flatten())
            .or_else(|| workload_policy.and_then(|p| p.mode))
            .or_else(|| namespace_policy.and_then(|p| p.mode))
            .or_else(|| mesh_policy.and_then(|p| p.mode))
            .unwrap_or(PeerAuthMode::Permissive)
    }
}

fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The ports of every WorkloadEntry (the local workloads) with their effective modes.
///
/// A WorkloadEntry's ports come from the ServiceEntries of its namespace that select it
/// (`workloadSelector`), each resolved as Istio does — the entry's own `ports[name]`, else
/// the service port's `targetPort`, else its `number` — plus any port the entry names itself.
pub fn workload_port_modes(
    peer_auth: &PeerAuthentications,
    workload_entries: &[Doc<WorkloadEntrySpec>],
    service_entries: &[Doc<ServiceEntrySpec>],
) -> Vec<PortMode> {
    let mut out = Vec::new();
    for we in workload_entries {
        let mut labels = we.metadata.labels.clone();
        labels.extend(we.spec.labels.clone());
        let workload = Workload {
            namespace: we.namespace().to_owned(),
            labels,
        };
        let mut ports: Vec<u16> = Vec::new();
        for se in service_entries.iter().filter(|se| {
            se.namespace() == workload.namespace
                && se
                    .spec
                    .workload_selector
                    .as_ref()
                    .is_some_and(|sel| selects(&sel.labels, &workload.labels))
        }) {
            for sp in &se.spec.ports {
                let port = we
                    .spec
                    .ports
                    .get(&sp.name)
                    .copied()
                    .or(sp.target_port)
                    .unwrap_or(sp.number);
                ports.extend(u16::try_from(port).ok().filter(|p| *p != 0));
            }
        }
        ports.extend(
            we.spec
                .ports
                .values()
                .filter_map(|p| u16::try_from(*p).ok().filter(|p| *p != 0)),
        );
        ports.extend(peer_auth.port_level_ports(&workload));
        ports.sort_unstable();
        ports.dedup();
        let name = format!("{}/{}", workload.namespace, we.metadata.name);
        for port in ports {
            out.push(PortMode {
                workload: name.clone(),
                port,
                mode: peer_auth.mode_for(&workload, port),
            });
        }
    }
    out
}

/// The mode of the ports no `portLevelMtls` names, over every WorkloadEntry of a loaded config
/// (the stricter wins, as in [`port_modes`]); `None` without any WorkloadEntry.
pub fn default_mode(
    resources: &crate::config::Resources,
    root_namespace: &str,
) -> Result<Option<PeerAuthMode>, Vec<ConfigError>> {
    let peer_auth = PeerAuthentications::compile(&resources.peer_authentications, root_namespace)?;
    Ok(resources
        .workload_entries
        .iter()
        .map(|we| {
            let mut labels = we.metadata.labels.clone();
            labels.extend(we.spec.labels.clone());
            peer_auth.workload_mode(&Workload {
                namespace: we.namespace().to_owned(),
                labels,
            })
        })
        .max())
}

/// The mode of every local workload port from a loaded config — what both the kernel maps
/// and the terminator enforce. Two workloads on one port: the stricter mode protects both.
pub fn port_modes(
    resources: &crate::config::Resources,
    root_namespace: &str,
) -> Result<BTreeMap<u16, PeerAuthMode>, Vec<ConfigError>> {
    let peer_auth = PeerAuthentications::compile(&resources.peer_authentications, root_namespace)?;
    let mut out: BTreeMap<u16, PeerAuthMode> = BTreeMap::new();
    for pm in workload_port_modes(
        &peer_auth,
        &resources.workload_entries,
        &resources.service_entries,
    ) {
        out.entry(pm.port)
            .and_modify(|m| *m = (*m).max(pm.mode))
            .or_insert(pm.mode);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resources::{EntrySelector, Metadata, ServicePort, WorkloadSelector};
    use crate::config::Origin;
    use std::path::PathBuf;
    use std::sync::Arc;

    use PeerAuthMode::{Disable, Permissive, Strict};

    fn origin() -> Origin {
        Origin {
            file: PathBuf::from("test.yaml"),
            document: 1,
            first_line: 1,
            text: Arc::from(""),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A PeerAuthentication: namespace, name, selector, mode, port-level modes.
    fn pa(
        ns: &str,
        name: &str,
        selector: &[(&str, &str)],
        mode: Option<&str>,
        ports: &[(u32, &str)],
    ) -> Doc<PeerAuthenticationSpec> {
        Doc {
            origin: origin(),
            kind: "PeerAuthentication",
            metadata: Metadata {
                name: name.into(),
                namespace: Some(ns.into()),
                ..Metadata::default()
            },
            spec: PeerAuthenticationSpec {
                selector: (!selector.is_empty()).then(|| WorkloadSelector {
                    match_labels: labels(selector),
                }),
                mtls: mode.map(|m| MutualTls {
                    mode: Some(m.into()),
                }),
                port_level_mtls: ports
                    .iter()
                    .map(|(p, m)| {
                        (
                            *p,
                            MutualTls {
                                mode: Some(m.to_string()),
                            },
                        )
                    })
                    .collect(),
            },
        }
    }

    fn app() -> Workload {
        Workload {
            namespace: "default".into(),
            labels: labels(&[("app", "hello")]),
        }
    }

    #[test]
    fn most_specific_wins_and_unset_inherits() {
        let mesh = |m| pa("istio-system", "default", &[], Some(m), &[]);
        let ns = |m| pa("default", "ns", &[], Some(m), &[]);
        let wl = |m, ports: &[(u32, &str)]| pa("default", "wl", &[("app", "hello")], m, ports);
        let other_wl = pa(
            "default",
            "other",
            &[("app", "other")],
            Some("DISABLE"),
            &[],
        );
        let elsewhere = pa("prod", "ns", &[], Some("DISABLE"), &[]);

        #[rustfmt::skip]
        let table: Vec<(&str, Vec<Doc<PeerAuthenticationSpec>>, u16, PeerAuthMode)> = vec![
            ("nothing anywhere: Istio's default", vec![], 80, Permissive),
            ("mesh STRICT", vec![mesh("STRICT")], 80, Strict),
            ("mesh DISABLE", vec![mesh("DISABLE")], 80, Disable),
            ("mesh UNSET", vec![mesh("UNSET")], 80, Permissive),
            ("namespace beats mesh", vec![mesh("STRICT"), ns("PERMISSIVE")], 80, Permissive),
            ("namespace UNSET inherits mesh", vec![mesh("STRICT"), ns("UNSET")], 80, Strict),
            ("workload beats namespace", vec![ns("STRICT"), wl(Some("DISABLE"), &[])], 80, Disable),
            ("workload UNSET inherits namespace", vec![ns("STRICT"), wl(Some("UNSET"), &[])], 80, Strict),
            ("workload without mtls inherits", vec![mesh("STRICT"), wl(None, &[])], 80, Strict),
            ("port level beats workload", vec![wl(Some("STRICT"), &[(80, "DISABLE")])], 80, Disable),
            ("port level only for its port", vec![wl(Some("STRICT"), &[(80, "DISABLE")])], 8080, Strict),
            ("port level UNSET inherits workload", vec![wl(Some("STRICT"), &[(80, "UNSET")])], 80, Strict),
            ("port level over inherited mode", vec![mesh("STRICT"), wl(None, &[(80, "PERMISSIVE")])], 80, Permissive),
            ("other workload's policy ignored", vec![mesh("STRICT"), other_wl], 80, Strict),
            ("other namespace ignored", vec![mesh("STRICT"), elsewhere], 80, Strict),
            ("mesh policy needs the root namespace", vec![pa("default2", "x", &[], Some("STRICT"), &[])], 80, Permissive),
        ];
        for (what, docs, port, want) in table {
            let pas = PeerAuthentications::compile(&docs, DEFAULT_ROOT_NAMESPACE)
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!(pas.mode_for(&app(), port), want, "{what}");
        }
    }

    #[test]
    fn custom_root_namespace() {
        let docs = vec![pa("mesh-root", "default", &[], Some("STRICT"), &[])];
        let pas = PeerAuthentications::compile(&docs, "mesh-root").unwrap_or_default();
        assert_eq!(pas.mode_for(&app(), 80), Strict);
        let pas = PeerAuthentications::compile(&docs, DEFAULT_ROOT_NAMESPACE).unwrap_or_default();
        assert_eq!(pas.mode_for(&app(), 80), Permissive);
    }

    #[test]
    fn same_level_first_by_name_wins() {
        let docs = vec![
            pa("default", "zz", &[], Some("DISABLE"), &[]),
            pa("default", "aa", &[], Some("STRICT"), &[]),
        ];
        let pas = PeerAuthentications::compile(&docs, DEFAULT_ROOT_NAMESPACE).unwrap_or_default();
        assert_eq!(pas.mode_for(&app(), 80), Strict);
    }

    #[test]
    fn rejects_bad_modes_and_ports() {
        #[rustfmt::skip]
        let table: Vec<(&str, Doc<PeerAuthenticationSpec>, &str)> = vec![
            ("unknown mode", pa("default", "a", &[], Some("strict"), &[]), "spec.mtls.mode"),
            ("port level without selector", pa("default", "a", &[], None, &[(80, "STRICT")]), "spec.portLevelMtls.80"),
            ("port out of range", pa("default", "a", &[("app", "x")], None, &[(70000, "STRICT")]), "spec.portLevelMtls.70000"),
            ("bad port-level mode", pa("default", "a", &[("app", "x")], None, &[(80, "ON")]), "spec.portLevelMtls.80.mode"),
        ];
        for (what, doc, field) in table {
            let errs = PeerAuthentications::compile(&[doc], DEFAULT_ROOT_NAMESPACE)
                .err()
                .unwrap_or_default();
            assert_eq!(errs.len(), 1, "{what}");
            assert_eq!(errs[0].field.as_deref(), Some(field), "{what}");
        }
    }

    #[test]
    fn workload_ports_from_service_and_workload_entries() {
        let we = Doc {
            origin: origin(),
            kind: "WorkloadEntry",
            metadata: Metadata {
                name: "hello".into(),
                namespace: Some("default".into()),
                ..Metadata::default()
            },
            spec: WorkloadEntrySpec {
                labels: labels(&[("app", "hello")]),
                ports: [("metrics".to_string(), 9090)].into_iter().collect(),
                ..WorkloadEntrySpec::default()
            },
        };
        let se: Doc<ServiceEntrySpec> = Doc {
            origin: origin(),
            kind: "ServiceEntry",
            metadata: Metadata {
                name: "hello".into(),
                namespace: Some("default".into()),
                ..Metadata::default()
            },
            spec: ServiceEntrySpec {
                hosts: vec!["hello.default.svc".into()],
                addresses: vec![],
                ports: vec![ServicePort {
                    number: 80,
                    protocol: None,
                    name: "http".into(),
                    target_port: Some(8080),
                }],
                location: None,
                resolution: None,
                endpoints: vec![],
                workload_selector: Some(EntrySelector {
                    labels: labels(&[("app", "hello")]),
                }),
                export_to: vec![],
                subject_alt_names: vec![],
            },
        };
        let pas = PeerAuthentications::compile(
            &[pa(
                "default",
                "wl",
                &[("app", "hello")],
                Some("STRICT"),
                &[(9090, "DISABLE")],
            )],
            DEFAULT_ROOT_NAMESPACE,
        )
        .unwrap_or_default();
        let got = workload_port_modes(&pas, &[we], &[se]);
        let got: Vec<(u16, PeerAuthMode)> = got.iter().map(|p| (p.port, p.mode)).collect();
        assert_eq!(got, vec![(8080, Strict), (9090, Disable)]);
    }

    #[test]
    fn workload_mode_covers_unnamed_ports_and_port_level_names_exceptions() {
        let we = Doc {
            origin: origin(),
            kind: "WorkloadEntry",
            metadata: Metadata {
                name: "hello".into(),
                namespace: Some("default".into()),
                ..Metadata::default()
            },
            spec: WorkloadEntrySpec {
                labels: labels(&[("app", "hello")]),
                ports: [("http".to_string(), 80)].into_iter().collect(),
                ..WorkloadEntrySpec::default()
            },
        };
        let mesh_strict = pa("istio-system", "default", &[], Some("STRICT"), &[]);
        let wl = pa(
            "default",
            "wl",
            &[("app", "hello")],
            None,
            &[(6379, "DISABLE")],
        );
        let pas = PeerAuthentications::compile(&[mesh_strict, wl], DEFAULT_ROOT_NAMESPACE)
            .unwrap_or_default();
        // A mesh-wide STRICT reaches every port of the workload, named or not.
        assert_eq!(pas.workload_mode(&app()), Strict);
        assert_eq!(pas.mode_for(&app(), 22), Strict);
        // portLevelMtls names an exception even though no entry names the port.
        let got = workload_port_modes(&pas, &[we], &[]);
        let got: Vec<(u16, PeerAuthMode)> = got.iter().map(|p| (p.port, p.mode)).collect();
        assert_eq!(got, vec![(80, Strict), (6379, Disable)]);
        // Nothing configured: Istio's PERMISSIVE.
        assert_eq!(
            PeerAuthentications::default().workload_mode(&app()),
            Permissive
        );
    }
}
