#!/usr/bin/env bash
# Checks of the deployment files that can be checked without a container
# engine or a cluster:
#
#   .ci/deploy.sh                     run every check (exit 1 on any failure)
#   .ci/deploy.sh --write-configmap   regenerate deploy/k8s/configmap.yaml from routes/
#
# - deploy/compose.yaml: `docker compose config` (or Compose v1's
#   `docker-compose config`, Debian package `docker-compose`), which
#   validates it against the Compose schema without an engine; without
#   either, the structural checks below only.
# - deploy/k8s/*.yaml: `kubernetes-validate --strict` (PyPI; it ships the
#   Kubernetes API schemas, so it works offline like kubeconform, whose
#   release binaries cannot be fetched here) for the built-in kinds; for
#   every manifest, a Python check that it parses and has apiVersion, kind
#   and metadata.name, that selectors, labels, ports and probes agree across
#   the Deployment, Service, PodDisruptionBudget and PodMonitor, and that
#   the ConfigMap holds exactly the shipped routes/*.yaml.
#
# Needs: python3 with PyYAML. KUBERNETES_VALIDATE overrides the command;
# when it is not installed, that step is skipped with a note (CI installs it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
KUBERNETES_VALIDATE=${KUBERNETES_VALIDATE:-kubernetes-validate}

py() {
  "$PYTHON" - "$@" <<'PY'
import glob, os, sys

import yaml

K8S = "deploy/k8s"
CONFIGMAP = f"{K8S}/configmap.yaml"
COMPOSE = "deploy/compose.yaml"

CONFIGMAP_HEADER = """\
# The routes directory as a ConfigMap, mounted at /etc/strangler/routes by
# deployment.yaml. This is the shipped routes/ (CI checks that it is the same,
# byte for byte): its backends are the demo's loopback ports, so point them at
# your Services, e.g. `url: "http://monolith.shop.svc.cluster.local:8080"`.
# For several replicas, give each migration's gate fleet mode
# (`source: prometheus`, `prometheus_url: ...`; see deployment.yaml).
#
# Regenerate it from routes/ with `.ci/deploy.sh --write-configmap`, or from
# any routes directory with
#   kubectl create configmap strangler-routes --from-file=routes/ --dry-run=client -o yaml
# `strangler check` the directory first: a bad edit is refused at reload
# (the old table keeps serving) but a new pod with it does not start.
"""

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def route_files():
    paths = sorted(glob.glob("routes/*.yaml") + glob.glob("routes/*.yml"))
    return {os.path.basename(p): open(p, encoding="utf-8").read() for p in paths}


def write_configmap():
    out = [CONFIGMAP_HEADER, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n",
           "  name: strangler-routes\n  labels:\n    app.kubernetes.io/name: strangler\ndata:\n"]
    for name, text in route_files().items():
        if not text.endswith("\n") or text.endswith("\n\n"):
            sys.exit(f"routes/{name} must end with exactly one newline")
        out.append(f"  {name}: |\n")
        out.extend(f"    {line}\n" if line else "\n" for line in text[:-1].split("\n"))
    with open(CONFIGMAP, "w", encoding="utf-8") as f:
        f.write("".join(out))
    print(f"wrote {CONFIGMAP}")


def load_manifests():
    docs = {}
    for path in sorted(glob.glob(f"{K8S}/*.yaml")):
        try:
            with open(path, encoding="utf-8") as f:
                items = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            fail(f"{path}: not YAML: {e}")
            continue
        for doc in items:
            where = f"{path}: {doc.get('kind', '?')}" if isinstance(doc, dict) else path
            if not isinstance(doc, dict):
                fail(f"{where}: not a mapping")
                continue
            missing = [k for k in ("apiVersion", "kind") if not doc.get(k)]
            if not (doc.get("metadata") or {}).get("name"):
                missing.append("metadata.name")
            if missing:
                fail(f"{where}: missing {', '.join(missing)}")
                continue
            docs[doc["kind"]] = (path, doc)
    return docs


def check_k8s():
    docs = load_manifests()
    need = ["Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "PodMonitor"]
    for kind in need:
        if kind not in docs:
            fail(f"{K8S}: no {kind}")
    if failures:
        return
    deploy = docs["Deployment"][1]
    spec = deploy["spec"]
    pod = spec["template"]
    labels = pod["metadata"].get("labels", {})
    selector = spec["selector"]["matchLabels"]
    if any(labels.get(k) != v for k, v in selector.items()):
        fail("Deployment: its selector does not match its pod labels")

    def selects_pods(kind, sel):
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            fail(f"{kind}: its selector {sel} does not select the Deployment's pods")

    selects_pods("Service", docs["Service"][1]["spec"]["selector"])
    selects_pods("PodDisruptionBudget", docs["PodDisruptionBudget"][1]["spec"]["selector"]["matchLabels"])
    selects_pods("PodMonitor", docs["PodMonitor"][1]["spec"]["selector"]["matchLabels"])

    containers = pod["spec"]["containers"]
    c = containers[0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if ports.get("http") != 8080 or ports.get("admin") != 9090:
        fail(f"Deployment: expected ports http 8080 and admin 9090, got {ports}")
    if env.get("STRANGLER_ADMIN", "").rsplit(":", 1)[-1] != str(ports.get("admin")):
        fail("Deployment: STRANGLER_ADMIN does not listen on the admin port")
    if env.get("STRANGLER_LISTEN", "").rsplit(":", 1)[-1] != str(ports.get("http")):
        fail("Deployment: STRANGLER_LISTEN does not listen on the http port")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        got = (c.get(probe) or {}).get("httpGet", {})
        if got.get("path") != path or got.get("port") not in ("admin", 9090):
            fail(f"Deployment: {probe} should GET {path} on the admin port, got {got}")
    sc = pod["spec"].get("securityContext", {})
    if not sc.get("runAsNonRoot") or not sc.get("runAsUser"):
        fail("Deployment: the pod must run as a non-root user")
    if not c.get("resources", {}).get("limits") or not c.get("resources", {}).get("requests"):
        fail("Deployment: the container needs resource requests and limits")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    if mounts.get("routes") != env.get("STRANGLER_ROUTES"):
        fail("Deployment: the routes volume is not mounted at STRANGLER_ROUTES")
    if mounts.get("state") != env.get("STRANGLER_STATE_DIR"):
        fail("Deployment: the state volume is not mounted at STRANGLER_STATE_DIR")
    cm_name = docs["ConfigMap"][1]["metadata"]["name"]
    if (volumes.get("routes") or {}).get("configMap", {}).get("name") != cm_name:
        fail(f"Deployment: the routes volume is not the ConfigMap {cm_name}")
    annotations = pod["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/port") != str(ports.get("admin")):
        fail("Deployment: prometheus.io/port is not the admin port")

    svc_ports = docs["Service"][1]["spec"]["ports"]
    for p in svc_ports:
        if p.get("targetPort") not in ports and p.get("targetPort") not in ports.values():
            fail(f"Service: targetPort {p.get('targetPort')} is not a container port")
        if p.get("targetPort") in ("admin", 9090):
            fail("Service: the admin port must not be exposed by the Service")
    endpoints = docs["PodMonitor"][1]["spec"]["podMetricsEndpoints"]
    if not any(e.get("port") == "admin" and e.get("path", "/metrics") == "/metrics" for e in endpoints):
        fail("PodMonitor: it does not scrape /metrics on the admin port")

    data = docs["ConfigMap"][1].get("data", {})
    shipped = route_files()
    if data != shipped:
        differ = sorted(n for n in set(data) | set(shipped) if data.get(n) != shipped.get(n))
        fail(f"{CONFIGMAP}: differs from routes/ in {differ}; run .ci/deploy.sh --write-configmap")
    if not failures:
        print(f"ok   {K8S}: {len(docs)} manifests, consistent; the ConfigMap is routes/")


def check_compose():
    with open(COMPOSE, encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    services = compose.get("services", {})
    for name in ("strangler", "prometheus", "grafana"):
        if name not in services:
            fail(f"{COMPOSE}: no `{name}` service")
    if failures:
        return
    base = os.path.dirname(COMPOSE)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                if not os.path.exists(os.path.join(base, source)):
                    fail(f"{COMPOSE}: {name} mounts {source}, which does not exist")
    # Prometheus: the config named on its command line must be in the mounted
    # directory and scrape the strangler service's admin port.
    prom = services["prometheus"]
    config = next((a.split("=", 1)[1] for a in prom.get("command", []) if a.startswith("--config.file=")), None)
    mounts = dict(v.split(":")[:2][::-1] for v in prom.get("volumes", []))
    host_config = None
    for target, source in mounts.items():
        if config and config.startswith(target.rstrip("/") + "/"):
            host_config = os.path.join(base, source, config[len(target.rstrip("/")) + 1:])
    if not host_config or not os.path.exists(host_config):
        fail(f"{COMPOSE}: prometheus's --config.file {config} is not a mounted file")
        return
    with open(host_config, encoding="utf-8") as f:
        prom_config = yaml.safe_load(f)
    targets = [t for job in prom_config.get("scrape_configs", []) if job.get("job_name") == "strangler"
               for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
    if "strangler:9090" not in targets:
        fail(f"{host_config}: job `strangler` does not scrape strangler:9090")
    for rules in prom_config.get("rule_files", []):
        if not os.path.exists(os.path.join(os.path.dirname(host_config), rules)):
            fail(f"{host_config}: rule file {rules} does not exist")
    with open("deploy/grafana/provisioning/datasources/prometheus.yaml", encoding="utf-8") as f:
        datasources = yaml.safe_load(f)["datasources"]
    if not any(d.get("url") == "http://prometheus:9090" for d in datasources):
        fail("grafana datasource: expected url http://prometheus:9090 (the compose service)")
    if not failures:
        print(f"ok   {COMPOSE}: services, mounts, scrape target and datasource agree")


mode = sys.argv[1]
if mode == "write-configmap":
    write_configmap()
elif mode == "k8s":
    check_k8s()
elif mode == "compose":
    check_compose()
sys.exit(1 if failures else 0)
PY
}

if [ "${1:-}" = "--write-configmap" ]; then
  py write-configmap
  exit 0
fi

status=0

echo "== deploy/compose.yaml"
if docker compose version >/dev/null 2>&1; then
  if docker compose -f deploy/compose.yaml config --quiet; then
    echo "ok   docker compose config"
  else
    status=1
  fi
elif command -v docker-compose >/dev/null 2>&1; then
  if docker-compose -f deploy/compose.yaml config --quiet; then
    echo "ok   docker-compose config"
  else
    status=1
  fi
else
  echo "note: neither \`docker compose\` nor \`docker-compose\`; structural checks only"
fi
py compose || status=1

echo "== deploy/k8s"
py k8s || status=1
if command -v "$KUBERNETES_VALIDATE" >/dev/null 2>&1; then
  # --strict: unknown fields are errors. PodMonitor is a CRD it has no
  # schema for: it warns and passes, and the Python check covers it.
  if "$KUBERNETES_VALIDATE" --strict --quiet deploy/k8s/*.yaml; then
    echo "ok   kubernetes-validate --strict"
  else
    status=1
  fi
else
  echo "note: $KUBERNETES_VALIDATE is not installed (pip install kubernetes-validate); schema validation skipped"
fi

exit $status
