//! Gateway servers → listeners: one per port, each server with its hosts and TLS settings.

use std::collections::BTreeMap;

use super::model::{Credentials, GatewayServer, Listener};
use super::server_tls::server_tls;
use crate::config::hosts::HostMatch;
use crate::config::model::GatewayRef;
use crate::config::resources::Labels;
use crate::config::{ConfigError, ConfigWarning, Resources, Settings};

fn is_subset(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub(super) fn listeners(
    resources: &Resources,
    settings: &Settings,
    credentials: &mut Credentials,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigWarning>,
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
                        warnings,
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
