//! Comparison cost on ~100 KB JSON answers: the work one shadow task does.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde_json::{json, Value};
use strangler::shadow::compare::{compare, Answer, CompareRules};
use strangler::shadow::fieldpath::FieldPattern;

/// A product listing of `n` items; about 210 bytes per item when compact.
fn catalogue(n: usize, request_id: &str) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "id": i,
                "sku": format!("SKU-{i:06}"),
                "name": format!("Product number {i}"),
                "price": i as f64 * 1.25 + 0.99,
                "tags": ["catalogue", "sale", format!("t{}", i % 7)],
                "stock": { "qty": i % 50, "warehouse": format!("WH-{}", i % 5) },
                "etag": format!("\"{i:x}-{request_id}\""),
                "request_id": request_id,
            })
        })
        .collect();
    json!({ "generated_at": request_id, "request_id": request_id, "items": items })
}

fn rules(order_ignored: bool) -> CompareRules {
    let ignore = ["$.generated_at", "$..request_id", "$.items[*].etag"];
    CompareRules {
        ignore_fields: ignore
            .iter()
            .map(|p| FieldPattern::parse(p).expect("bench pattern is valid"))
            .collect(),
        array_order_ignored: order_ignored,
        ..CompareRules::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let to_bytes = |v: &Value| serde_json::to_vec(v).expect("Value serialises");

    let primary_doc = catalogue(500, "req-a");
    let primary = to_bytes(&primary_doc);
    // Same content, other bytes: pretty-printed, and the ignored fields
    // differ, so the fast path for identical bytes does not apply.
    let equal = serde_json::to_vec_pretty(&catalogue(500, "req-b")).expect("Value serialises");
    let mut changed_doc = catalogue(500, "req-b");
    changed_doc["items"][400]["stock"]["qty"] = json!(999);
    let changed = to_bytes(&changed_doc);
    let mut reversed_doc = catalogue(500, "req-b");
    if let Some(items) = reversed_doc["items"].as_array_mut() {
        items.reverse();
    }
    let reversed = to_bytes(&reversed_doc);
    eprintln!(
        "primary {} bytes, equal {} bytes, changed {} bytes, reversed {} bytes",
        primary.len(),
        equal.len(),
        changed.len(),
        reversed.len()
    );

    let answer = |body| Answer {
        status: 200,
        headers: &headers,
        body,
    };
    let p = answer(&primary);
    let cases = [
        ("identical_bytes", rules(false), answer(&primary), 0),
        ("equal_reformatted", rules(false), answer(&equal), 0),
        ("one_deep_change", rules(false), answer(&changed), 1),
        ("order_ignored_reversed", rules(true), answer(&reversed), 0),
    ];
    let mut group = c.benchmark_group("compare_100kb");
    for (name, rules, candidate, expected) in &cases {
        // A bench that measures a wrong answer measures nothing.
        let got = compare(rules, &p, candidate).total_differences;
        assert_eq!(got, *expected, "{name}");
        group.bench_function(*name, |b| {
            b.iter(|| compare(black_box(rules), black_box(&p), black_box(candidate)))
        });
    }
    // Baseline: parsing both documents, which any structural compare pays.
    group.bench_function("baseline_parse_both", |b| {
        b.iter(|| {
            let p: Value = serde_json::from_slice(black_box(&primary)).expect("valid JSON");
            let c: Value = serde_json::from_slice(black_box(&changed)).expect("valid JSON");
            (p, c)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
