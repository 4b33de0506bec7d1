//! The cases themselves. Policies are named after what they test; a matcher case uses one
//! ALLOW policy whose rule 0 holds the matcher, so a match is `Allow(Some((p, 0)))` and a
//! miss is `NoAllowMatched(&[p])`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Case, ErrorCase, Expect, Request, Workload, INGRESS, MTLS, PLAIN, SLEEP};
use Expect::{Allow, Deny, NoAllowMatched};

const fn case(
    name: &'static str,
    policies: &'static str,
    request: Request,
    expect: Expect,
) -> Case {
    Case {
        name,
        policies,
        workload: INGRESS,
        request,
        expect,
        audited: None,
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const V6_PEER: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7));
const V4_MAPPED_PEER: IpAddr = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a01, 0x0203));

/// The issue's walkthrough policy, unchanged.
const WALKTHROUGH: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: test, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [test.client]}}]
    to: [{operation: {paths: [/status/418]}}]
  selector: {matchLabels: {istio: ingressgateway}}
"#;

const DENY_ADMIN_ALLOW_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: istio-system}
spec:
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"#;

const ALLOW_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: istio-system}
spec:
  action: ALLOW
  rules: [{}]
"#;

const ALLOW_NOTHING: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: istio-system}
spec: {}
"#;

const ALLOW_EMPTY_RULES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: istio-system}
spec:
  action: ALLOW
  rules: []
"#;

const ALLOW_NOTHING_AND_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: istio-system}
spec:
  rules: [{}]
"#;

const DENY_NO_RULES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-nothing, namespace: istio-system}
spec:
  action: DENY
"#;

const DENY_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: istio-system}
spec:
  action: DENY
  rules: [{}]
"#;

/// ALLOW only `/ok` from a policy in the root namespace.
const ROOT_ALLOW_OK: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-ok, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {paths: [/ok]}}]
"#;

/// The same policy in namespace `gateways`.
const GATEWAYS_ALLOW_OK: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-ok, namespace: gateways}
spec:
  rules:
  - to: [{operation: {paths: [/ok]}}]
"#;

/// The same policy in namespace `default` (no `namespace:` means `default`).
const DEFAULT_ALLOW_OK: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-ok}
spec:
  rules:
  - to: [{operation: {paths: [/ok]}}]
"#;

const SELECTOR_OTHER: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-ok, namespace: istio-system}
spec:
  selector: {matchLabels: {app: other}}
  rules:
  - to: [{operation: {paths: [/ok]}}]
"#;

const SELECTOR_SUBSET: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-ok, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  rules:
  - to: [{operation: {paths: [/ok]}}]
"#;

const SELECTOR_EMPTY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-ok, namespace: istio-system}
spec:
  selector: {matchLabels: {}}
  rules:
  - to: [{operation: {paths: [/ok]}}]
"#;

const GATEWAY_WITH_APP: Workload = Workload {
    namespace: "gateways",
    labels: &[("istio", "ingressgateway"), ("app", "edge")],
};

const TWO_ALLOWS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b-allow-get, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a-allow-sleep, namespace: istio-system}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
"#;

const PATHS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: paths, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {paths: [/exact, "/api/*", "*.json"]}}]
"#;

const PATH_PRESENT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: paths, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {paths: ["*"]}}]
"#;

const HOSTS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: hosts, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {hosts: [test.com, "*.example.com", "api.*"]}}]
"#;

const METHODS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: methods, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {methods: [GET, HEAD]}}]
"#;

const PORTS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ports, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {ports: ["443", "8443"]}}]
"#;

const PRINCIPALS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: principals, namespace: istio-system}
spec:
  rules:
  - from: [{source: {principals: [test.client, "cluster.local/ns/prod/*", "*/sa/sleep"]}}]
"#;

const ANY_PRINCIPAL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: principals, namespace: istio-system}
spec:
  rules:
  - from: [{source: {principals: ["*"]}}]
"#;

const NAMESPACES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: namespaces, namespace: istio-system}
spec:
  rules:
  - from: [{source: {namespaces: [default, "team-*"]}}]
"#;

/// Istio's "deny requests without a principal" recipe.
const DENY_NO_PRINCIPAL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-mtls, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {notPrincipals: ["*"]}}]
"#;

const NOT_PRINCIPALS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-principals, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {notPrincipals: [test.client]}}]
"#;

const NOT_NAMESPACES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-namespaces, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {notNamespaces: [default]}}]
"#;

const NOT_OPERATION: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-hosts, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {notHosts: [test.com]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-methods, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {notMethods: [GET, HEAD]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-paths, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {notPaths: ["/status/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-ports, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {notPorts: ["443", "80"]}}]
"#;

const IP_BLOCKS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ip-blocks, namespace: istio-system}
spec:
  rules:
  - from: [{source: {ipBlocks: [10.0.0.0/8, 192.168.1.7, "fd00::/16"]}}]
"#;

const NOT_IP_BLOCKS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-ip-blocks, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {notIpBlocks: [10.0.0.0/8, "2001:db8::1"]}}]
"#;

const REMOTE_IP_BLOCKS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: remote-ip-blocks, namespace: istio-system}
spec:
  rules:
  - from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]
"#;

const NOT_REMOTE_IP_BLOCKS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-remote-ip-blocks, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {notRemoteIpBlocks: [203.0.113.0/24]}}]
"#;

/// Two fields in one source (AND), two sources (OR), two operations (OR).
const COMBINED: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: combined, namespace: istio-system}
spec:
  rules:
  - from:
    - source: {principals: ["*/sa/sleep"], namespaces: [prod]}
    - source: {principals: [test.client]}
    to:
    - operation: {methods: [POST], paths: [/upload]}
    - operation: {paths: ["/status/*"]}
"#;

const RULE_INDEX: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: three-rules, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {paths: [/a]}}]
  - from: [{source: {principals: [someone.else]}}]
  - to: [{operation: {methods: [GET]}}]
"#;

const WHEN_HEADERS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: when-headers, namespace: istio-system}
spec:
  rules:
  - when:
    - key: request.headers[X-Token]
      values: [secret, "pre-*"]
"#;

const WHEN_HEADER_PRESENT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: when-headers, namespace: istio-system}
spec:
  rules:
  - when:
    - key: request.headers[x-token]
      values: ["*"]
"#;

const WHEN_HEADER_NOT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: when-header-not, namespace: istio-system}
spec:
  action: DENY
  rules:
  - when:
    - key: request.headers[x-env]
      notValues: [prod]
"#;

const WHEN_SOURCE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: when-source, namespace: istio-system}
spec:
  rules:
  - when:
    - {key: source.ip, values: [10.1.0.0/16]}
  - when:
    - {key: remote.ip, values: [203.0.113.9]}
  - when:
    - {key: source.namespace, values: ["team-*"]}
  - when:
    - {key: source.principal, values: ["*/sa/sleep"]}
  - when:
    - {key: destination.port, values: ["8443"]}
  - when:
    - {key: connection.sni, values: ["*.internal"]}
"#;

const WHEN_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: when-all, namespace: istio-system}
spec:
  rules:
  - when:
    - {key: destination.port, values: ["443"]}
    - {key: connection.sni, values: [test.com], notValues: [other.com]}
    - {key: source.principal, notValues: [blocked.client]}
"#;

const WHEN_NOT_VALUES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: when-not, namespace: istio-system}
spec:
  action: DENY
  rules:
  - when:
    - {key: source.ip, notValues: [10.0.0.0/8]}
  - when:
    - {key: source.namespace, notValues: [default]}
"#;

const AUDIT_AND_DENY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-status, namespace: istio-system}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {paths: ["/status/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: test, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [test.client]}}]
    to: [{operation: {paths: [/status/418]}}]
"#;

const AUDIT_ONLY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-nothing, namespace: istio-system}
spec:
  action: AUDIT
"#;

/// Enough exact paths and principals that both indexes are used, plus an unindexed rule.
const INDEXED: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-many, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: [/d0, /d1, /d2, /d3, /d4, /d5, /d6, /d7, /d8, /d9]}
    - operation: {paths: [/d10, /d11, /d12], methods: [POST]}
  - from: [{source: {principals: [bad0, bad1, bad2, bad3, bad4, bad5, bad6, bad7, bad8, bad9]}}]
  - to: [{operation: {paths: ["/debug/*"]}}]
"#;

const AUDIT_PATHS: Request = Request {
    path: "/status/418",
    ..MTLS
};

/// Every authorization case; see the module docs. One line per case, so the table reads as
/// a table.
#[rustfmt::skip]
pub const CASES: &[Case] = &[
    // The walkthrough (issue 2, steps 2–5).
    case("walkthrough: test.client /status/418 is denied", WALKTHROUGH, Request { path: "/status/418", ..MTLS }, Deny("istio-system/test", 0)),
    case("walkthrough: test.client /status/200 is allowed", WALKTHROUGH, MTLS, Allow(None)),
    case("walkthrough: no principal /status/418 is allowed", WALKTHROUGH, Request { principal: None, path: "/status/418", ..MTLS }, Allow(None)),
    case("walkthrough: another principal /status/418 is allowed", WALKTHROUGH, Request { path: "/status/418", ..SLEEP }, Allow(None)),
    case("walkthrough: plain HTTP /status/418 is allowed", WALKTHROUGH, Request { path: "/status/418", ..PLAIN }, Allow(None)),
    // Order and rule-less policies.
    case("DENY is evaluated before ALLOW", DENY_ADMIN_ALLOW_ALL, Request { path: "/admin/users", ..MTLS }, Deny("istio-system/deny-admin", 0)),
    case("ALLOW applies when no DENY matches", DENY_ADMIN_ALLOW_ALL, MTLS, Allow(Some(("istio-system/allow-all", 0)))),
    case("ALLOW with rules [{}] allows everything", ALLOW_ALL, PLAIN, Allow(Some(("istio-system/allow-all", 0)))),
    case("ALLOW without rules denies everything", ALLOW_NOTHING, MTLS, NoAllowMatched(&["istio-system/allow-nothing"])),
    case("ALLOW with rules [] denies everything", ALLOW_EMPTY_RULES, PLAIN, NoAllowMatched(&["istio-system/allow-nothing"])),
    case("ALLOW without rules does not block another ALLOW", ALLOW_NOTHING_AND_ALL, MTLS, Allow(Some(("istio-system/allow-all", 0)))),
    case("DENY without rules never matches", DENY_NO_RULES, MTLS, Allow(None)),
    case("DENY with rules [{}] denies everything", DENY_ALL, PLAIN, Deny("istio-system/deny-all", 0)),
    case("several ALLOW policies: any may match", TWO_ALLOWS, Request { method: "POST", ..SLEEP }, Allow(Some(("istio-system/a-allow-sleep", 0)))),
    case("several ALLOW policies: all are tried, sorted by name", TWO_ALLOWS, Request { method: "POST", ..MTLS }, NoAllowMatched(&["istio-system/a-allow-sleep", "istio-system/b-allow-get"])),
    case("the matching rule's index is reported", RULE_INDEX, Request { path: "/b", ..MTLS }, Allow(Some(("istio-system/three-rules", 2)))),
    // Applicability.
    case("root-namespace ALLOW applies", ROOT_ALLOW_OK, Request { path: "/no", ..MTLS }, NoAllowMatched(&["istio-system/allow-ok"])),
    Case { workload: GATEWAY_WITH_APP, ..case("root-namespace ALLOW applies in any namespace", ROOT_ALLOW_OK, Request { path: "/no", ..MTLS }, NoAllowMatched(&["istio-system/allow-ok"])) },
    Case { workload: GATEWAY_WITH_APP, ..case("ALLOW in the workload's namespace applies", GATEWAYS_ALLOW_OK, Request { path: "/ok", ..MTLS }, Allow(Some(("gateways/allow-ok", 0)))) },
    Case { workload: GATEWAY_WITH_APP, ..case("ALLOW in another namespace does not apply", DEFAULT_ALLOW_OK, Request { path: "/no", ..MTLS }, Allow(None)) },
    case("ALLOW in a non-root namespace does not apply to istio-system", GATEWAYS_ALLOW_OK, Request { path: "/no", ..MTLS }, Allow(None)),
    case("ALLOW whose selector does not match does not apply", SELECTOR_OTHER, Request { path: "/no", ..MTLS }, Allow(None)),
    Case { workload: GATEWAY_WITH_APP, ..case("selector labels may be a subset of the workload's", SELECTOR_SUBSET, Request { path: "/no", ..MTLS }, NoAllowMatched(&["istio-system/allow-ok"])) },
    case("empty matchLabels selects every workload", SELECTOR_EMPTY, Request { path: "/no", ..MTLS }, NoAllowMatched(&["istio-system/allow-ok"])),
    // paths
    case("paths: exact", PATHS, Request { path: "/exact", ..MTLS }, Allow(Some(("istio-system/paths", 0)))),
    case("paths: exact is whole-path", PATHS, Request { path: "/exact/more", ..MTLS }, NoAllowMatched(&["istio-system/paths"])),
    case("paths: prefix", PATHS, Request { path: "/api/v1/users", ..MTLS }, Allow(Some(("istio-system/paths", 0)))),
    case("paths: prefix needs its slash", PATHS, Request { path: "/api", ..MTLS }, NoAllowMatched(&["istio-system/paths"])),
    case("paths: suffix", PATHS, Request { path: "/data/x.json", ..MTLS }, Allow(Some(("istio-system/paths", 0)))),
    case("paths: case-sensitive", PATHS, Request { path: "/EXACT", ..MTLS }, NoAllowMatched(&["istio-system/paths"])),
    case("paths: * matches any path", PATH_PRESENT, Request { path: "/", ..MTLS }, Allow(Some(("istio-system/paths", 0)))),
    // hosts
    case("hosts: exact", HOSTS, MTLS, Allow(Some(("istio-system/hosts", 0)))),
    case("hosts: case-insensitive", HOSTS, Request { host: "Test.COM", ..MTLS }, Allow(Some(("istio-system/hosts", 0)))),
    case("hosts: port-sensitive, as Istio", HOSTS, Request { host: "test.com:443", ..MTLS }, NoAllowMatched(&["istio-system/hosts"])),
    case("hosts: suffix", HOSTS, Request { host: "www.Example.com", ..MTLS }, Allow(Some(("istio-system/hosts", 0)))),
    case("hosts: prefix", HOSTS, Request { host: "api.test:8080", ..MTLS }, Allow(Some(("istio-system/hosts", 0)))),
    case("hosts: other host", HOSTS, Request { host: "example.com", ..MTLS }, NoAllowMatched(&["istio-system/hosts"])),
    // methods
    case("methods: listed", METHODS, Request { method: "HEAD", ..MTLS }, Allow(Some(("istio-system/methods", 0)))),
    case("methods: not listed", METHODS, Request { method: "POST", ..MTLS }, NoAllowMatched(&["istio-system/methods"])),
    case("methods: case-sensitive", METHODS, Request { method: "get", ..MTLS }, NoAllowMatched(&["istio-system/methods"])),
    // ports
    case("ports: listed", PORTS, MTLS, Allow(Some(("istio-system/ports", 0)))),
    case("ports: not listed", PORTS, PLAIN, NoAllowMatched(&["istio-system/ports"])),
    // principals
    case("principals: exact", PRINCIPALS, MTLS, Allow(Some(("istio-system/principals", 0)))),
    case("principals: prefix", PRINCIPALS, Request { principal: Some("cluster.local/ns/prod/sa/api"), ..MTLS }, Allow(Some(("istio-system/principals", 0)))),
    case("principals: suffix", PRINCIPALS, SLEEP, Allow(Some(("istio-system/principals", 0)))),
    case("principals: other identity", PRINCIPALS, Request { principal: Some("cluster.local/ns/dev/sa/api"), ..MTLS }, NoAllowMatched(&["istio-system/principals"])),
    case("principals: no principal never matches", PRINCIPALS, PLAIN, NoAllowMatched(&["istio-system/principals"])),
    case("principals: * needs a principal", ANY_PRINCIPAL, PLAIN, NoAllowMatched(&["istio-system/principals"])),
    case("principals: * matches any principal", ANY_PRINCIPAL, MTLS, Allow(Some(("istio-system/principals", 0)))),
    // namespaces
    case("namespaces: exact", NAMESPACES, SLEEP, Allow(Some(("istio-system/namespaces", 0)))),
    case("namespaces: prefix", NAMESPACES, Request { namespace: Some("team-a"), ..SLEEP }, Allow(Some(("istio-system/namespaces", 0)))),
    case("namespaces: no namespace never matches", NAMESPACES, MTLS, NoAllowMatched(&["istio-system/namespaces"])),
    // not* fields
    case("notPrincipals [*]: no principal is denied", DENY_NO_PRINCIPAL, PLAIN, Deny("istio-system/require-mtls", 0)),
    case("notPrincipals [*]: any principal passes", DENY_NO_PRINCIPAL, MTLS, Allow(None)),
    case("notPrincipals: listed principal passes", NOT_PRINCIPALS, MTLS, Allow(None)),
    case("notPrincipals: other principal is denied", NOT_PRINCIPALS, SLEEP, Deny("istio-system/not-principals", 0)),
    case("notPrincipals: no principal is denied", NOT_PRINCIPALS, PLAIN, Deny("istio-system/not-principals", 0)),
    case("notNamespaces: listed namespace passes", NOT_NAMESPACES, SLEEP, Allow(None)),
    case("notNamespaces: no namespace is denied", NOT_NAMESPACES, MTLS, Deny("istio-system/not-namespaces", 0)),
    case("not* operation fields: all pass", NOT_OPERATION, MTLS, Allow(None)),
    case("notHosts", NOT_OPERATION, Request { host: "evil.com", ..MTLS }, Deny("istio-system/not-hosts", 0)),
    case("notMethods", NOT_OPERATION, Request { method: "DELETE", ..MTLS }, Deny("istio-system/not-methods", 0)),
    case("notPaths", NOT_OPERATION, Request { path: "/admin", ..MTLS }, Deny("istio-system/not-paths", 0)),
    case("notPorts", NOT_OPERATION, Request { port: 8443, ..MTLS }, Deny("istio-system/not-ports", 0)),
    // ipBlocks
    case("ipBlocks: IPv4 CIDR", IP_BLOCKS, MTLS, Allow(Some(("istio-system/ip-blocks", 0)))),
    case("ipBlocks: single IPv4", IP_BLOCKS, Request { source_ip: v4(192, 168, 1, 7), ..MTLS }, Allow(Some(("istio-system/ip-blocks", 0)))),
    case("ipBlocks: IPv4 outside", IP_BLOCKS, Request { source_ip: v4(192, 168, 1, 8), ..MTLS }, NoAllowMatched(&["istio-system/ip-blocks"])),
    case("ipBlocks: IPv6 CIDR", IP_BLOCKS, Request { source_ip: V6_PEER, ..MTLS }, Allow(Some(("istio-system/ip-blocks", 0)))),
    case("ipBlocks: IPv4-mapped IPv6 peer", IP_BLOCKS, Request { source_ip: V4_MAPPED_PEER, ..MTLS }, Allow(Some(("istio-system/ip-blocks", 0)))),
    case("ipBlocks: read the direct peer, not the remote", IP_BLOCKS, Request { source_ip: v4(172, 16, 0, 1), remote_ip: v4(10, 0, 0, 1), ..MTLS }, NoAllowMatched(&["istio-system/ip-blocks"])),
    case("notIpBlocks: inside passes", NOT_IP_BLOCKS, MTLS, Allow(None)),
    case("notIpBlocks: single IPv6 passes", NOT_IP_BLOCKS, Request { source_ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)), ..MTLS }, Allow(None)),
    case("notIpBlocks: outside is denied", NOT_IP_BLOCKS, Request { source_ip: V6_PEER, ..MTLS }, Deny("istio-system/not-ip-blocks", 0)),
    case("remoteIpBlocks: read the remote address", REMOTE_IP_BLOCKS, Request { remote_ip: v4(203, 0, 113, 50), ..MTLS }, Allow(Some(("istio-system/remote-ip-blocks", 0)))),
    case("remoteIpBlocks: not the peer", REMOTE_IP_BLOCKS, Request { source_ip: v4(203, 0, 113, 50), ..MTLS }, NoAllowMatched(&["istio-system/remote-ip-blocks"])),
    case("notRemoteIpBlocks: inside passes", NOT_REMOTE_IP_BLOCKS, Request { remote_ip: v4(203, 0, 113, 50), ..MTLS }, Allow(None)),
    case("notRemoteIpBlocks: outside is denied", NOT_REMOTE_IP_BLOCKS, MTLS, Deny("istio-system/not-remote-ip-blocks", 0)),
    // Combining fields, sources and operations.
    case("source fields are ANDed: both match", COMBINED, Request { namespace: Some("prod"), path: "/upload", method: "POST", ..SLEEP }, Allow(Some(("istio-system/combined", 0)))),
    case("source fields are ANDed: one fails", COMBINED, Request { path: "/upload", method: "POST", ..SLEEP }, NoAllowMatched(&["istio-system/combined"])),
    case("sources are ORed", COMBINED, MTLS, Allow(Some(("istio-system/combined", 0)))),
    case("operation fields are ANDed", COMBINED, Request { path: "/upload", ..MTLS }, NoAllowMatched(&["istio-system/combined"])),
    case("operations are ORed", COMBINED, Request { path: "/upload", method: "POST", ..MTLS }, Allow(Some(("istio-system/combined", 0)))),
    case("from and to are ANDed", COMBINED, Request { path: "/status/200", ..PLAIN }, NoAllowMatched(&["istio-system/combined"])),
    // when
    case("when request.headers: exact", WHEN_HEADERS, Request { headers: &[("x-token", "secret")], ..MTLS }, Allow(Some(("istio-system/when-headers", 0)))),
    case("when request.headers: prefix", WHEN_HEADERS, Request { headers: &[("x-token", "pre-123")], ..MTLS }, Allow(Some(("istio-system/when-headers", 0)))),
    case("when request.headers: wrong value", WHEN_HEADERS, Request { headers: &[("x-token", "Secret")], ..MTLS }, NoAllowMatched(&["istio-system/when-headers"])),
    case("when request.headers: absent", WHEN_HEADERS, MTLS, NoAllowMatched(&["istio-system/when-headers"])),
    case("when request.headers: repeated headers are joined", WHEN_HEADERS, Request { headers: &[("x-token", "pre-1"), ("x-token", "2")], ..MTLS }, Allow(Some(("istio-system/when-headers", 0)))),
    case("when request.headers: joined value must match", WHEN_HEADERS, Request { headers: &[("x-token", "secret"), ("x-token", "2")], ..MTLS }, NoAllowMatched(&["istio-system/when-headers"])),
    case("when request.headers: * is presence", WHEN_HEADER_PRESENT, Request { headers: &[("x-token", "")], ..MTLS }, Allow(Some(("istio-system/when-headers", 0)))),
    case("when request.headers: notValues denies other values", WHEN_HEADER_NOT, Request { headers: &[("x-env", "dev")], ..MTLS }, Deny("istio-system/when-header-not", 0)),
    case("when request.headers: notValues denies an absent header", WHEN_HEADER_NOT, MTLS, Deny("istio-system/when-header-not", 0)),
    case("when request.headers: notValues passes the listed value", WHEN_HEADER_NOT, Request { headers: &[("x-env", "prod")], ..MTLS }, Allow(None)),
    case("when source.ip", WHEN_SOURCE, Request { source_ip: v4(10, 1, 9, 9), ..PLAIN }, Allow(Some(("istio-system/when-source", 0)))),
    case("when remote.ip", WHEN_SOURCE, Request { source_ip: v4(172, 16, 0, 1), remote_ip: v4(203, 0, 113, 9), ..PLAIN }, Allow(Some(("istio-system/when-source", 1)))),
    case("when source.namespace", WHEN_SOURCE, Request { source_ip: v4(172, 16, 0, 1), namespace: Some("team-b"), ..PLAIN }, Allow(Some(("istio-system/when-source", 2)))),
    case("when source.principal", WHEN_SOURCE, Request { source_ip: v4(172, 16, 0, 1), ..SLEEP }, Allow(Some(("istio-system/when-source", 3)))),
    case("when destination.port", WHEN_SOURCE, Request { source_ip: v4(172, 16, 0, 1), port: 8443, ..PLAIN }, Allow(Some(("istio-system/when-source", 4)))),
    case("when connection.sni", WHEN_SOURCE, Request { source_ip: v4(172, 16, 0, 1), sni: Some("db.internal"), ..PLAIN }, Allow(Some(("istio-system/when-source", 5)))),
    case("when: nothing matches", WHEN_SOURCE, Request { source_ip: v4(172, 16, 0, 1), ..MTLS }, NoAllowMatched(&["istio-system/when-source"])),
    case("when: every condition holds", WHEN_ALL, MTLS, Allow(Some(("istio-system/when-all", 0)))),
    case("when: conditions are ANDed", WHEN_ALL, Request { principal: Some("blocked.client"), ..MTLS }, NoAllowMatched(&["istio-system/when-all"])),
    case("when connection.sni: no SNI never matches values", WHEN_ALL, Request { sni: None, ..MTLS }, NoAllowMatched(&["istio-system/when-all"])),
    case("when notValues: source.ip outside is denied", WHEN_NOT_VALUES, Request { source_ip: v4(192, 0, 2, 1), ..SLEEP }, Deny("istio-system/when-not", 0)),
    case("when notValues: source.namespace absent is denied", WHEN_NOT_VALUES, MTLS, Deny("istio-system/when-not", 1)),
    case("when notValues: both listed pass", WHEN_NOT_VALUES, SLEEP, Allow(None)),
    // AUDIT
    Case { audited: Some(("istio-system/audit-status", 0)), ..case("AUDIT reports but does not change a deny", AUDIT_AND_DENY, AUDIT_PATHS, Deny("istio-system/test", 0)) },
    Case { audited: Some(("istio-system/audit-status", 0)), ..case("AUDIT reports but does not change an allow", AUDIT_AND_DENY, Request { principal: None, ..AUDIT_PATHS }, Allow(None)) },
    case("AUDIT that does not match reports nothing", AUDIT_AND_DENY, Request { path: "/get", ..MTLS }, Allow(None)),
    Case { audited: Some(("istio-system/audit-all", 0)), ..case("AUDIT alone is not an ALLOW policy", AUDIT_ONLY, PLAIN, Allow(None)) },
    // The rule index gives the same answers as a scan.
    case("index: exact path", INDEXED, Request { path: "/d7", ..MTLS }, Deny("istio-system/deny-many", 0)),
    case("index: exact path in a second operation", INDEXED, Request { path: "/d11", method: "POST", ..MTLS }, Deny("istio-system/deny-many", 0)),
    case("index: path indexed but operation fails", INDEXED, Request { path: "/d11", ..MTLS }, Allow(None)),
    case("index: exact principal", INDEXED, Request { principal: Some("bad8"), ..MTLS }, Deny("istio-system/deny-many", 1)),
    case("index: unindexed rule", INDEXED, Request { path: "/debug/pprof", ..MTLS }, Deny("istio-system/deny-many", 2)),
    case("index: earliest matching rule wins", INDEXED, Request { path: "/d0", principal: Some("bad0"), ..MTLS }, Deny("istio-system/deny-many", 0)),
    case("index: nothing matches", INDEXED, Request { path: "/d100", principal: Some("bad10"), ..MTLS }, Allow(None)),
];

const fn error_case(
    name: &'static str,
    policies: &'static str,
    field: &'static str,
    message: &'static [&'static str],
) -> ErrorCase {
    ErrorCase {
        name,
        policies,
        field,
        message,
    }
}

/// Configurations `compile` must reject; the first error must name `field` and say `message`.
#[rustfmt::skip]
pub const ERROR_CASES: &[ErrorCase] = &[
    error_case("CUSTOM action", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: istio-system}
spec:
  action: CUSTOM
  provider: {name: oauth2-proxy}
  rules: [{}]
"#, "spec.action", &["CUSTOM (ext_authz) is not supported"]),
    error_case("unknown action", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  action: REJECT
"#, "spec.action", &["\"REJECT\"", "ALLOW, DENY or AUDIT"]),
    error_case("actions are case-sensitive", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  action: deny
"#, "spec.action", &["\"deny\"", "ALLOW, DENY or AUDIT"]),
    error_case("provider without CUSTOM", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  provider: {name: x}
"#, "spec.provider", &["CUSTOM"]),
    error_case("unknown when key", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - when: [{key: source.user, values: [x]}]
"#, "spec.rules[0].when[0].key", &["\"source.user\"", "request.headers[<name>]", "connection.sni"]),
    error_case("JWT when key", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - when: [{key: "request.auth.claims[iss]", values: [x]}]
"#, "spec.rules[0].when[0].key", &["request.auth.claims[iss]", "JWT", "not supported"]),
    error_case("bad header name", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - when: [{key: "request.headers[x token]", values: [x]}]
"#, "spec.rules[0].when[0].key", &["\"x token\"", "header name"]),
    error_case("condition without values", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - when: [{key: source.ip}]
"#, "spec.rules[0].when[0]", &["values, notValues"]),
    error_case("bad CIDR in ipBlocks", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - from: [{source: {ipBlocks: [10.0.0.0/8, 10.0.0.0/33]}}]
"#, "spec.rules[0].from[0].source.ipBlocks[1]", &["\"10.0.0.0/33\"", "CIDR"]),
    error_case("bad IP in notRemoteIpBlocks", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {notRemoteIpBlocks: [not-an-ip]}}]
"#, "spec.rules[0].from[0].source.notRemoteIpBlocks[0]", &["\"not-an-ip\""]),
    error_case("bad IP in when source.ip", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - when: [{key: source.ip, notValues: ["fd00::/200"]}]
"#, "spec.rules[0].when[0].notValues[0]", &["\"fd00::/200\""]),
    error_case("port that is a name", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {ports: [http]}}]
"#, "spec.rules[0].to[0].operation.ports[0]", &["\"http\"", "1 to 65535"]),
    error_case("port out of range", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {notPorts: ["65536"]}}]
"#, "spec.rules[0].to[0].operation.notPorts[0]", &["\"65536\""]),
    error_case("port zero", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - when: [{key: destination.port, values: ["0"]}]
"#, "spec.rules[0].when[0].values[0]", &["\"0\""]),
    error_case("requestPrincipals", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["issuer/subject"]}}]
"#, "spec.rules[0].from[0].source.requestPrincipals", &["JWT", "not supported"]),
    error_case("notRequestPrincipals", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ["*"]}}]
"#, "spec.rules[0].from[0].source.notRequestPrincipals", &["JWT", "not supported"]),
    error_case("wildcard in the middle", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {paths: ["/api/*/users"]}}]
"#, "spec.rules[0].to[0].operation.paths[0]", &["\"/api/*/users\"", "prefix", "suffix"]),
    error_case("path template", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {notPaths: ["/api/{*}/users"]}}]
"#, "spec.rules[0].to[0].operation.notPaths[0]", &["path templates"]),
    error_case("empty value", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - from: [{source: {principals: [""]}}]
"#, "spec.rules[0].from[0].source.principals[0]", &["empty value"]),
    error_case("empty source", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - from: [{source: {}}]
"#, "spec.rules[0].from[0].source", &["at least one field"]),
    error_case("empty operation", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {}}]
"#, "spec.rules[0].to[0].operation", &["at least one field"]),
    error_case("a policy for another workload is still checked", r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: elsewhere}
spec:
  selector: {matchLabels: {app: nobody}}
  action: CUSTOM
"#, "spec.action", &["CUSTOM"]),
];
