#!/usr/bin/env bash
# Profiles strangler under the small-GET scenario of run.sh (keep-alive GET
# of a 2-byte answer through one `prefix: /` route to an nginx upstream).
#
#   benches/load/profile.sh [callgrind|perf] [-n REQUESTS] [--out DIR] [--shadow]
#
# callgrind (default; needs valgrind): a bounded count of requests, user-space
#   instructions per function, exact but blind to time spent in the kernel.
# perf: `perf record -e cpu-clock` (flat, per symbol) for a bounded time; a
#   software clock, so it works where hardware counters are not exposed
#   (VMs), and it includes the kernel.
# -g (perf only): record call graphs (DWARF unwinding), to see who calls a
#   hot symbol: `perf report -i DIR/perf.data --no-children -G --symbols=NAME`.
# --shadow: the route also mirrors every request to a second, equally fast
#   nginx answer (the cost of shadowing itself, without a slow candidate).
# --shadow-dropped: the same, but the candidate accepts mirrors and never
#   answers, and the shadow queue is small: past the first few requests every
#   mirror is dropped (the cost of a dropped mirror).
# --close SECONDS (callgrind only): instead of -n requests on kept-alive
#   connections, wrk with close.lua for SECONDS, a new client connection
#   per request (run.sh's `close` scenario); the summary divides by the
#   requests wrk completed.
# --64k: the upstream answers 64 KB instead of 2 bytes (run.sh's 64 KB
#   response scenario).
# --h2 (callgrind only): the clients speak HTTP/2 (h2load, 10 connections of
#   10 streams each, as run.sh's HTTP/2 scenario) instead of HTTP/1.1.
# Writes the raw profile and a summary to --out (default /tmp/strangler-profile).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODE=callgrind
REQUESTS=20000
SECONDS_PERF=10
OUT=/tmp/strangler-profile
PORT=27190
BIN="$ROOT/target/release/strangler"
SHADOW=false
BIG=false
CLOSE_SECONDS=
LOAD_PROTO=(--h1)
CALL_GRAPH=()
while [ $# -gt 0 ]; do
  case "$1" in
    callgrind|perf) MODE=$1; shift ;;
    -n) REQUESTS=$2; shift 2 ;;
    -d) SECONDS_PERF=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --shadow) SHADOW=true; shift ;;
    --shadow-dropped) SHADOW=dropped; shift ;;
    --h2) LOAD_PROTO=(-m 10); shift ;;
    --64k) BIG=true; shift ;;
    --close) CLOSE_SECONDS=$2; shift 2 ;;
    -g) CALL_GRAPH=(--call-graph dwarf,16384); shift ;;
    *) echo "usage: $0 [callgrind|perf] [-n REQUESTS] [-d SECONDS] [--out DIR] [--bin PATH] [--shadow|--shadow-dropped] [--h2] [--64k] [--close SECONDS] [-g]" >&2; exit 2 ;;
  esac
done
for tool in nginx h2load wrk curl; do command -v $tool >/dev/null || { echo "$tool missing" >&2; exit 1; }; done
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release)

mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/strangler-prof.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

UP=$((PORT + 1))
cat >"$TMP/nginx.conf" <<EOF
user root;
pid $TMP/nginx.pid;
error_log $TMP/error.log warn;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $TMP/body; proxy_temp_path $TMP/proxy; fastcgi_temp_path $TMP/fcgi;
    uwsgi_temp_path $TMP/uwsgi; scgi_temp_path $TMP/scgi;
    server { listen 127.0.0.1:$UP; root $TMP/www; location / { return 200 "ok"; } location = /64k { } }
    server { listen 127.0.0.1:$((PORT + 3)); location / { return 200 "ok"; } }
}
EOF
mkdir -p "$TMP/routes"
cat >"$TMP/routes/routes.yaml" <<EOF
backends:
  upstream: { url: "http://127.0.0.1:$UP" }
default: upstream
routes:
  - name: all
    match: { prefix: "/" }
    backend: upstream
EOF
if [ "$SHADOW" != false ]; then
  CANDIDATE=$((PORT + 3))
  if [ "$SHADOW" = dropped ]; then
    # Listens (the kernel completes connections) but never reads or answers.
    CANDIDATE=$((PORT + 4))
    python3 -c "import socket, time
s = socket.socket(); s.bind(('127.0.0.1', $CANDIDATE)); s.listen(64); time.sleep(3600)" &
    PIDS+=($!)
    sed -i "1i server: { shadow: { queue: 8, concurrency: 2 } }" "$TMP/routes/routes.yaml"
  fi
  sed -i "s|^default: upstream|  candidate: { url: \"http://127.0.0.1:$CANDIDATE\" }\ndefault: upstream|" "$TMP/routes/routes.yaml"
  echo "    shadow: { backend: candidate, sample: 100% }" >>"$TMP/routes/routes.yaml"
fi
nginx -c "$TMP/nginx.conf" -p "$TMP" -g 'daemon off;' >"$TMP/nginx.out" 2>&1 &
PIDS+=($!)

ARGS=(run --routes "$TMP/routes" --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$((PORT + 2))" --state-dir "$TMP/state" --workers 1)
URL="http://127.0.0.1:$PORT/"
mkdir -p "$TMP/www"
head -c 65536 /dev/zero >"$TMP/www/64k"
if [ "$BIG" = true ]; then URL="${URL}64k"; fi
wait_up() { for _ in $(seq 1 300); do curl -s -o /dev/null --max-time 1 "$URL" && return 0; sleep 0.2; done; echo "strangler did not start" >&2; exit 1; }

case "$MODE" in
  callgrind)
    RUST_LOG=${RUST_LOG:-warn} valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
      "$BIN" "${ARGS[@]}" >"$OUT/strangler.out" 2>&1 &
    SPID=$!; PIDS+=($SPID)
    wait_up
    # Warm the pool, then count only the measured requests.
    h2load "${LOAD_PROTO[@]}" -n 500 -c 10 -t 1 "$URL" >/dev/null
    callgrind_control -z "$SPID" >/dev/null 2>&1
    if [ -n "$CLOSE_SECONDS" ]; then
      REQUESTS=$(wrk -t1 -c10 -d"${CLOSE_SECONDS}s" -s "$HERE/close.lua" "$URL" | awk '/requests in/ {print $1}')
      echo "wrk with close.lua: $REQUESTS requests"
    else
      timeout 600 h2load "${LOAD_PROTO[@]}" -n "$REQUESTS" -c 10 -t 1 "$URL" | grep -E '^(finished|requests|status codes)' || true
    fi
    rm -f "$OUT/shadow.txt"
    if [ "$SHADOW" != false ]; then
      curl -s "http://127.0.0.1:$((PORT + 2))/metrics" | grep '^strangler_shadow_requests_total' >"$OUT/shadow.txt" || true
    fi
    kill -TERM "$SPID"; wait "$SPID" || true
    # callgrind_annotate charges nearly all of a tokio program to `clone`;
    # helpers.py reads the raw file instead.
    python3 "$HERE/helpers.py" callgrind-top "$OUT/callgrind.out" 30 >"$OUT/summary.txt"
    echo "requests: $REQUESTS (+500 warm-up, not counted)" >>"$OUT/summary.txt"
    [ -f "$OUT/shadow.txt" ] && cat "$OUT/shadow.txt" >>"$OUT/summary.txt"
    cat "$OUT/summary.txt"
    ;;
  perf)
    RUST_LOG=${RUST_LOG:-warn} "$BIN" "${ARGS[@]}" >"$OUT/strangler.out" 2>&1 &
    SPID=$!; PIDS+=($SPID)
    wait_up
    wrk -t1 -c50 -d2s "$URL" >/dev/null
    wrk -t1 -c50 -d"$((SECONDS_PERF + 2))s" "$URL" >"$OUT/wrk.txt" &
    WPID=$!; PIDS+=($WPID)
    sleep 1
    perf record "${CALL_GRAPH[@]}" -e cpu-clock -F 999 -p "$SPID" -o "$OUT/perf.data" -- sleep "$SECONDS_PERF" 2>"$OUT/perf-record.err"
    wait "$WPID" || true
    perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null >"$OUT/report.txt" || true
    perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null >"$OUT/dso.txt" || true
    grep -E '^ +[0-9]' "$OUT/dso.txt" | sed 's/ *$//' || true
    echo
    grep -E '^ +[0-9]' "$OUT/report.txt" | sed 's/ *- *- *$//' | sed -n '1,40p' || true
    ;;
esac
echo "profile in $OUT"
