//! Resources → [`Snapshot`]: cross-checks the resources and builds the model.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

use super::hosts::HostMatch;
use super::model::{
    Credentials, GatewayRef, GatewayServer, HttpRouteRule, Listener, MeshInbound, Routes,
    ServerTls, TlsRouteRule, Upstream, UriMatch, VirtualHost,
};
use super::resources::{Labels, RouteDestination, ServerTlsSettings, StringMatch};
use super::{ConfigError, ConfigErrors, Doc, Resources};
use crate::policy::authz::{Authorizer, AuthzScope};
use crate::tls::{server_config, Credential, ServerTlsMode, TlsVersions};

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
}

/// Builds a snapshot, reporting every problem found.
pub fn compile(resources: Resources, settings: Settings) -> Result<Snapshot, ConfigErrors> {
    let mut errors = Vec::new();
    let mut credentials = Credentials::new();
    let listeners = listeners(&resources, &settings, &mut credentials, &mut errors);
    let routes = routes(&resources, &mut errors);
    let scope = AuthzScope {
        root_namespace: settings.root_namespace.clone(),
        workload_namespace: settings.gateway_namespace.clone(),
        workload_labels: settings.gateway_labels.clone(),
    };
    let authz = Authorizer::compile(&resources.authorization_policies, &scope)
        .map_err(|ConfigErrors(mut e)| errors.append(&mut e))
        .ok();
    let mesh = match &settings.mesh_credential {
        Some(name) => super::mesh::compile_mesh(name, &resources, &settings, &mut errors),
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
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

fn is_subset(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn listeners(
    resources: &Resources,
    settings: &Settings,
    credentials: &mut Credentials,
    errors: &mut Vec<ConfigError>,
) -> Vec<Listener> {
    let mut by_port: BTreeMap<u16, Listener> = BTreeMap::new();
    for gw in &resources.gateways {
        if !is_subset(&gw.spec.selector, &settings.gateway_labels) {
            tracing::info!(gateway = %gw.display_name(), "gateway selector does not match this gateway's labels; skipped");
            continue;
        }
        let gateway = GatewayRef {
            namespace: gw.namespace().to_owned(),
            name: gw.metadata.name.clone(),
        };
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let field = |f: &str| format!("spec.servers[{i}].{f}");
            let Ok(port) = u16::try_from(server.port.number) else {
                errors.push(gw.error(
                    &field("port.number"),
                    "number",
                    format!("{} is not a TCP port", server.port.number),
                ));
                continue;
            };
            let mut hosts = Vec::new();
            for h in &server.hosts {
                match HostMatch::parse(h) {
                    Ok(m) => hosts.push(m),
                    Err(msg) => errors.push(gw.error(&field("hosts"), h, msg)),
                }
            }
            let protocol = server.port.protocol.to_ascii_uppercase();
            let tls = match (protocol.as_str(), &server.tls) {
                ("HTTP", None) => None,
                ("HTTP", Some(t)) if t.https_redirect && t.mode.is_none() => {
                    errors.push(gw.error(
                        &field("tls.httpsRedirect"),
                        "httpsRedirect",
                        "httpsRedirect is not supported yet",
                    ));
                    continue;
                }
                ("HTTP", Some(_)) => {
                    errors.push(gw.error(
                        &field("tls"),
                        "tls",
                        "an HTTP server takes no `tls` settings (use protocol HTTPS)",
                    ));
                    continue;
                }
                ("HTTPS" | "TLS", Some(t)) => {
                    match server_tls(
                        gw,
                        &field("tls"),
                        t,
                        settings,
                        resources,
                        credentials,
                        &protocol,
                    ) {
                        Ok(tls) => Some(tls),
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    }
                }
                ("HTTPS" | "TLS", None) => {
                    errors.push(gw.error(
                        &field("tls"),
                        "protocol",
                        format!("protocol {protocol} needs `tls` settings"),
                    ));
                    continue;
                }
                (other, _) => {
                    errors.push(gw.error(
                        &field("port.protocol"),
                        "protocol",
                        format!("protocol {other:?} is not supported (use HTTP, HTTPS or TLS)"),
                    ));
                    continue;
                }
            };
            let is_tls = tls.is_some();
            let listener = by_port.entry(port).or_insert_with(|| Listener {
                port,
                tls: is_tls,
                servers: Vec::new(),
            });
            if listener.tls != is_tls {
                errors.push(gw.error(
                    &field("port"),
                    "number",
                    format!("port {port} mixes plain HTTP and TLS servers; one port serves one or the other"),
                ));
                continue;
            }
            listener.servers.push(GatewayServer {
                gateway: gateway.clone(),
                port_name: server
                    .port
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}-{port}", protocol.to_ascii_lowercase())),
                hosts,
                tls,
            });
        }
    }
    by_port.into_values().collect()
}

fn server_tls(
    gw: &Doc<super::resources::GatewaySpec>,
    field: &str,
    t: &ServerTlsSettings,
    settings: &Settings,
    resources: &Resources,
    credentials: &mut Credentials,
    protocol: &str,
) -> Result<ServerTls, ConfigError> {
    let mode = t.mode.as_deref().unwrap_or("SIMPLE");
    let tls_mode = match mode {
        "SIMPLE" => ServerTlsMode::Simple,
        "MUTUAL" => ServerTlsMode::Mutual,
        "PASSTHROUGH" => return Ok(ServerTls::Passthrough),
        "ISTIO_MUTUAL" | "AUTO_PASSTHROUGH" | "OPTIONAL_MUTUAL" => {
            return Err(gw.error(
                &format!("{field}.mode"),
                mode,
                format!("tls mode {mode} is not supported yet (use SIMPLE, MUTUAL or PASSTHROUGH)"),
            ))
        }
        other => {
            return Err(gw.error(
                &format!("{field}.mode"),
                other,
                format!("unknown tls mode {other:?} (expected SIMPLE, MUTUAL or PASSTHROUGH)"),
            ))
        }
    };
    if protocol == "TLS" {
        return Err(gw.error(
            &format!("{field}.mode"),
            mode,
            "terminating TLS for opaque TCP (protocol TLS with SIMPLE/MUTUAL) is not supported yet; use HTTPS or PASSTHROUGH",
        ));
    }
    let versions = tls_versions(gw, field, t)?;
    let name = if let Some(name) = &t.credential_name {
        name.clone()
    } else {
        let found = t.server_certificate.is_some() || t.private_key.is_some();
        return Err(gw.error(
            &format!("{field}.credentialName"),
            if found { "serverCertificate" } else { "tls" },
            "set `credentialName` (file paths in serverCertificate/privateKey are not supported; put them in a credential directory)",
        ));
    };
    let cred = match credentials.get(&name) {
        Some(c) => c.clone(),
        None => {
            let referrer = |msg: String| gw.error(&format!("{field}.credentialName"), &name, msg);
            let cred = Arc::new(load_credential(&referrer, &name, settings, resources)?);
            credentials.insert(name.clone(), cred.clone());
            cred
        }
    };
    if tls_mode == ServerTlsMode::Mutual && cred.roots.is_none() {
        return Err(gw.error(
            &format!("{field}.credentialName"),
            &name,
            format!("MUTUAL needs a CA to verify clients, but credential {name:?} has no ca.crt"),
        ));
    }
    let config = server_config(&cred, tls_mode, versions, &[b"h2", b"http/1.1"]).map_err(|e| {
        gw.error(
            &format!("{field}.credentialName"),
            &name,
            format!("credential {name:?}: {e}"),
        )
    })?;
    Ok(ServerTls::Terminate {
        mode: tls_mode,
        credential_name: name,
        config,
    })
}

fn tls_versions(
    gw: &Doc<super::resources::GatewaySpec>,
    field: &str,
    t: &ServerTlsSettings,
) -> Result<TlsVersions, ConfigError> {
    let mut v = TlsVersions::default();
    match t.min_protocol_version.as_deref() {
        None | Some("TLS_AUTO" | "TLSV1_0" | "TLSV1_1" | "TLSV1_2") => {}
        Some("TLSV1_3") => v.min_tls13 = true,
        Some(other) => {
            return Err(gw.error(
                &format!("{field}.minProtocolVersion"),
                other,
                format!("unknown TLS version {other:?}"),
            ))
        }
    }
    match t.max_protocol_version.as_deref() {
        None | Some("TLS_AUTO" | "TLSV1_3") => {}
        Some("TLSV1_2") => v.max_tls12 = true,
        Some(old @ ("TLSV1_0" | "TLSV1_1")) => {
            return Err(gw.error(
                &format!("{field}.maxProtocolVersion"),
                old,
                format!("{old} is not offered: Portcullis speaks TLS 1.2 and 1.3 only"),
            ))
        }
        Some(other) => {
            return Err(gw.error(
                &format!("{field}.maxProtocolVersion"),
                other,
                format!("unknown TLS version {other:?}"),
            ))
        }
    }
    if v.min_tls13 && v.max_tls12 {
        return Err(gw.error(
            &format!("{field}.minProtocolVersion"),
            "minProtocolVersion",
            "minProtocolVersion is above maxProtocolVersion",
        ));
    }
    Ok(v)
}

/// Finds `name` as a Secret (preferring the gateway's namespace, then the root namespace,
/// then any) or as a directory `<dir>/<name>/`, and parses it.
/// `referrer` makes the error at the place that named the credential (a Gateway server's
/// `credentialName`, or the mesh credential flag).
pub(super) fn load_credential(
    referrer: &dyn Fn(String) -> ConfigError,
    name: &str,
    settings: &Settings,
    resources: &Resources,
) -> Result<Credential, ConfigError> {
    let rank = |ns: &str| {
        if ns == settings.gateway_namespace {
            0
        } else if ns == settings.root_namespace {
            1
        } else {
            2
        }
    };
    let secret = resources
        .secrets
        .iter()
        .filter(|s| s.metadata.name == name)
        .min_by_key(|s| rank(s.namespace()));
    if let Some(secret) = secret {
        let get = |key: &str| -> Result<Option<Vec<u8>>, ConfigError> {
            if let Some(v) = secret.spec.string_data.get(key) {
                return Ok(Some(v.as_bytes().to_vec()));
            }
            match secret.spec.data.get(key) {
                None => Ok(None),
                Some(b64) => {
                    let compact: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
                    base64::engine::general_purpose::STANDARD
                        .decode(compact)
                        .map(Some)
                        .map_err(|e| {
                            secret.error(
                                &format!("data.{key}"),
                                key,
                                format!("not valid base64: {e}"),
                            )
                        })
                }
            }
        };
        let cert = get("tls.crt")?
            .ok_or_else(|| secret.error("data", "data", "the secret has no `tls.crt`"))?;
        let key = get("tls.key")?
            .ok_or_else(|| secret.error("data", "data", "the secret has no `tls.key`"))?;
        let mut ca = get("ca.crt")?;
        if ca.is_none() {
            // Istio also reads the CA from a companion secret `<name>-cacert`.
            let companion = format!("{name}-cacert");
            if let Some(c) = resources
                .secrets
                .iter()
                .find(|s| s.metadata.name == companion)
            {
                ca = c
                    .spec
                    .string_data
                    .get("ca.crt")
                    .map(|v| v.as_bytes().to_vec())
                    .or_else(|| {
                        c.spec.data.get("ca.crt").and_then(|b| {
                            let compact: String =
                                b.chars().filter(|c| !c.is_whitespace()).collect();
                            base64::engine::general_purpose::STANDARD
                                .decode(compact)
                                .ok()
                        })
                    });
            }
        }
        return Credential::from_pem(&cert, &key, ca.as_deref()).map_err(|e| {
            secret.error("data", e.field_hint(), format!("credential {name:?}: {e}"))
        });
    }
    for dir in &settings.credential_dirs {
        let base = dir.join(name);
        if !base.is_dir() {
            continue;
        }
        let read = |file: &str| std::fs::read(base.join(file));
        let cert = read("tls.crt")
            .map_err(|e| referrer(format!("{}: {e}", base.join("tls.crt").display())))?;
        let key = read("tls.key")
            .map_err(|e| referrer(format!("{}: {e}", base.join("tls.key").display())))?;
        let ca = read("ca.crt").ok();
        return Credential::from_pem(&cert, &key, ca.as_deref())
            .map_err(|e| referrer(format!("credential {name:?} in {}: {e}", base.display())));
    }
    let dirs: Vec<String> = settings
        .credential_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    Err(referrer(format!(
            "credential {name:?} not found: no Secret named {name:?} in the configuration and no directory {name}/ under the credential dirs [{}]",
            dirs.join(", ")
        ),
    ))
}

fn routes(resources: &Resources, errors: &mut Vec<ConfigError>) -> Routes {
    let mut virtual_hosts = Vec::new();
    for vs in &resources.virtual_services {
        let ns = vs.namespace().to_owned();
        let gateways: Vec<GatewayRef> = vs
            .spec
            .gateways
            .iter()
            .filter(|g| g.as_str() != "mesh")
            .map(|g| match g.split_once('/') {
                Some((n, name)) => GatewayRef {
                    namespace: n.to_owned(),
                    name: name.to_owned(),
                },
                None => GatewayRef {
                    namespace: ns.clone(),
                    name: g.clone(),
                },
            })
            .collect();
        let mut hosts = Vec::new();
        for (i, h) in vs.spec.hosts.iter().enumerate() {
            match HostMatch::parse(h) {
                Ok(m) => hosts.push(m),
                Err(msg) => errors.push(vs.error(&format!("spec.hosts[{i}]"), h, msg)),
            }
        }
        let mut http = Vec::new();
        for (i, route) in vs.spec.http.iter().enumerate() {
            let field = format!("spec.http[{i}]");
            let mut matches = Vec::new();
            for (j, m) in route.matches.iter().enumerate() {
                let uri = match &m.uri {
                    None => None,
                    Some(StringMatch::Exact(p)) => Some(UriMatch::Exact(p.clone())),
                    Some(StringMatch::Prefix(p)) => Some(UriMatch::Prefix(p.clone())),
                    Some(StringMatch::Regex(r)) => {
                        errors.push(vs.error(
                            &format!("{field}.match[{j}].uri.regex"),
                            r,
                            "regex URI matches are not supported yet (use exact or prefix)",
                        ));
                        None
                    }
                };
                let port = m.port.map(|p| u16::try_from(p).unwrap_or(0));
                matches.push((uri, port));
            }
            let timeout = match route.timeout.as_deref().map(parse_duration) {
                None => None,
                Some(Ok(d)) => Some(d),
                Some(Err(msg)) => {
                    errors.push(vs.error(&format!("{field}.timeout"), "timeout", msg));
                    None
                }
            };
            match upstream(vs, &field, &route.route, resources) {
                Ok(upstream) => http.push(HttpRouteRule {
                    name: route.name.clone(),
                    matches,
                    upstream,
                    timeout,
                }),
                Err(e) => errors.push(e),
            }
        }
        let mut tls = Vec::new();
        for (i, route) in vs.spec.tls.iter().enumerate() {
            let field = format!("spec.tls[{i}]");
            for m in &route.matches {
                let mut sni_hosts = Vec::new();
                for h in &m.sni_hosts {
                    match HostMatch::parse(h) {
                        Ok(hm) => sni_hosts.push(hm),
                        Err(msg) => {
                            errors.push(vs.error(&format!("{field}.match.sniHosts"), h, msg))
                        }
                    }
                }
                match upstream(vs, &field, &route.route, resources) {
                    Ok(upstream) => tls.push(TlsRouteRule {
                        sni_hosts,
                        port: m.port.and_then(|p| u16::try_from(p).ok()),
                        upstream,
                    }),
                    Err(e) => errors.push(e),
                }
            }
        }
        if !vs.spec.tcp.is_empty() {
            errors.push(vs.error("spec.tcp", "tcp", "tcp routes are not supported yet"));
        }
        virtual_hosts.push(VirtualHost {
            name: format!("{ns}/{}", vs.metadata.name),
            gateways,
            hosts,
            http,
            tls,
        });
    }
    Routes { virtual_hosts }
}

/// Resolves a route's destination through the ServiceEntries. One destination per route for
/// now: weighted splits are rejected rather than silently collapsed.
fn upstream(
    vs: &Doc<super::resources::VirtualServiceSpec>,
    field: &str,
    route: &[RouteDestination],
    resources: &Resources,
) -> Result<Upstream, ConfigError> {
    let [dest] = route else {
        return Err(vs.error(
            &format!("{field}.route"),
            "route",
            format!(
                "exactly one route destination is supported, found {}",
                route.len()
            ),
        ));
    };
    let host = &dest.destination.host;
    let dfield = format!("{field}.route[0].destination");
    let Some(se) = resources
        .service_entries
        .iter()
        .find(|se| se.spec.hosts.iter().any(|h| h == host))
    else {
        return Err(vs.error(
            &format!("{dfield}.host"),
            host,
            format!("no ServiceEntry declares host {host:?}; declare it with its endpoints"),
        ));
    };
    let port = match (&dest.destination.port, se.spec.ports.as_slice()) {
        (Some(p), _) => se
            .spec
            .ports
            .iter()
            .find(|sp| sp.number == p.number)
            .ok_or_else(|| {
                vs.error(
                    &format!("{dfield}.port.number"),
                    "number",
                    format!(
                        "ServiceEntry {} has no port {}",
                        se.display_name(),
                        p.number
                    ),
                )
            })?,
        (None, [only]) => only,
        (None, ports) => {
            return Err(vs.error(
                &format!("{dfield}.port"),
                host,
                format!(
                    "ServiceEntry {} has {} ports; name one with destination.port.number",
                    se.display_name(),
                    ports.len()
                ),
            ))
        }
    };
    let service_port = u16::try_from(port.number).map_err(|_| {
        se.error(
            "spec.ports",
            "number",
            format!("{} is not a TCP port", port.number),
        )
    })?;
    let default_target = port.target_port.unwrap_or(port.number);
    let mut endpoints = Vec::new();
    for ep in &se.spec.endpoints {
        let Some(address) = &ep.address else { continue };
        let target = ep.ports.get(&port.name).copied().unwrap_or(default_target);
        if address.contains(':') {
            endpoints.push(format!("[{address}]:{target}"));
        } else {
            endpoints.push(format!("{address}:{target}"));
        }
    }
    if endpoints.is_empty() {
        if se.spec.resolution.as_deref() == Some("DNS") {
            endpoints.push(format!("{host}:{default_target}"));
        } else {
            return Err(se.error("spec.endpoints", "hosts", format!("ServiceEntry for {host:?} has no endpoints (add endpoints, or resolution: DNS)")));
        }
    }
    Ok(Upstream {
        service: host.clone(),
        port: service_port,
        endpoints,
    })
}

/// Parses an Istio duration: `1.5s`, `250ms`, `2m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 5s, 250ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?} is not a duration (e.g. 5s, 250ms)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration (e.g. 5s, 250ms)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_paths;
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
