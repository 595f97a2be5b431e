//! The cost of metrics: recording one request through a route's
//! pre-resolved series, and encoding `/metrics` with 1,000 routes.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use strangler::metrics::{Metrics, RouteMetrics};
use strangler::routing::BackendId;

/// A route with two backends, as a split or a migration has.
fn route_metrics(metrics: &Metrics, name: &str) -> RouteMetrics {
    let backends: [(BackendId, Arc<str>); 2] = [
        (BackendId(0), "monolith".into()),
        (BackendId(1), "svc".into()),
    ];
    RouteMetrics::new(metrics, &name.into(), &backends)
}

fn bench_record(c: &mut Criterion) {
    let metrics = Metrics::new();
    let route = route_metrics(&metrics, "orders");
    let mut group = c.benchmark_group("record");
    // What a benchmark of nothing costs here: the floor of the figures below.
    group.bench_function("baseline_empty_closure", |b| b.iter(|| {}));
    // What `finish` records for every request: the request counter (method
    // and status class), the total-time histogram and the failure counter.
    group.bench_function("count_duration_failure", |b| {
        b.iter(|| {
            let series = route
                .series(black_box(BackendId(1)))
                .expect("a series per backend");
            series.count_request(black_box(&Method::GET), black_box(503));
            series.duration.observe(black_box(0.0042));
            series.failures.inc();
        })
    });
    // Everything one proxied request records: in-flight up and down, body
    // sizes, upstream and total time, request count and failure.
    group.bench_function("whole_request", |b| {
        b.iter(|| {
            route.inflight.inc();
            route.request_body.observe(black_box(512.0));
            let series = route
                .series(black_box(BackendId(1)))
                .expect("a series per backend");
            series.upstream_duration.observe(black_box(0.0038));
            series.response_body.observe(black_box(2048.0));
            series.count_request(black_box(&Method::GET), black_box(503));
            series.duration.observe(black_box(0.0042));
            series.failures.inc();
            route.inflight.dec();
        })
    });
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let metrics = Metrics::new();
    let routes: Vec<RouteMetrics> = (0..1_000)
        .map(|i| route_metrics(&metrics, &format!("route-{i}")))
        .collect();
    // One request per route and backend, so that every series a busy proxy
    // has (request counters included) is there to encode.
    for route in &routes {
        for backend in [BackendId(0), BackendId(1)] {
            let series = route.series(backend).expect("a series per backend");
            series.count_request(&Method::GET, 200);
            series.duration.observe(0.01);
        }
    }
    let text = metrics.encode();
    let body_lines = text
        .lines()
        .filter(|l| {
            l.starts_with("strangler_request_body_bytes")
                || l.starts_with("strangler_response_body_bytes")
        })
        .count();
    eprintln!(
        "/metrics with 1,000 routes: {} lines ({body_lines} of them body sizes), {} bytes",
        text.lines().count(),
        text.len()
    );
    let mut group = c.benchmark_group("encode");
    group.sample_size(20);
    group.bench_function("routes_1000", |b| {
        b.iter(|| black_box(metrics.encode().len()))
    });
    group.finish();
}

criterion_group!(benches, bench_record, bench_encode);
criterion_main!(benches);
