//! Reload cost with 1,000 and 10,000 routes: reading and parsing the
//! directory, compiling the snapshot, a whole `Reloader::reload`, and the
//! swap itself.
//!
//! Only the swap (one atomic store) and the `load_full` of a request touch
//! the request path; everything else runs on a blocking thread, so its cost
//! is how long an edit takes to apply, not a latency added to requests.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use strangler::config::{compile, load_dir, CompileContext};
use strangler::gate::Migrations;
use strangler::metrics::Metrics;
use strangler::reload::{ReloadOutcome, Reloader};
use strangler::routing::Snapshot;

/// Routes per file: a large table is kept in several files, one per team or area.
const ROUTES_PER_FILE: usize = 1_000;

const BACKENDS: &str = "backends:\n  monolith: { url: \"http://127.0.0.1:1\" }\n  svc: { url: \"http://127.0.0.1:2\" }\n  svc-next: { url: \"http://127.0.0.1:3\", timeout: 2s }\ndefault: monolith\n";

/// Writes `backends.yaml` and `n` routes of mixed kinds (templates,
/// prefixes, method-specific exact paths, weighted splits), 1,000 per file.
fn write_routes(dir: &Path, n: usize) {
    std::fs::write(dir.join("backends.yaml"), BACKENDS).expect("write backends.yaml");
    for (file, first) in (0..n).step_by(ROUTES_PER_FILE).enumerate() {
        let mut yaml = String::from("routes:\n");
        for i in first..(first + ROUTES_PER_FILE).min(n) {
            let rule = match i % 4 {
                0 => format!("match: {{ path: \"/api/r{i}/items/{{id}}\", methods: [GET] }}\n    backend: svc"),
                1 => format!("match: {{ prefix: \"/api/r{i}\" }}\n    backend: svc\n    fallback: monolith"),
                2 => format!("match: {{ path: \"/api/r{i}/exact\", methods: [POST] }}\n    backend: monolith"),
                _ => format!("match: {{ prefix: \"/api/r{i}\" }}\n    split: {{ svc-next: 10, svc: 90 }}\n    sticky: {{ header: x-user-id }}"),
            };
            yaml.push_str(&format!("  - name: r{i}\n    {rule}\n"));
        }
        std::fs::write(dir.join(format!("routes-{file:02}.yaml")), yaml)
            .expect("write a route file");
    }
}

/// A one-route file whose target alternates, so that each reload applies.
fn write_toggle(dir: &Path, round: usize) {
    let backend = if round % 2 == 0 { "svc" } else { "monolith" };
    let yaml = format!(
        "routes:\n  - name: toggle\n    match: {{ prefix: \"/toggle\" }}\n    backend: {backend}\n"
    );
    std::fs::write(dir.join("toggle.yaml"), yaml).expect("write toggle.yaml");
}

fn bench_reload(c: &mut Criterion) {
    // Upstream clients are built inside a runtime (their pool timer).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let mut group = c.benchmark_group("reload");
    group.sample_size(20);
    for n in [1_000usize, 10_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        write_routes(dir.path(), n);
        write_toggle(dir.path(), 0);
        let metrics = Metrics::new();
        let files = load_dir(dir.path()).expect("valid routes");
        let ctx = CompileContext {
            metrics: &metrics,
            previous: None,
            migrations: None,
        };
        let previous = compile(&files, &ctx).expect("compiles").snapshot;
        assert_eq!(previous.routes.len(), n + 1);
        // As a reload compiles: reusing the previous snapshot's upstreams.
        let ctx = CompileContext {
            metrics: &metrics,
            previous: Some(&previous),
            migrations: None,
        };

        group.bench_function(BenchmarkId::new("load_dir", n), |b| {
            b.iter(|| black_box(load_dir(dir.path()).expect("valid routes").len()))
        });
        group.bench_function(BenchmarkId::new("compile", n), |b| {
            b.iter(|| {
                black_box(
                    compile(&files, &ctx)
                        .expect("compiles")
                        .snapshot
                        .routes
                        .len(),
                )
            })
        });
        group.bench_function(BenchmarkId::new("load_and_compile", n), |b| {
            b.iter(|| {
                let files = load_dir(dir.path()).expect("valid routes");
                black_box(
                    compile(&files, &ctx)
                        .expect("compiles")
                        .snapshot
                        .routes
                        .len(),
                )
            })
        });

        // The whole reload as a trigger runs it: read, compile, diff, swap,
        // and free the old snapshot (the reloader holds the last reference).
        let migrations = Arc::new(Migrations::new(metrics.clone(), None));
        let reloader =
            Reloader::start(dir.path().to_path_buf(), metrics.clone(), migrations).expect("starts");
        let mut round = 0;
        group.bench_function(BenchmarkId::new("reloader_reload_applied", n), |b| {
            b.iter(|| {
                round += 1;
                write_toggle(dir.path(), round);
                let outcome = reloader.reload("bench");
                assert!(
                    matches!(outcome, ReloadOutcome::Applied { .. }),
                    "{outcome:?}"
                );
            })
        });

        // The swap a request can meet: one atomic store; both snapshots
        // stay referenced, so no snapshot is freed here.
        let a = Arc::new(compile(&files, &ctx).expect("compiles").snapshot);
        let b = Arc::new(compile(&files, &ctx).expect("compiles").snapshot);
        let table = ArcSwap::from(a.clone());
        let mut flip = false;
        group.bench_function(BenchmarkId::new("swap", n), |bench| {
            bench.iter(|| {
                flip = !flip;
                table.store(if flip { b.clone() } else { a.clone() });
            })
        });
        // What freeing a replaced snapshot costs: why `Reloader` keeps one
        // that requests still hold and frees it itself, off the request path.
        group.bench_function(BenchmarkId::new("free_old_snapshot", n), |bench| {
            bench.iter_batched(
                || compile(&files, &ctx).expect("compiles").snapshot,
                |snapshot: Snapshot| drop(snapshot),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_reload);
criterion_main!(benches);
