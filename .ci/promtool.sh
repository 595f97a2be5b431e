#!/usr/bin/env bash
# Checks of the observability deliverables: Prometheus rules and config, the
# rules' unit tests, and the Grafana dashboard.
#
#   .ci/promtool.sh                       run every check (exit 1 on any failure)
#   .ci/promtool.sh --list-queries        print every PromQL query of the dashboard,
#                                         one per line, dashboard variables filled in
#       --raw                             ... as written, variables not filled in
#       --titles                          ... as "panel title<TAB>refId<TAB>query"
#       --set NAME=VALUE                  ... override a variable (repeatable); defaults:
#                                         route=.* monolith=monolith __rate_interval=1m
#                                         __interval=1m __range=1h __range_s=3600
#
# Needs: promtool (Debian package `prometheus`), python3 with PyYAML
# (`python3-yaml`). PROMTOOL and PYTHON override the commands.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROMTOOL=${PROMTOOL:-promtool}
PYTHON=${PYTHON:-python3}
DASHBOARD=deploy/grafana/strangler.json
RULES=(deploy/prometheus/recording.rules.yml deploy/prometheus/alerts.rules.yml)

# The Python half: dashboard and rule-file checks, and the query listing.
# Invoked as: py <mode> [args...]
py() {
  "$PYTHON" - "$@" <<'PY'
import json, re, sys

import yaml

DASHBOARD = "deploy/grafana/strangler.json"
RULE_FILES = ["deploy/prometheus/recording.rules.yml", "deploy/prometheus/alerts.rules.yml"]

# The metric contract (DESIGN.md, issue 6). Dashboards and rules may use
# these and nothing else that starts with strangler_.
HISTOGRAMS = ["strangler_request_duration_seconds", "strangler_upstream_duration_seconds",
              "strangler_shadow_duration_seconds", "strangler_request_body_bytes",
              "strangler_response_body_bytes"]
CONTRACT = {
    "strangler_requests_total", "strangler_request_failures_total",
    "strangler_upstream_errors_total", "strangler_inflight_requests",
    "strangler_fallbacks_total", "strangler_retries_total",
    "strangler_connections_open", "strangler_connections_total",
    "strangler_shadow_requests_total", "strangler_shadow_field_mismatches_total",
    "strangler_migration_stage", "strangler_migration_weight", "strangler_migration_paused",
    "strangler_gate_decisions_total", "strangler_config_reloads_total", "strangler_config_info",
    "strangler_config_last_reload_success_timestamp_seconds",
    "strangler_backend_up", "strangler_circuit_state",
    # Added with OTLP export, connection parking and refusal counting.
    "strangler_trace_spans_total", "strangler_connections_parked",
    "strangler_rejected_requests_total",
    # Added with the backend connection pool.
    "strangler_upstream_connections_total",
    # Added with one runtime and listening socket per worker.
    "strangler_worker_connections_total",
} | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
LABELS = {"route", "backend", "method", "code", "kind", "from", "to", "listener", "outcome",
          "field", "side", "decision", "result", "version", "le", "instance", "job",
          "alertname", "alertstate", "reason", "worker"}
SEVERITIES = {"page", "ticket"}
DEFAULT_VARS = {"route": ".*", "monolith": "monolith", "__rate_interval": "1m",
                "__interval": "1m", "__range": "1h", "__range_s": "3600"}

errors = []

def err(msg):
    errors.append(msg)

def check_promql_names(where, expr, records=frozenset()):
    for name in sorted(set(re.findall(r"(?<![\w:])strangler_\w+", expr))):
        if name not in CONTRACT:
            err(f"{where}: {name} is not a metric of the contract")
    for name in sorted(set(re.findall(r"(?<![\w\"])([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)", expr))):
        if name not in records:
            err(f"{where}: recording rule {name} is not defined")
    for group in re.findall(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        for label in filter(None, (l.strip() for l in group.split(","))):
            if label not in LABELS:
                err(f"{where}: unknown label {label!r}")

def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))

def load_dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)

def queries(dash):
    for p in walk(dash.get("panels", [])):
        if p.get("type") == "row":
            continue
        for t in p.get("targets", []):
            yield p.get("title", ""), t.get("refId", ""), t.get("expr", "")

VAR_RE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)\]\]")

def fill(expr, values):
    def sub(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise SystemExit(f"query uses unknown variable ${name}: {expr}")
        return values[name]
    return VAR_RE.sub(sub, expr)

def one_line(expr):
    return re.sub(r"\s*\n\s*", " ", expr.strip())

def list_queries(args):
    values, raw, titles = dict(DEFAULT_VARS), False, False
    it = iter(args)
    for a in it:
        if a == "--raw":
            raw = True
        elif a == "--titles":
            titles = True
        elif a == "--set":
            k, _, v = next(it, "").partition("=")
            if not k:
                raise SystemExit("--set needs NAME=VALUE")
            values[k] = v
        else:
            raise SystemExit(f"unknown option {a}")
    for title, ref, expr in queries(load_dashboard()):
        q = one_line(expr if raw else fill(expr, values))
        print(f"{title}\t{ref}\t{q}" if titles else q)

def check_dashboard():
    try:
        dash = load_dashboard()
    except (OSError, ValueError) as e:
        err(f"{DASHBOARD}: does not parse: {e}")
        return
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 38:
        err(f"{DASHBOARD}: schemaVersion must be >= 38")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        err(f"{DASHBOARD}: needs a `datasource` variable of type datasource, query prometheus")
    route = variables.get("route")
    if not route:
        err(f"{DASHBOARD}: needs a `route` variable")
    else:
        q = route.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if q != "label_values(strangler_requests_total, route)" or not route.get("multi") or not route.get("includeAll"):
            err(f"{DASHBOARD}: `route` must be label_values(strangler_requests_total, route), multi, include All")
    ids = set()
    n_targets = 0
    for p in walk(dash.get("panels", [])):
        where = f"{DASHBOARD}: panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            err(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            err(f"{where}: no gridPos")
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            err(f"{where}: datasource must be ${{datasource}}")
        if not p.get("targets"):
            err(f"{where}: no targets")
        for t in p.get("targets", []):
            n_targets += 1
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                err(f"{where}: target {t.get('refId')} has no expr")
                continue
            if (t.get("datasource") or {}).get("uid") != "${datasource}":
                err(f"{where}: target {t.get('refId')}: datasource must be ${{datasource}}")
            check_promql_names(f"{where} {t.get('refId')}", expr)
            try:
                fill(expr, DEFAULT_VARS)
            except SystemExit as e:
                err(f"{where}: {e}")
    if n_targets == 0:
        err(f"{DASHBOARD}: no queries")

def check_rules():
    records, rules = set(), []
    for path in RULE_FILES:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                rules.append((path, r))
                if "record" in r:
                    records.add(r["record"])
    for path, r in rules:
        name = r.get("record") or r.get("alert")
        where = f"{path}: {name}"
        check_promql_names(where, str(r.get("expr", "")), records)
        if "record" in r:
            if not re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", r["record"]):
                err(f"{where}: recording rule name is not level:metric:operations")
            continue
        labels, ann = r.get("labels") or {}, r.get("annotations") or {}
        if labels.get("severity") not in SEVERITIES:
            err(f"{where}: severity must be one of {sorted(SEVERITIES)}")
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                err(f"{where}: annotation {key} missing")
        want = f"docs/operations.md#{name.lower()}"
        if ann.get("runbook_url") != want:
            err(f"{where}: runbook_url must be {want}")

def tested_alerts():
    """Alerts that some unit test expects to fire, and to stay quiet."""
    import glob
    fired, quiet = set(), set()
    for path in glob.glob("deploy/prometheus/tests/*.yml"):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for t in doc.get("tests", []):
            for a in t.get("alert_rule_test", []) or []:
                (fired if a.get("exp_alerts") else quiet).add(a["alertname"])
    return fired, quiet

def check_alert_coverage():
    fired, quiet = tested_alerts()
    for name in deploy_alerts():
        if name not in fired:
            err(f"alert {name}: no unit test where it fires")
        if name not in quiet:
            err(f"alert {name}: no unit test where it stays quiet")

def deploy_alerts():
    names = []
    for path in RULE_FILES:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for g in doc.get("groups", []):
            names += [r["alert"] for r in g.get("rules", []) if "alert" in r]
    return sorted(set(names))

def expr_rules(out):
    """Every dashboard query, variables filled in, as a rule file for promtool."""
    rules = [{"record": f"dashboard:query:{i}", "expr": fill(expr, DEFAULT_VARS)}
             for i, (_, _, expr) in enumerate(queries(load_dashboard()))]
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False)
    print(f"{len(rules)} dashboard queries")

mode, args = sys.argv[1], sys.argv[2:]
if mode == "list":
    list_queries(args)
elif mode == "expr-rules":
    expr_rules(args[0])
elif mode == "check":
    for path in ("deploy/grafana/provisioning/dashboards/strangler.yaml",
                 "deploy/grafana/provisioning/datasources/prometheus.yaml"):
        try:
            with open(path, encoding="utf-8") as f:
                if (yaml.safe_load(f) or {}).get("apiVersion") != 1:
                    err(f"{path}: apiVersion must be 1")
        except (OSError, yaml.YAMLError) as e:
            err(f"{path}: {e}")
    check_dashboard()
    check_rules()
    check_alert_coverage()
    for e in errors:
        print(f"  FAILED: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print("  SUCCESS: dashboard and rule conventions")
PY
}

if [[ ${1:-} == --list-queries ]]; then
  shift
  py list "$@"
  exit 0
fi
if [[ $# -gt 0 ]]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== promtool check rules"
"$PROMTOOL" check rules "${RULES[@]}"

echo "== promtool check config"
"$PROMTOOL" check config deploy/prometheus/prometheus.yml deploy/prometheus/prometheus-compose.yml

echo "== promtool test rules"
"$PROMTOOL" test rules deploy/prometheus/tests/*.yml

echo "== dashboard and rule conventions"
py check

echo "== dashboard queries are valid PromQL"
py expr-rules "$tmp/dashboard.rules.yml"
"$PROMTOOL" check rules "$tmp/dashboard.rules.yml"

echo "all observability checks passed"
