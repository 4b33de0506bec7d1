//! Gateway servers → listeners: one per port, each server with its hosts and TLS settings.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::compile::Settings;
use super::credentials::load_credential;
use super::hosts::HostMatch;
use super::model::{Credentials, GatewayRef, GatewayServer, Listener, ServerTls};
use super::resources::{Labels, ServerTlsSettings};
use super::{ConfigError, Doc, Resources};
use crate::tls::{server_config, ServerTlsMode, TlsVersions};

fn is_subset(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub(super) fn listeners(
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
