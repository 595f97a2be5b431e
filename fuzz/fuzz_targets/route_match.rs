//! Route selection on arbitrary requests against a fixed, overlapping route
//! table (`fuzz/route_table.yaml`). Input layout: one flags byte (method,
//! `x-beta` header, host), then the path, with an optional `?query`.
//!
//! `Snapshot::select` finds routes through an index (hash maps, a radix
//! tree, segment prefixes); `explain` lists the routes whose path fits by a
//! plain scan, most specific first. Invariant: the route `select` picks is
//! the first one `explain` lists without a rejection, or `default` when
//! every listed route was rejected. Also: never panics.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use strangler::config::{compile_text, CompileContext, Compiled};
use strangler::metrics::Metrics;
use strangler::proxy::path::normalize;
use strangler::routing::{explain, RequestView, DEFAULT_ROUTE};

const TABLE: &str = include_str!("../route_table.yaml");
const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::DELETE, Method::OPTIONS];
const HOSTS: [Option<&str>; 4] = [
    None,
    Some("example.com"),
    Some("admin.example.com"),
    Some("ADMIN.Example.COM"),
];

fn table() -> &'static Compiled {
    static TABLE_SNAPSHOT: OnceLock<Compiled> = OnceLock::new();
    TABLE_SNAPSHOT.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        let _guard = runtime.enter();
        let metrics = Metrics::new();
        let ctx = CompileContext {
            metrics: &metrics,
            previous: None,
            migrations: None,
        };
        compile_text("route_table.yaml", TABLE, &ctx)
            .unwrap_or_else(|errors| panic!("the fixed route table compiles:\n{errors}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let (raw_path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let mut headers = HeaderMap::new();
    if flags & 4 != 0 {
        headers.insert("x-beta", HeaderValue::from_static("1"));
    }
    let snapshot = &table().snapshot;
    // The proxy routes the normal form; select on the raw text as well,
    // which must not panic either.
    let normal = normalize(raw_path).ok();
    for path in [Some(raw_path), normal.as_deref()].into_iter().flatten() {
        let req = RequestView {
            method: &METHODS[usize::from(flags & 3)],
            path,
            query,
            host: HOSTS[usize::from(flags >> 3 & 3)],
            headers: &headers,
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let explanation = explain(snapshot, &req);
        let chosen = &explanation.decision.route.name;
        let expected = explanation
            .considered
            .iter()
            .find(|(_, rejection)| rejection.is_none())
            .map_or(DEFAULT_ROUTE, |(route, _)| &*route.name);
        assert_eq!(
            &**chosen, expected,
            "select and explain disagree on {path:?}:\n{explanation}"
        );
        let _ = explanation.to_string();
    }
});
