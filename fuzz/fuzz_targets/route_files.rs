//! Arbitrary bytes as one route file: `config::compile_text` must answer
//! with a snapshot or with positioned errors, never panic or hang, and a
//! snapshot it builds must route any request without panicking.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use strangler::config::{compile_text, CompileContext};
use strangler::metrics::Metrics;
use strangler::routing::RequestView;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A runtime per input, dropped at the end: compiling spawns health-check
    // tasks, and a runtime kept across inputs would accumulate them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let _guard = runtime.enter();
    // Fresh metrics too: route names are label values, and a shared
    // registry would grow with every input.
    let metrics = Metrics::new();
    let ctx = CompileContext {
        metrics: &metrics,
        previous: None,
        migrations: None,
    };
    match compile_text("fuzz.yaml", text, &ctx) {
        Ok(compiled) => {
            let headers = HeaderMap::new();
            for path in ["/", "/api", "/api/orders/7", "/static/a/b.css"] {
                let req = RequestView {
                    method: &Method::GET,
                    path,
                    query: Some("a=1"),
                    host: Some("example.com"),
                    headers: &headers,
                    client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                };
                let explanation = strangler::routing::explain(&compiled.snapshot, &req);
                let _ = explanation.to_string();
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a failed compile reports why");
            // YAML breaks lines at `\r` as well as `\n`; this bound counts both.
            let lines = text.bytes().filter(|b| matches!(b, b'\n' | b'\r')).count() + 1;
            for error in &errors.0 {
                // An error points into the file, or at no line (0) when it
                // concerns the file as a whole. The YAML parser puts an
                // error at the end of the stream on the line after the last.
                assert!(
                    error.line <= lines + 1,
                    "error at line {} of a {lines}-line file: {error}",
                    error.line
                );
                let _ = error.to_string();
            }
        }
    }
});
