//! `/config_dump`: the compiled snapshot as JSON, for operators and tests.
//!
//! The view is built from small structs here rather than by serializing the config types, so
//! nothing with key material (`rustls::ServerConfig`, `CertifiedKey`) can reach the output.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::hosts::HostMatch;
use crate::config::model::{Upstream, UriMatch};
use crate::snapshot::model::ServerTls;
use crate::snapshot::Snapshot;
use crate::tls::ServerTlsMode;

#[derive(Serialize)]
pub struct ConfigDump<'a> {
    pub settings: SettingsView<'a>,
    pub listeners: Vec<ListenerView<'a>>,
    pub virtual_services: Vec<VirtualServiceView<'a>>,
    pub credentials: Vec<CredentialView<'a>>,
    /// The AuthorizationPolicies that apply to this gateway, in evaluation order.
    pub authorization_policies: Vec<PolicyView>,
}

#[derive(Serialize)]
pub struct SettingsView<'a> {
    pub root_namespace: &'a str,
    pub gateway_namespace: &'a str,
    pub gateway_labels: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
pub struct ListenerView<'a> {
    pub port: u16,
    pub tls: bool,
    pub servers: Vec<ServerView<'a>>,
}

#[derive(Serialize)]
pub struct ServerView<'a> {
    pub gateway: String,
    pub port_name: &'a str,
    pub hosts: Vec<String>,
    /// `HTTP`, `SIMPLE`, `MUTUAL` or `PASSTHROUGH`.
    pub tls_mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<&'a str>,
}

#[derive(Serialize)]
pub struct VirtualServiceView<'a> {
    pub name: &'a str,
    pub gateways: Vec<String>,
    pub hosts: Vec<String>,
    pub http: Vec<HttpRouteView<'a>>,
    pub tls: Vec<TlsRouteView<'a>>,
}

#[derive(Serialize)]
pub struct HttpRouteView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub matches: Vec<MatchView<'a>>,
    pub upstream: &'a Upstream,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u128>,
}

#[derive(Serialize)]
pub struct MatchView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri_exact: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri_prefix: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Serialize)]
pub struct TlsRouteView<'a> {
    pub sni_hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub upstream: &'a Upstream,
}

/// A credential by name and validity; never its key or certificate bytes.
#[derive(Serialize)]
pub struct CredentialView<'a> {
    pub name: &'a str,
    /// `notAfter` of the leaf certificate, unix seconds.
    pub not_after: i64,
    /// Whether it carries a `ca.crt` to verify client certificates with.
    pub client_ca: bool,
}

#[derive(Serialize)]
pub struct PolicyView {
    pub action: &'static str,
    pub namespace: String,
    pub name: String,
}

fn hosts(list: &[HostMatch]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

impl<'a> ConfigDump<'a> {
    pub fn new(s: &'a Snapshot) -> Self {
        let listeners = s
            .listeners
            .iter()
            .map(|l| ListenerView {
                port: l.port,
                tls: l.tls,
                servers: l
                    .servers
                    .iter()
                    .map(|srv| {
                        let (tls_mode, credential_name) = match &srv.tls {
                            None => ("HTTP", None),
                            Some(ServerTls::Passthrough) => ("PASSTHROUGH", None),
                            Some(ServerTls::Terminate {
                                mode,
                                credential_name,
                                ..
                            }) => (
                                match mode {
                                    ServerTlsMode::Simple => "SIMPLE",
                                    ServerTlsMode::Mutual => "MUTUAL",
                                },
                                Some(credential_name.as_str()),
                            ),
                        };
                        ServerView {
                            gateway: srv.gateway.to_string(),
                            port_name: &srv.port_name,
                            hosts: hosts(&srv.hosts),
                            tls_mode,
                            credential_name,
                        }
                    })
                    .collect(),
            })
            .collect();
        let virtual_services = s
            .routes
            .virtual_hosts
            .iter()
            .map(|vh| VirtualServiceView {
                name: &vh.name,
                gateways: vh.gateways.iter().map(ToString::to_string).collect(),
                hosts: hosts(&vh.hosts),
                http: vh
                    .http
                    .iter()
                    .map(|r| HttpRouteView {
                        name: r.name.as_deref(),
                        matches: r
                            .matches
                            .iter()
                            .map(|(uri, port)| MatchView {
                                uri_exact: match uri {
                                    Some(UriMatch::Exact(p)) => Some(p),
                                    _ => None,
                                },
                                uri_prefix: match uri {
                                    Some(UriMatch::Prefix(p)) => Some(p),
                                    _ => None,
                                },
                                port: *port,
                            })
                            .collect(),
                        upstream: &r.upstream,
                        timeout_ms: r.timeout.map(|t| t.as_millis()),
                    })
                    .collect(),
                tls: vh
                    .tls
                    .iter()
                    .map(|r| TlsRouteView {
                        sni_hosts: hosts(&r.sni_hosts),
                        port: r.port,
                        upstream: &r.upstream,
                    })
                    .collect(),
            })
            .collect();
        let credentials = s
            .credentials
            .iter()
            .map(|(name, c)| CredentialView {
                name,
                not_after: c.not_after,
                client_ca: c.roots.is_some(),
            })
            .collect();
        let authorization_policies = s
            .authz
            .policies()
            .map(|(action, p)| PolicyView {
                action: action.as_str(),
                namespace: p.namespace.to_string(),
                name: p.name.to_string(),
            })
            .collect();
        Self {
            settings: SettingsView {
                root_namespace: &s.settings.root_namespace,
                gateway_namespace: &s.settings.gateway_namespace,
                gateway_labels: &s.settings.gateway_labels,
            },
            listeners,
            virtual_services,
            credentials,
            authorization_policies,
        }
    }
}
