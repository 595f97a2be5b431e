//! Route matching cost with 10, 1,000 and 10,000 routes in the table.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use strangler::config::{compile, load_dir, CompileContext};
use strangler::metrics::Metrics;
use strangler::routing::RequestView;

/// A routes file with `n` routes of mixed kinds: templates, prefixes and
/// method-specific exact paths, as a large monolith's table would have.
fn routes_yaml(n: usize) -> String {
    let mut yaml = String::from("backends:\n  monolith: { url: \"http://127.0.0.1:1\" }\n  svc: { url: \"http://127.0.0.1:2\" }\ndefault: monolith\nroutes:\n");
    for i in 0..n {
        let rule = match i % 3 {
            0 => format!("{{ path: \"/api/r{i}/items/{{id}}\", methods: [GET] }}"),
            1 => format!("{{ prefix: \"/api/r{i}\" }}"),
            _ => format!("{{ path: \"/api/r{i}/exact\", methods: [POST] }}"),
        };
        yaml.push_str(&format!(
            "  - name: r{i}\n    match: {rule}\n    backend: svc\n"
        ));
    }
    yaml
}

fn bench_matching(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let mut group = c.benchmark_group("select");
    for n in [10usize, 1_000, 10_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("routes.yaml"), routes_yaml(n)).expect("write routes");
        let files = load_dir(dir.path()).expect("valid routes");
        let metrics = Metrics::new();
        let snapshot = compile(
            &files,
            &CompileContext {
                metrics: &metrics,
                previous: None,
                migrations: None,
            },
        )
        .expect("compiles")
        .snapshot;
        let headers = HeaderMap::new();
        // Hit a template route near the end of the table, and a miss.
        let hit_path = format!("/api/r{}/items/42", (n - 1) / 3 * 3);
        for (label, path) in [
            ("template_hit", hit_path.as_str()),
            ("miss", "/nothing/here"),
        ] {
            group.bench_with_input(BenchmarkId::new(label, n), &path, |b, path| {
                b.iter(|| {
                    let view = RequestView {
                        method: &Method::GET,
                        path,
                        query: None,
                        host: None,
                        headers: &headers,
                        client_ip: Ipv4Addr::LOCALHOST.into(),
                    };
                    black_box(snapshot.select(&view).route.name.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_matching);
criterion_main!(benches);
