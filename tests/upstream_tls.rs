//! TLS to `https://` backends, end to end over loopback: a custom CA,
//! a client certificate for a backend that requires one (mTLS), and the
//! server name override for a certificate that does not name the URL's host.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::path::Path;

use support::*;
use tls_support::*;

/// The route file: `monolith` as default, then one route per backend
/// `(name, url, tls)`, matching the prefix `/NAME`; `tls` is the flow
/// mapping of the backend's `tls:` key, or empty for none.
fn routes(monolith: &FakeBackend, backends: &[(&str, &str, String)]) -> String {
    let mut yaml = format!("backends:\n  monolith: {{ url: \"{}\" }}\n", monolith.url());
    for (name, url, tls) in backends {
        yaml.push_str(&format!("  {name}:\n    url: \"{url}\"\n"));
        if !tls.is_empty() {
            yaml.push_str(&format!("    tls: {tls}\n"));
        }
    }
    yaml.push_str("default: monolith\nroutes:\n");
    for (name, _, _) in backends {
        yaml.push_str(&format!(
            "  - name: {name}\n    match: {{ prefix: /{name} }}\n    backend: {name}\n"
        ));
    }
    yaml
}

/// `GET path`, failing the test if no answer comes within `PATIENCE`:
/// a refused handshake must be answered, never leave the client hanging.
async fn get(proxy: &TestProxy, path: &str) -> Reply {
    tokio::time::timeout(PATIENCE, proxy.get(path))
        .await
        .unwrap_or_else(|_| panic!("GET {path} got no answer: the client hangs"))
}

fn ca_file(ca: &Ca, dir: &Path) -> String {
    let path = dir.join("ca.pem");
    ca.write(&path);
    path.display().to_string()
}

/// An `https://` backend is reached with a custom CA and a server name
/// override; without that CA the proxy refuses the backend's certificate
/// and answers `upstream_tls`.
#[tokio::test]
async fn https_backends_are_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let (cert, key, _) = ca.issue(dir.path(), "backend.test");
    let ca_path = ca_file(&ca, dir.path());
    let backend = TlsBackend::start(&cert, &key, None).await;
    let monolith = FakeBackend::start("monolith").await;
    let proxy = TestProxy::start(&routes(
        &monolith,
        &[
            (
                "secure",
                &backend.url(),
                format!("{{ ca: {ca_path}, server_name: backend.test }}"),
            ),
            ("unverified", &backend.url(), String::new()),
        ],
    ))
    .await;
    let reply = get(&proxy, "/secure").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "secure");
    let refused = get(&proxy, "/unverified").await;
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_eq!(refused.json()["error"], "upstream_tls");
}

/// A backend that requires a client certificate signed by its CA gets
/// the one configured in the route file, and sees its subject.
#[tokio::test]
async fn mtls_backend_sees_the_configured_client_certificate() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let (cert, key, _) = ca.issue(dir.path(), "backend.test");
    let client = ca.issue_client(dir.path(), "strangler-proxy");
    let ca_path = ca_file(&ca, dir.path());
    let backend = TlsBackend::start(&cert, &key, Some(&ca)).await;
    let monolith = FakeBackend::start("monolith").await;
    let tls = format!(
        "{{ ca: {ca_path}, cert: {}, key: {}, server_name: backend.test }}",
        client.cert.display(),
        client.key.display()
    );
    let proxy = TestProxy::start(&routes(&monolith, &[("billing", &backend.url(), tls)])).await;

    let reply = get(&proxy, "/billing/invoices").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "secure");
    assert_eq!(backend.requests(), 1);
    let seen = backend
        .last_client_cert()
        .expect("the backend saw a client certificate");
    assert_eq!(seen, client.der);
    assert_eq!(
        subject_common_name(&seen).as_deref(),
        Some("strangler-proxy")
    );
    assert_eq!(backend.last_server_name().as_deref(), Some("backend.test"));
}

/// Without a client certificate, or with one the backend's CA did not
/// sign, the backend refuses the handshake: the client gets the proxy's
/// `502 upstream_tls` at once, and the backend serves nothing.
#[tokio::test]
async fn mtls_backend_without_an_accepted_client_certificate_is_502_upstream_tls() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let stranger = Ca::new();
    let (cert, key, _) = ca.issue(dir.path(), "backend.test");
    let foreign = stranger.issue_client(dir.path(), "someone-else");
    let ca_path = ca_file(&ca, dir.path());
    let backend = TlsBackend::start(&cert, &key, Some(&ca)).await;
    let monolith = FakeBackend::start("monolith").await;
    let proxy = TestProxy::start(&routes(
        &monolith,
        &[
            (
                "anonymous",
                &backend.url(),
                format!("{{ ca: {ca_path}, server_name: backend.test }}"),
            ),
            (
                "foreign",
                &backend.url(),
                format!(
                    "{{ ca: {ca_path}, cert: {}, key: {}, server_name: backend.test }}",
                    foreign.cert.display(),
                    foreign.key.display()
                ),
            ),
        ],
    ))
    .await;

    for path in ["/anonymous", "/foreign"] {
        let reply = get(&proxy, path).await;
        assert_eq!(reply.status, 502, "{path}: {}", reply.text());
        let body = reply.json();
        assert_eq!(body["error"], "upstream_tls", "{path}: {body}");
        assert_eq!(body["route"], &path[1..], "{path}: {body}");
        assert!(
            body["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{path}: {body}"
        );
    }
    assert_eq!(backend.requests(), 0);
    assert!(backend.failed_handshakes() >= 2);
    let metrics = HttpClient::http1(proxy.admin_addr).get("/metrics").await;
    let counted = |route: &str| {
        metrics.text().lines().any(|line| {
            line.starts_with("strangler_upstream_errors_total{")
                && line.contains(r#"kind="tls""#)
                && line.contains(&format!(r#"route="{route}""#))
        })
    };
    assert!(
        counted("anonymous") && counted("foreign"),
        "{}",
        metrics.text()
    );
    // The monolith is unaffected.
    assert_eq!(get(&proxy, "/").await.text(), "monolith");
}

/// A backend certificate that names another host than the URL's is
/// refused, unless `server_name` names the certificate's host: then that
/// name is sent as SNI and verified.
#[tokio::test]
async fn a_certificate_for_another_name_needs_the_server_name_override() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let (cert, key, _) = ca.issue(dir.path(), "backend.test");
    let client = ca.issue_client(dir.path(), "strangler-proxy");
    let ca_path = ca_file(&ca, dir.path());
    let backend = TlsBackend::start(&cert, &key, Some(&ca)).await;
    let monolith = FakeBackend::start("monolith").await;
    let tls = |server_name: &str| {
        format!(
            "{{ ca: {ca_path}, cert: {}, key: {}{server_name} }}",
            client.cert.display(),
            client.key.display()
        )
    };
    // The URL names 127.0.0.1 (or `localhost`); the certificate names
    // only backend.test.
    let by_name = format!("https://localhost:{}", backend.addr.port());
    let proxy = TestProxy::start(&routes(
        &monolith,
        &[
            ("address", &backend.url(), tls("")),
            ("hostname", &by_name, tls("")),
            ("wrong", &backend.url(), tls(", server_name: other.test")),
            (
                "overridden",
                &backend.url(),
                tls(", server_name: backend.test"),
            ),
        ],
    ))
    .await;

    for path in ["/address", "/hostname", "/wrong"] {
        let reply = get(&proxy, path).await;
        assert_eq!(reply.status, 502, "{path}: {}", reply.text());
        assert_eq!(reply.json()["error"], "upstream_tls", "{path}");
    }
    assert_eq!(backend.requests(), 0);
    let reply = get(&proxy, "/overridden").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "secure");
    assert_eq!(backend.requests(), 1);
    assert_eq!(backend.last_server_name().as_deref(), Some("backend.test"));
}

/// An `https://` URL whose host no certificate can name (`a..b` is a valid
/// URL host, not a DNS name) is refused as `upstream_tls` before any
/// connection is tried (the proxy's log says to set `tls.server_name`).
#[tokio::test]
async fn a_host_no_certificate_can_name_is_502_upstream_tls() {
    let monolith = FakeBackend::start("monolith").await;
    let proxy = TestProxy::start(&routes(
        &monolith,
        &[("odd", "https://a..b:8443", String::new())],
    ))
    .await;

    let reply = get(&proxy, "/odd").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["error"], "upstream_tls");
}

/// `strangler check` puts a bad client certificate setting at its own
/// key: half a pair, a certificate file that is no PEM, a key that does
/// not match its certificate.
#[tokio::test]
async fn client_certificate_errors_point_at_their_key() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let client = ca.issue_client(dir.path(), "strangler-proxy");
    let other = ca.issue_client(dir.path(), "someone-else");
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "not a certificate").expect("write junk");
    // Line 6 holds `cert` (its value at column 13), line 7 `key` (column 12).
    let check = |tls_lines: &str| {
        let yaml = format!(
            "backends:\n  monolith: {{ url: \"http://127.0.0.1:1\" }}\n  billing:\n    url: \"https://127.0.0.1:2\"\n    tls:\n{tls_lines}default: monolith\n"
        );
        refusal(&yaml)
    };
    let (cert, key) = (client.cert.display(), client.key.display());

    let no_key = check(&format!("      cert: {cert}\n"));
    assert!(
        no_key.contains(":6:13: `cert` is set without `key`"),
        "{no_key}"
    );
    let no_cert = check(&format!("      server_name: b.test\n      key: {key}\n"));
    assert!(
        no_cert.contains(":7:12: `key` is set without `cert`"),
        "{no_cert}"
    );
    let not_pem = check(&format!(
        "      cert: {}\n      key: {key}\n",
        junk.display()
    ));
    assert!(
        not_pem.contains(":6:13:") && not_pem.contains("holds no PEM certificate"),
        "{not_pem}"
    );
    let mismatched = check(&format!(
        "      cert: {cert}\n      key: {}\n",
        other.key.display()
    ));
    assert!(
        mismatched.contains(":7:12: the key in") && mismatched.contains("does not match"),
        "{mismatched}"
    );
}
