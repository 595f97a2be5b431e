//! Compiling a route's `shadow` and `migration` blocks.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use super::compile::BackendTable;
use super::route::Problems;
use super::schema::{
    BusinessCheckSpec, CompareSpec, GateSpec, MigrationSpec, ShadowSpec, StageSpec,
};
use crate::gate::{
    BusinessCheck, CheckName, EvidenceSource, GateRules, LatencyTest, Migration, MigrationPlan,
    Migrations, Stage, Status,
};
use crate::routing::{MigrationTarget, StickyKey};
use crate::shadow::compare::CompareRules;
use crate::shadow::fieldpath::FieldPattern;
use crate::shadow::policy::{ShadowPolicy, DEFAULT_MAX_BODY};

pub(crate) fn compile_shadow(
    route: &str,
    spec: &ShadowSpec,
    backends: &BackendTable,
    problems: &mut Problems,
) -> Option<ShadowPolicy> {
    let backend = backends
        .resolve(&spec.backend)
        .map_err(|m| problems.at("shadow.backend", m))
        .ok();
    let secondary = spec.secondary.as_ref().and_then(|name| {
        backends
            .resolve(name)
            .map_err(|m| problems.at("shadow.secondary", m))
            .ok()
    });
    if spec.learn_noise && secondary.is_none() {
        problems.at(
            "shadow.learn_noise",
            "noise learning needs `secondary`: a second instance of the primary to compare with",
        );
    }
    let methods = match &spec.methods {
        None => ShadowPolicy::default_methods(),
        Some(list) => list
            .iter()
            .filter_map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| {
                        problems.at("shadow.methods", format!("`{m}` is not an HTTP method"))
                    })
                    .ok()
            })
            .collect(),
    };
    let path = match &spec.path {
        Some(path) if !path.starts_with('/') => {
            problems.at("shadow.path", "must start with `/`");
            None
        }
        other => other.as_deref().map(Into::into),
    };
    let rules = compare_rules(spec.compare.as_ref(), problems)?;
    Some(ShadowPolicy {
        backend: backend?,
        sample_bp: spec.sample.map_or(10_000, |p| p.basis_points()),
        salt: crate::routing::salt_of(route),
        methods,
        max_body_bytes: spec.max_body.map_or(DEFAULT_MAX_BODY, |b| b.0 as usize),
        path,
        secondary: if spec.learn_noise { secondary } else { None },
        rules: Arc::new(rules),
    })
}

fn compare_rules(spec: Option<&CompareSpec>, problems: &mut Problems) -> Option<CompareRules> {
    let mut rules = CompareRules::default();
    let Some(spec) = spec else { return Some(rules) };
    for entry in &spec.ignore {
        if let Some(header) = entry.strip_prefix("header:") {
            match HeaderName::from_bytes(header.trim().to_ascii_lowercase().as_bytes()) {
                Ok(name) => rules.ignore_headers.push(name),
                Err(_) => problems.at(
                    "shadow.compare.ignore",
                    format!("`{header}` is not a header name"),
                ),
            }
        } else {
            match FieldPattern::parse(entry) {
                Ok(pattern) => rules.ignore_fields.push(pattern),
                Err(err) => problems.at(
                    "shadow.compare.ignore",
                    format!("bad field path `{entry}`: {err}"),
                ),
            }
        }
    }
    if let Some(headers) = &spec.headers {
        rules.headers = headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
            .collect();
    }
    match spec.array_order.as_deref() {
        None | Some("strict") => {}
        Some("ignore") => rules.array_order_ignored = true,
        Some(other) => problems.at(
            "shadow.compare.array_order",
            format!("`{other}`: write `strict` or `ignore`"),
        ),
    }
    rules.number_tolerance = spec.number_tolerance.unwrap_or(0.0).abs();
    Some(rules)
}

/// Defaults in the spirit of Flagger's: evidence over minutes, three
/// passing checks to move on.
fn gate_plan(spec: &MigrationSpec, stages: Vec<Stage>, problems: &mut Problems) -> MigrationPlan {
    let gate = spec.gate.clone().unwrap_or_default();
    let source = evidence_source(&gate, problems);
    let rules = GateRules {
        min_requests: gate.min_requests.unwrap_or(100),
        max_error_rate_increase: gate.max_error_rate_increase.map_or(0.01, |p| p.0),
        max_error_rate: Some(gate.max_error_rate.map_or(0.25, |p| p.0)),
        max_p99_ratio: gate.max_p99_ratio.unwrap_or(1.5),
        max_p50_ratio: gate.max_p50_ratio,
        min_match_rate: gate.min_match_rate.map_or(0.99, |p| p.0),
        confidence: gate.confidence.map_or(0.95, |p| p.0),
        promote_after: gate.promote_after.unwrap_or(3),
        // Fleet mode reads quantiles, not samples: no rank test is possible.
        latency_test: match source {
            EvidenceSource::Local => LatencyTest::MannWhitney,
            EvidenceSource::Prometheus => LatencyTest::QuantileRatio,
        },
    };
    if let Err(err) = rules.validate() {
        problems.at("migration.gate", err.to_string());
    }
    let business_checks = business_checks(&gate.checks, problems);
    let window = gate.window.map_or(Duration::from_secs(300), |d| d.0);
    if window < Duration::from_millis(100) {
        problems.at("migration.gate.window", "must be at least 100ms");
    }
    MigrationPlan {
        from: spec.from.clone(),
        to: spec.to.clone(),
        stages,
        rules,
        window,
        interval: gate.interval.map_or(Duration::from_secs(30), |d| d.0),
        failure_statuses: gate.failure_statuses,
        webhook: gate.webhook,
        source,
        business_checks,
        prometheus_url: gate.prometheus_url,
    }
}

/// `gate.source`, and the `prometheus_url` that fleet mode and business
/// checks need.
fn evidence_source(gate: &GateSpec, problems: &mut Problems) -> EvidenceSource {
    let source = match gate.source.as_deref() {
        None | Some("local") => EvidenceSource::Local,
        Some("prometheus") => EvidenceSource::Prometheus,
        Some(other) => {
            problems.at(
                "migration.gate.source",
                format!("`{other}`: write `local` (this replica's windows) or `prometheus` (fleet mode)"),
            );
            EvidenceSource::Local
        }
    };
    match &gate.prometheus_url {
        Some(url) => {
            if let Err(message) = crate::gate::prometheus::check_url(url) {
                problems.at("migration.gate.prometheus_url", message);
            }
        }
        None if source == EvidenceSource::Prometheus => problems.at(
            "migration.gate.source",
            "fleet mode needs `prometheus_url`, the server that scrapes every replica",
        ),
        None if !gate.checks.is_empty() => problems.at(
            "migration.gate.checks",
            "business checks need `prometheus_url`, the server to ask",
        ),
        None => {}
    }
    source
}

/// `gate.checks`: unique names that are not built-in check names, a
/// query, and at least one finite bound, `min` not above `max`.
fn business_checks(specs: &[BusinessCheckSpec], problems: &mut Problems) -> Vec<BusinessCheck> {
    let mut checks: Vec<BusinessCheck> = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let at = |key: &str| format!("migration.gate.checks[{index}].{key}");
        let name = spec.name.trim();
        let mut is_valid = true;
        if name.is_empty() {
            problems.at(&at("name"), "a check needs a name");
            is_valid = false;
        } else if CheckName::BUILT_IN.contains(&name) {
            problems.at(
                &at("name"),
                format!("`{name}` is the name of a built-in check; choose another"),
            );
            is_valid = false;
        } else if checks.iter().any(|c| &*c.name == name) {
            problems.at(&at("name"), format!("two checks are named `{name}`"));
            is_valid = false;
        }
        if spec.query.trim().is_empty() {
            problems.at(&at("query"), "a check needs a PromQL query");
            is_valid = false;
        }
        for (key, bound) in [("min", spec.min), ("max", spec.max)] {
            if bound.is_some_and(|b| !b.is_finite()) {
                problems.at(&at(key), "must be a finite number");
                is_valid = false;
            }
        }
        match (spec.min, spec.max) {
            (None, None) => {
                problems.at(
                    &format!("migration.gate.checks[{index}]"),
                    "set `min`, `max` or both: the bounds the value must stay within",
                );
                is_valid = false;
            }
            (Some(min), Some(max)) if min > max => {
                problems.at(&at("min"), format!("`min` {min} is above `max` {max}"));
                is_valid = false;
            }
            _ => {}
        }
        if is_valid {
            checks.push(BusinessCheck {
                name: name.into(),
                query: spec.query.clone(),
                min: spec.min,
                max: spec.max,
            });
        }
    }
    checks
}

fn stages(spec: &MigrationSpec, problems: &mut Problems) -> Vec<Stage> {
    let mut stages = Vec::new();
    for stage in &spec.stages {
        let stage = match stage {
            StageSpec::Named(name) if name == "shadow" => Stage::Shadow,
            StageSpec::Named(name) => match name.trim_end_matches('%').trim().parse::<f64>() {
                Ok(value) if (0.0..=100.0).contains(&value) => {
                    Stage::Share((value * 100.0).round() as u32)
                }
                _ => {
                    problems.at(
                        "migration.stages",
                        format!("`{name}`: a stage is `shadow` or a share such as `5%`"),
                    );
                    continue;
                }
            },
            StageSpec::Share(percent) => Stage::Share(percent.basis_points()),
        };
        if stages
            .last()
            .is_some_and(|last: &Stage| last.weight_bp() > stage.weight_bp())
        {
            problems.at("migration.stages", "stages must not decrease");
        }
        stages.push(stage);
    }
    if stages.is_empty() {
        problems.at(
            "migration.stages",
            "list at least one stage, e.g. [shadow, 5%, 50%, 100%]",
        );
    }
    stages
}

/// The target, the shared migration state, and the mirror used in the
/// shadow stage.
pub(crate) fn compile_migration(
    spec: &MigrationSpec,
    route: &str,
    sticky: Option<StickyKey>,
    backends: &BackendTable,
    migrations: Option<&Migrations>,
    problems: &mut Problems,
) -> Option<(MigrationTarget, Arc<Migration>, MigrationPlan, ShadowPolicy)> {
    let from = backends
        .resolve(&spec.from)
        .map_err(|m| problems.at("migration.from", m))
        .ok();
    let to = backends
        .resolve(&spec.to)
        .map_err(|m| problems.at("migration.to", m))
        .ok();
    let stages = stages(spec, problems);
    let plan = gate_plan(spec, stages, problems);
    let (from, to) = (from?, to?);
    let migration = match migrations {
        Some(registry) => registry.register(route, plan.clone()),
        None => Arc::new(Migration::new(
            route.into(),
            plan.clone(),
            0,
            Status::Running,
        )),
    };
    let shadow = ShadowPolicy {
        backend: to,
        sample_bp: 10_000,
        salt: crate::routing::salt_of(route),
        methods: ShadowPolicy::default_methods(),
        max_body_bytes: DEFAULT_MAX_BODY,
        path: None,
        secondary: None,
        rules: Arc::new(CompareRules::default()),
    };
    let target = MigrationTarget {
        from,
        to,
        cell: migration.cell.clone(),
        sticky,
        salt: crate::routing::salt_of(route),
    };
    Some((target, migration, plan, shadow))
}
