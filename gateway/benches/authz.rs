//! Scenario 6 of `cargo xtask bench`: what one AuthorizationPolicy decision costs with 1, 100
//! and 10,000 rules. The policies go the whole way a user's do: YAML on disk, `load_paths`,
//! `Authorizer::compile`, then `evaluate` for a request that matches the last rule and for one
//! that matches none. With an index the cost stays flat as rules grow; a linear scan would not.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis::config::load_paths;
use portcullis::policy::authz::{Authorizer, AuthzScope, RequestAttrs};

const RULES: [usize; 3] = [1, 100, 10_000];

fn principal(i: usize) -> String {
    format!("cluster.local/ns/bench/sa/sa-{i}")
}

fn path(i: usize) -> String {
    format!("/api/v1/resource-{i}")
}

/// One DENY policy with `n` rules: a third match on path and principal together, a third on
/// the path alone, a third on the principal alone.
fn policy_yaml(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n\
         metadata: {name: bench, namespace: istio-system}\nspec:\n  action: DENY\n  \
         selector: {matchLabels: {istio: ingressgateway}}\n  rules:\n",
    );
    for i in 0..n {
        let from = format!("from: [{{source: {{principals: [{}]}}}}]", principal(i));
        let to = format!("to: [{{operation: {{paths: [{}]}}}}]", path(i));
        match i % 3 {
            0 => y.push_str(&format!("  - {from}\n    {to}\n")),
            1 => y.push_str(&format!("  - {to}\n")),
            _ => y.push_str(&format!("  - {from}\n")),
        }
    }
    y
}

fn authorizer(n: usize) -> Authorizer {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file: PathBuf = dir.path().join("authz.yaml");
    std::fs::write(&file, policy_yaml(n)).expect("writing the generated policy");
    let resources = load_paths(&[file]).expect("the generated policy loads");
    Authorizer::compile(&resources.authorization_policies, &AuthzScope::default())
        .expect("the generated policy compiles")
}

fn attrs<'a>(principal: &'a str, path: &'a str, headers: &'a http::HeaderMap) -> RequestAttrs<'a> {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    RequestAttrs {
        principal: Some(principal),
        source_namespace: Some("bench"),
        source_ip: ip,
        remote_ip: ip,
        host: "test.com",
        port: 443,
        method: "GET",
        path,
        headers,
        sni: Some("test.com"),
    }
}

fn bench(c: &mut Criterion) {
    let headers = http::HeaderMap::new();
    let mut group = c.benchmark_group("authz");
    for n in RULES {
        let authz = authorizer(n);
        let (p, pa) = (principal(n - 1), path(n - 1));
        let hit = attrs(&p, &pa, &headers);
        assert!(!authz.evaluate(&hit).is_allowed(), "the last rule denies");
        let miss = attrs("cluster.local/ns/other/sa/other", "/elsewhere", &headers);
        assert!(authz.evaluate(&miss).is_allowed(), "no rule matches");
        group.bench_with_input(BenchmarkId::new("match", n), &hit, |b, req| {
            b.iter(|| authz.evaluate(black_box(req)))
        });
        group.bench_with_input(BenchmarkId::new("nomatch", n), &miss, |b, req| {
            b.iter(|| authz.evaluate(black_box(req)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
