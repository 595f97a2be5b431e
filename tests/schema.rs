//! The JSON Schema of route files: the committed `docs/routes.schema.json`
//! is what `strangler schema` prints, it accepts every shipped route file
//! and what the parser accepts, and it rejects wrong types.

use std::path::{Path, PathBuf};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_strangler");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The committed schema, compiled into a validator.
fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo().join("docs/routes.schema.json"))
        .expect("read docs/routes.schema.json");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

/// A YAML document as the JSON value an editor validates.
fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("valid YAML")
}

/// The schema's complaints about `instance`, one line each.
fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Whether `strangler check` accepts `text` as a routes directory.
fn strangler_accepts(text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("routes.yaml"), text).expect("write a route file");
    let output = std::process::Command::new(BIN)
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("run strangler check");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(())
    } else {
        Err(printed)
    }
}

/// `docs/routes.schema.json` is exactly what `strangler schema` prints, so
/// the file editors use never drifts from the serde types.
#[test]
fn committed_schema_matches_the_schema_command() {
    let output = std::process::Command::new(BIN)
        .arg("schema")
        .output()
        .expect("run strangler schema");
    assert!(output.status.success(), "strangler schema failed");
    let printed = String::from_utf8(output.stdout).expect("UTF-8 output");
    let committed = std::fs::read_to_string(repo().join("docs/routes.schema.json"))
        .expect("read docs/routes.schema.json");
    assert!(
        printed == committed,
        "docs/routes.schema.json is stale; regenerate it with\n  \
         cargo run -- schema > docs/routes.schema.json"
    );
}

/// Every shipped route file validates, and names the schema for editors.
#[test]
fn every_shipped_route_file_validates() {
    let validator = validator();
    let routes = repo().join("routes");
    let files = strangler::config::route_file_paths(&routes).expect("list routes/");
    assert!(!files.is_empty(), "no route files in routes/");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read a route file");
        assert!(
            text.starts_with("# yaml-language-server: $schema=../docs/routes.schema.json\n"),
            "{} does not start with the yaml-language-server line",
            path.display()
        );
        let problems = errors(&validator, &yaml(&text));
        assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
    }
}

/// A file using every kind of key and value spelling validates, and
/// `strangler check` accepts it too: the schema is not stricter than `strangler`.
#[test]
fn schema_accepts_every_spelling_strangler_accepts() {
    let text = r#"
server:
  via: "1.1 strangler"
  max_body: 50MiB
  header_read_timeout: 10s
  max_header_bytes: 64 KiB
  keepalive_timeout: 1m 30s
  shutdown_grace: 30
  server_timing: true
  trusted_proxies: [10.0.0.0/8]
  tracing:
    otlp_endpoint: "http://127.0.0.1:4318/v1/traces"
    service_name: edge
    sample_ratio: 0.25
    headers: { x-api-key: secret }
    export_timeout: 10s
    batch_delay: 200ms
    max_queue: 2048
    max_batch: 512
backends:
  monolith: { url: "http://127.0.0.1:3000", timeout: 1.5s, max_idle_connections: 8 }
  orders:
    url: "http://127.0.0.1:3001"
    connect_timeout: 250ms
    circuit: { consecutive_failures: 5, open_for: 10s }
    retry_budget: { ratio: 20%, min_per_second: 10 }
    health: { path: /healthz, interval: 5s }
default: monolith
routes:
  - name: orders
    match:
      path: "/api/orders/{id}"
      methods: [GET]
      host: "*.example.com"
      headers: { x-tenant: acme, x-version: { regex: "v[23]" }, x-debug: { present: true } }
      query: { beta: "1" }
    split: { orders: 5, monolith: 95% }
    sticky: { cookie: session }
    fallback: monolith
    rewrite: { path: "/v2/orders/{id}" }
    request_headers: { add: { x-a: "1" }, set: { x-b: "2" }, remove: [x-c] }
    host_rewrite: backend
    max_body: 1048576
  - name: billing
    match: { prefix: /api/billing }
    shadow:
      backend: orders
      sample: 0.5%
      compare: { ignore: ["$.generated_at"], array_order: ignore, number_tolerance: 0.001 }
    migration:
      from: monolith
      to: orders
      stages: [shadow, 1%, 5, 25.5%, 100%]
      gate: { window: 5m, min_requests: 500, max_error_rate_increase: 0.5%,
              max_p99_ratio: 1.2, min_match_rate: 99.5%, failure_statuses: [409] }
"#;
    strangler_accepts(text).expect("strangler accepts the file");
    let problems = errors(&validator(), &yaml(text));
    assert!(problems.is_empty(), "{problems:#?}");

    let backends = "backends: { a: { url: \"http://127.0.0.1:1\" } }\ndefault: a\n";
    for timing in [
        "{ backend_name: true }",
        "{ enabled: false, backend_name: true }",
    ] {
        let text = format!("server: {{ server_timing: {timing} }}\n{backends}");
        strangler_accepts(&text).expect("strangler accepts the file");
        let problems = errors(&validator(), &yaml(&text));
        assert!(problems.is_empty(), "{timing}: {problems:#?}");
    }
}

/// Wrong types and unknown keys are rejected at (or just above) the right
/// place, and `strangler check` rejects them too.
#[test]
fn schema_rejects_wrong_types_and_unknown_keys() {
    let validator = validator();
    // A file with one backend `a` and one route `r` whose other keys are `body`.
    let route = |body: &str| {
        let head =
            "backends: { a: { url: \"http://127.0.0.1:1\" } }\ndefault: a\nroutes:\n  - name: r\n";
        format!("{head}{body}")
    };
    let top = str::to_string;
    // (what is wrong, the file, where the error belongs)
    let cases = [
        (
            "a split share that is not a percentage",
            route("    match: { prefix: / }\n    split: { a: \"lots\" }\n"),
            "/routes/0/split/a",
        ),
        (
            "a match that is a number",
            route("    match: 3\n    backend: a\n"),
            "/routes/0/match",
        ),
        (
            "a misspelt key",
            route("    match: { prefix: / }\n    bakend: a\n"),
            "/routes/0",
        ),
        (
            "a header test that is a list",
            route("    match: { headers: { x-tenant: [acme] } }\n    backend: a\n"),
            "/routes/0/match/headers/x-tenant",
        ),
        (
            "a share over 100%",
            route("    match: { prefix: / }\n    migration: { from: a, to: a, stages: [shadow, 150%] }\n"),
            "/routes/0/migration/stages/1",
        ),
        (
            "a duration without a unit",
            top("backends: { a: { url: \"http://x\", timeout: \"5 parsecs\" } }\n"),
            "/backends/a/timeout",
        ),
        (
            "a size with an unknown unit",
            top("server: { max_body: 3 parsecs }\n"),
            "/server/max_body",
        ),
        ("routes as a map", top("routes: { r: { name: r } }\n"), "/routes"),
        (
            "a misspelt server_timing option",
            top("server: { server_timing: { backend_nme: true } }\n"),
            "/server/server_timing",
        ),
        (
            "tracing without an endpoint",
            top("server: { tracing: { service_name: edge } }\n"),
            "/server/tracing",
        ),
        (
            "a route without a name",
            top("routes: [ { match: { prefix: / }, backend: a } ]\n"),
            "/routes/0",
        ),
    ];
    for (what, text, at) in cases {
        let instance = yaml(&text);
        // An error inside an optional key is reported where the `anyOf`
        // of "this type or null" sits, so an ancestor of `at` counts too.
        let placed = |problem: &String| {
            problem.split_once(':').is_some_and(|(path, _)| {
                !path.is_empty() && (at == path || at.starts_with(&format!("{path}/")))
            })
        };
        let problems = errors(&validator, &instance);
        assert!(
            problems.iter().any(placed),
            "{what}: expected an error at {at}, got {problems:#?}"
        );
        assert!(
            strangler_accepts(&text).is_err(),
            "{what}: `strangler check` accepts what the schema rejects"
        );
    }
}

/// The schema is draft 7 (what YAML editors support best) and describes
/// keys for editor hovers.
#[test]
fn schema_is_draft_7_with_descriptions() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&repo()).join("docs/routes.schema.json"))
            .expect("read the schema"),
    )
    .expect("JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["additionalProperties"], false);
    let route = &schema["definitions"]["RouteSpec"];
    assert!(route["properties"]["match"].is_object(), "{route:#}");
    assert!(
        route["properties"]["retry_non_idempotent"]["description"].is_string(),
        "{route:#}"
    );
}
