#!/usr/bin/env bash
# Builds strangler with profile-guided optimisation (PGO): an instrumented
# release build serves a short training load on loopback (the load
# harness's kinds of traffic: keep-alive and new-connection GETs, 64 KB
# answers, uploads, HTTP/2, shadowing, the access log), then the release
# build is made again, laid out and inlined after that profile.
#
#   benches/pgo.sh [--out PATH]      default: target/pgo/strangler
#
# Needs what the load harness needs (nginx, wrk, h2load) and LLVM's
# profile tool: `rustup component add llvm-tools`. Takes two release
# builds (about 10 minutes on 2 cores) and half a minute of load.
# Figures: benches/RESULTS.md, "profile-guided build".
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/target/pgo/strangler
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--out PATH]" >&2; exit 2 ;;
  esac
done
for tool in nginx wrk h2load curl; do
  command -v $tool >/dev/null || { echo "$tool missing (see benches/load/README.md)" >&2; exit 1; }
done
PROFDATA=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f 2>/dev/null | head -n 1)
[ -n "$PROFDATA" ] || { echo "llvm-profdata missing: rustup component add llvm-tools" >&2; exit 1; }
# RUSTFLAGS reach only the proxy's crates, not build scripts, when the
# target is named.
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')

TMP=$(mktemp -d /tmp/strangler-pgo.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
log() { printf '[pgo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "instrumented build"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-generate=$TMP/raw" \
  cargo build --release --target "$TRIPLE" --target-dir "$ROOT/target/pgo-generate")
TRAINEE=$ROOT/target/pgo-generate/$TRIPLE/release/strangler

PORT=29400
UP=$PORT CANDIDATE=$((PORT + 1)) PLAIN=$((PORT + 2)) LOGGED=$((PORT + 4))
mkdir -p "$TMP/www/static"
head -c 65536 /dev/zero >"$TMP/www/static/64k"
cat >"$TMP/nginx.conf" <<EOF
user root;
pid $TMP/nginx.pid;
error_log $TMP/error.log warn;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_max_body_size 0;
    client_body_temp_path $TMP/body; proxy_temp_path $TMP/proxy; fastcgi_temp_path $TMP/fcgi;
    uwsgi_temp_path $TMP/uwsgi; scgi_temp_path $TMP/scgi;
    server {
        listen 127.0.0.1:$UP http2;
        listen 127.0.0.1:$CANDIDATE;
        root $TMP/www;
        location / { return 200 "ok"; }
        location /static/ { }
        location = /upload { client_body_buffer_size 2m; mirror /void; mirror_request_body on; error_page 405 =200 @ok; }
        location = /void { internal; return 204; }
        location @ok { return 200 "ok"; }
    }
}
EOF
mkdir -p "$TMP/routes"
cat >"$TMP/routes/routes.yaml" <<EOF
backends:
  upstream: { url: "http://127.0.0.1:$UP" }
  candidate: { url: "http://127.0.0.1:$CANDIDATE" }
default: upstream
routes:
  - name: shadowed
    match: { prefix: "/shadowed" }
    backend: upstream
    shadow: { backend: candidate, sample: 100% }
  - name: all
    match: { prefix: "/" }
    backend: upstream
EOF
nginx -c "$TMP/nginx.conf" -p "$TMP" -g 'daemon off;' >"$TMP/nginx.out" 2>&1 &
PIDS+=($!)
# One proxy without the access log and one with it: a path the training
# never takes is compiled as cold.
RUST_LOG=warn "$TRAINEE" run --routes "$TMP/routes" --listen "127.0.0.1:$PLAIN" \
  --admin "127.0.0.1:$((PLAIN + 1))" --state-dir "$TMP/state-plain" --workers 1 >"$TMP/plain.out" 2>&1 &
PLAIN_PID=$!
PIDS+=($PLAIN_PID)
RUST_LOG=info "$TRAINEE" run --routes "$TMP/routes" --listen "127.0.0.1:$LOGGED" \
  --admin "127.0.0.1:$((LOGGED + 1))" --state-dir "$TMP/state-logged" --workers 1 >/dev/null 2>&1 &
LOGGED_PID=$!
PIDS+=($LOGGED_PID)
for port in $UP $PLAIN $LOGGED; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

log "training load"
URL=http://127.0.0.1:$PLAIN
LOAD=$ROOT/benches/load
wrk -t1 -c50 -d6s "$URL/" >/dev/null
wrk -t1 -c50 -d3s "$URL/static/64k" >/dev/null
wrk -t1 -c10 -d3s -s "$LOAD/close.lua" "$URL/" >/dev/null
wrk -t1 -c10 -d3s -s "$LOAD/upload.lua" "$URL/upload" >/dev/null
h2load -t1 -c10 -m10 -D 3 "$URL/" >/dev/null
wrk -t1 -c50 -d3s "$URL/shadowed" >/dev/null
wrk -t1 -c50 -d3s "http://127.0.0.1:$LOGGED/" >/dev/null
# Profiles are written as the proxies exit.
kill -TERM $PLAIN_PID $LOGGED_PID
wait $PLAIN_PID $LOGGED_PID || true

log "merging the profile"
"$PROFDATA" merge -o "$TMP/strangler.profdata" "$TMP/raw"

log "optimised build"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-use=$TMP/strangler.profdata" \
  cargo build --release --target "$TRIPLE" --target-dir "$ROOT/target/pgo-use")
mkdir -p "$(dirname "$OUT")"
cp "$ROOT/target/pgo-use/$TRIPLE/release/strangler" "$OUT"
log "built $OUT"
