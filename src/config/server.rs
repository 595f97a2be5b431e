//! Compiling `server:` (listener limits, `trusted_proxies`, TLS
//! certificates, `tracing`) and backends' `tls:` into their checked forms.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderValue, Uri};

use super::error::ConfigError;
use super::load::SourceFile;
use super::schema::{ServerSpec, ServerTimingSpec, TracingSpec, UpstreamTlsSpec};
use crate::proxy::TrustedProxies;
use crate::server::{ConnLimits, ServerSettings, ShadowSettings, MIN_HEADER_BYTES};
use crate::telemetry::OtlpSettings;
use crate::tls::{CertField, CertificateFiles, Certificates};
use crate::upstream::{UpstreamTls, UpstreamTlsField, UpstreamTlsFiles};

pub(crate) fn compile_server(
    files: &[&SourceFile],
    errors: &mut Vec<ConfigError>,
) -> ServerSettings {
    let mut found: Option<(&SourceFile, &ServerSpec)> = None;
    for file in files {
        if let Some(spec) = &file.content.server {
            if let Some((first, _)) = found {
                errors.push(file.error_at(
                    "server",
                    format!("`server` is also defined in {}", first.display),
                ));
            } else {
                found = Some((file, spec));
            }
        }
    }
    let mut settings = ServerSettings::default();
    let Some((file, spec)) = found else {
        return settings;
    };
    if let Some(via) = &spec.via {
        match HeaderValue::from_str(via) {
            Ok(value) => settings.via = Some(value),
            Err(_) => errors.push(file.error_at("server.via", "`via` is not a valid header value")),
        }
    }
    settings.max_body_bytes = spec.max_body.map(|b| b.0);
    match &spec.server_timing {
        Some(ServerTimingSpec::Enabled(on)) => settings.has_server_timing = *on,
        Some(ServerTimingSpec::Options(options)) => {
            settings.has_server_timing = options.enabled.unwrap_or(true);
            settings.has_server_timing_backend = options.backend_name;
        }
        None => {}
    }
    settings.tracing = spec
        .tracing
        .as_ref()
        .and_then(|tracing| compile_tracing(file, tracing, errors));
    if let Some(shadow) = &spec.shadow {
        let defaults = &settings.shadow;
        let queue = shadow.queue.unwrap_or(defaults.queue);
        let concurrency = shadow.concurrency.unwrap_or(defaults.concurrency);
        if queue == 0 || concurrency == 0 {
            errors.push(file.error_at(
                "server.shadow",
                "`queue` and `concurrency` must be at least 1",
            ));
        }
        let nice = shadow.nice.unwrap_or(defaults.nice);
        let diff_log = shadow.diff_log.as_ref().map(|path| {
            let path = std::path::Path::new(path);
            match (path.is_relative(), file.path.parent()) {
                (true, Some(dir)) => dir.join(path),
                _ => path.to_path_buf(),
            }
        });
        settings.shadow = ShadowSettings {
            queue: queue.max(1),
            concurrency: concurrency.max(1),
            diff_log,
            nice,
        };
    }
    if let Some(grace) = spec.shutdown_grace {
        settings.shutdown_grace = grace.0;
    }
    settings.limits = compile_limits(file, spec, errors);
    match TrustedProxies::parse(spec.trusted_proxies.iter().map(String::as_str)) {
        Ok(trusted) => settings.trusted_proxies = trusted,
        Err(err) => {
            let index = spec
                .trusted_proxies
                .iter()
                .position(|e| e.trim() == err.0)
                .unwrap_or(0);
            errors
                .push(file.error_at(&format!("server.trusted_proxies[{index}]"), err.to_string()));
        }
    }
    if let Some(tls) = &spec.tls {
        match tls.check_interval.map(|d| d.0) {
            Some(interval) if interval.is_zero() => errors.push(file.error_at(
                "server.tls.check_interval",
                "`check_interval` must be longer than 0",
            )),
            Some(interval) => settings.tls_check_interval = interval,
            None => {}
        }
        let entries: Vec<CertificateFiles> = tls
            .certificates
            .iter()
            .map(|c| CertificateFiles {
                cert: relative_to(file, &c.cert),
                key: relative_to(file, &c.key),
                sni: c.sni.clone(),
            })
            .collect();
        if entries.is_empty() {
            errors.push(file.error_at(
                "server.tls.certificates",
                "`certificates` needs at least one `{ cert, key }`",
            ));
        }
        match Certificates::load(&entries) {
            Ok(certificates) if !entries.is_empty() => settings.tls = Some(Arc::new(certificates)),
            Ok(_) => {}
            Err((index, field, err)) => {
                let field = match field {
                    CertField::Cert => "cert",
                    CertField::Key => "key",
                    CertField::Sni => "sni",
                };
                errors.push(file.error_at(
                    &format!("server.tls.certificates[{index}].{field}"),
                    err.to_string(),
                ));
            }
        }
    }
    settings
}

fn compile_limits(
    file: &SourceFile,
    spec: &ServerSpec,
    errors: &mut Vec<ConfigError>,
) -> ConnLimits {
    let mut limits = ConnLimits::default();
    let mut duration = |key: &str, value: Option<Duration>, slot: &mut Duration| match value {
        Some(d) if d.is_zero() => errors.push(file.error_at(
            &format!("server.{key}"),
            format!("`{key}` must be longer than 0"),
        )),
        Some(d) => *slot = d,
        None => {}
    };
    duration(
        "header_read_timeout",
        spec.header_read_timeout.map(|d| d.0),
        &mut limits.header_read_timeout,
    );
    duration(
        "keepalive_timeout",
        spec.keepalive_timeout.map(|d| d.0),
        &mut limits.keepalive_timeout,
    );
    if let Some(bytes) = spec.max_header_bytes {
        match usize::try_from(bytes.0) {
            Ok(n) if n >= MIN_HEADER_BYTES => limits.max_header_bytes = n,
            _ => errors.push(file.error_at(
                "server.max_header_bytes",
                format!("`max_header_bytes` must be at least {MIN_HEADER_BYTES} (8KiB)"),
            )),
        }
    }
    let mut count = |key: &str, value: Option<usize>, slot: &mut usize| match value {
        Some(0) => errors.push(file.error_at(
            &format!("server.{key}"),
            format!("`{key}` must be at least 1"),
        )),
        Some(n) => *slot = n,
        None => {}
    };
    count("max_headers", spec.max_headers, &mut limits.max_headers);
    count(
        "max_connections",
        spec.max_connections,
        &mut limits.max_connections,
    );
    match spec.h2_max_concurrent_streams {
        Some(0) => errors.push(file.error_at(
            "server.h2_max_concurrent_streams",
            "`h2_max_concurrent_streams` must be at least 1",
        )),
        Some(n) => limits.h2_max_concurrent_streams = n,
        None => {}
    }
    limits
}

/// `server.tracing` checked: an absolute `http(s)` endpoint, a ratio in
/// 0..=1, valid header names and values, non-zero durations and sizes.
fn compile_tracing(
    file: &SourceFile,
    spec: &TracingSpec,
    errors: &mut Vec<ConfigError>,
) -> Option<OtlpSettings> {
    let before = errors.len();
    let mut error = |key: &str, message: String| {
        errors.push(file.error_at(&format!("server.tracing.{key}"), message));
    };
    let endpoint = match spec.otlp_endpoint.parse::<Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            Some(uri)
        }
        _ => {
            error(
                "otlp_endpoint",
                "`otlp_endpoint` must be an http:// or https:// URL, e.g. \
                 `http://127.0.0.1:4318/v1/traces`"
                    .to_string(),
            );
            None
        }
    };
    let mut settings = OtlpSettings::new(endpoint.unwrap_or_default());
    if let Some(name) = &spec.service_name {
        if name.is_empty() {
            error(
                "service_name",
                "`service_name` must not be empty".to_string(),
            );
        }
        settings.service_name = name.clone();
    }
    if let Some(ratio) = spec.sample_ratio {
        if !(0.0..=1.0).contains(&ratio) {
            error(
                "sample_ratio",
                format!("`sample_ratio` must be between 0 and 1, not {ratio}"),
            );
        }
        settings.sample_ratio = ratio;
    }
    for (name, value) in &spec.headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            error(
                &format!("headers.{name}"),
                format!("`{name}` is not a valid header name"),
            );
        } else if HeaderValue::from_str(value).is_err() {
            error(
                &format!("headers.{name}"),
                format!("the value of `{name}` is not a valid header value"),
            );
        }
        settings.headers.push((name.clone(), value.clone()));
    }
    let durations = [
        (
            "export_timeout",
            spec.export_timeout,
            &mut settings.export_timeout,
        ),
        ("batch_delay", spec.batch_delay, &mut settings.batch_delay),
    ];
    for (key, value, slot) in durations {
        match value {
            Some(d) if d.0.is_zero() => error(key, format!("`{key}` must be longer than 0")),
            Some(d) => *slot = d.0,
            None => {}
        }
    }
    let sizes = [
        ("max_queue", spec.max_queue, &mut settings.max_queue),
        ("max_batch", spec.max_batch, &mut settings.max_batch),
    ];
    for (key, value, slot) in sizes {
        match value {
            Some(0) => error(key, format!("`{key}` must be at least 1")),
            Some(n) => *slot = n,
            None => {}
        }
    }
    (errors.len() == before).then_some(settings)
}

/// A path from a route file: relative ones start at the file's directory.
fn relative_to(file: &SourceFile, path: &str) -> PathBuf {
    let path = Path::new(path);
    match file.path.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// A backend's `tls:` loaded, or an error at the key that is wrong.
pub(crate) fn compile_upstream_tls(
    file: &SourceFile,
    backend_key: &str,
    spec: &UpstreamTlsSpec,
) -> Result<Arc<UpstreamTls>, ConfigError> {
    let files = UpstreamTlsFiles {
        ca: spec.ca.as_deref().map(|p| relative_to(file, p)),
        cert: spec.cert.as_deref().map(|p| relative_to(file, p)),
        key: spec.key.as_deref().map(|p| relative_to(file, p)),
        server_name: spec.server_name.clone(),
        insecure_skip_verify: spec.insecure_skip_verify,
    };
    UpstreamTls::load(files)
        .map(Arc::new)
        .map_err(|(field, err)| {
            let field = match field {
                UpstreamTlsField::Ca => "ca",
                UpstreamTlsField::Cert => "cert",
                UpstreamTlsField::Key => "key",
                UpstreamTlsField::ServerName => "server_name",
            };
            file.error_at(&format!("{backend_key}.tls.{field}"), err.to_string())
        })
}
