//! VirtualServices → routes, with destinations resolved through ServiceEntries.

use std::time::Duration;

use super::hosts::HostMatch;
use super::model::{
    GatewayRef, HttpRouteRule, Routes, TlsRouteRule, Upstream, UriMatch, VirtualHost,
};
use super::resources::{RouteDestination, StringMatch};
use super::{ConfigError, Doc, Resources};

/// The routes, with every problem found pushed onto `errors`. Which `uri` matches the path
/// normalization makes unreachable is checked one layer up, by the snapshot's lint.
pub fn routes(resources: &Resources, errors: &mut Vec<ConfigError>) -> Routes {
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
    use super::routes;
    use crate::config::model::{Routes, UriMatch};
    use crate::config::{load_paths, ConfigErrors};

    fn compile_vs(matches: &str) -> Result<Routes, ConfigErrors> {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("vs.yaml");
        std::fs::write(
            &file,
            format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: default}}\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  http:\n  - match:\n{matches}    route: [{{destination: {{host: up.local}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: up, namespace: default}}\nspec:\n  hosts: [up.local]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n"),
        )
        .expect("write");
        let resources = load_paths(std::slice::from_ref(&file))?;
        let mut errors = Vec::new();
        let routes = routes(&resources, &mut errors);
        if errors.is_empty() {
            Ok(routes)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Istio writes `uri: {prefix: /api}` (flow or block style); both load.
    #[test]
    fn uri_matches_load_as_istio_writes_them() {
        let snap = compile_vs("    - uri: {exact: /a}\n    - uri:\n        prefix: /b/\n")
            .expect("compiles");
        let rule = &snap.virtual_hosts[0].http[0];
        assert_eq!(
            rule.matches,
            vec![
                (Some(UriMatch::Exact("/a".into())), None),
                (Some(UriMatch::Prefix("/b/".into())), None)
            ]
        );
        let err = compile_vs("    - uri: {exact: /a, prefix: /b}\n").expect_err("two kinds");
        assert!(err.to_string().contains("exactly one of"), "{err}");
        let err = compile_vs("    - uri: {exakt: /a}\n").expect_err("typo");
        assert!(err.to_string().contains("exakt"), "{err}");
    }
}
