#!/usr/bin/env bash
# Load harness: strangler vs nginx vs HAProxy vs direct, side by side on
# loopback, interleaved round-robin. See benches/load/README.md.
#
#   benches/load/run.sh [-n WORKERS] [-r ROUNDS] [-d SECONDS] [options]
#
# Needs wrk, nginx, haproxy and python3; uses h2load and oha when present.
# Everything listens on 127.0.0.1 only; every run is bounded in time; every
# process started here is stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
COMMAND="benches/load/run.sh${*:+ $*}"

WORKERS=1
ROUNDS=3
DURATION=3
CONNS=50
UPLOAD_CONNS=10
H2_CONNS=10
H2_STREAMS=10
RATE=4000
SHADOW_DELAY_MS=10
CANDIDATE_NICE=10
ECHO_MODULE=/usr/lib/nginx/modules/ngx_http_echo_module.so
CANDIDATE=""
IDLE_CONNS=10000
PORT_BASE=27100
BIN=""
BASELINE=""
RESULTS="$ROOT/benches/RESULTS.md"
APPEND=1
ONLY=""
KEEP_TMP=0

usage() {
  cat <<EOF
usage: $0 [options]
  -n, --workers N        worker processes/threads of every proxy (default $WORKERS)
  -r, --rounds R         rounds over all scenarios and targets (default $ROUNDS)
  -d, --duration S       seconds per measured run (default $DURATION)
  -c, --connections C    wrk/oha connections (default $CONNS)
  -q, --rate QPS         constant rate of the oha scenarios (default $RATE)
      --shadow-delay MS  delay of the slow shadow candidate (default $SHADOW_DELAY_MS)
      --candidate KIND   the slow candidate: nginx (with the echo module's echo_sleep; the
                         default when $ECHO_MODULE exists) or python (helpers.py)
      --candidate-nice N nice value of the slow candidate (default $CANDIDATE_NICE; 0: as the proxies)
      --idle N           idle keep-alive connections for the RSS test (default $IDLE_CONNS; 0 skips)
      --only LIST        comma-separated scenarios: get,64k,close,upload,routes1k,h2,logs,headers,shadow,rate-get,rate-shadow
      --port-base P      ports P..P+40 on 127.0.0.1 (default $PORT_BASE)
      --bin PATH         strangler binary (default target/release/strangler, built if absent)
      --baseline PATH    another strangler binary, measured as target `baseline` in the
                         same rounds (get, 64k, close, upload, h2, rate-get): an A/B of a change
      --results FILE     where to append (default benches/RESULTS.md)
      --no-append        print the table only
      --keep-tmp         keep the temporary directory (configs, logs, raw figures)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    -n|--workers) WORKERS=$2; shift 2 ;;
    -r|--rounds) ROUNDS=$2; shift 2 ;;
    -d|--duration) DURATION=$2; shift 2 ;;
    -c|--connections) CONNS=$2; shift 2 ;;
    -q|--rate) RATE=$2; shift 2 ;;
    --shadow-delay) SHADOW_DELAY_MS=$2; shift 2 ;;
    --candidate) CANDIDATE=$2; shift 2 ;;
    --candidate-nice) CANDIDATE_NICE=$2; shift 2 ;;
    --idle) IDLE_CONNS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --port-base) PORT_BASE=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --baseline) BASELINE=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --no-append) APPEND=0; shift ;;
    --keep-tmp) KEEP_TMP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

log() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

ALL_SCENARIOS="get 64k close upload routes1k h2 logs headers shadow rate-get rate-shadow"
SCENARIOS=$ALL_SCENARIOS
if [ -n "$ONLY" ]; then
  SCENARIOS=${ONLY//,/ }
  for s in $SCENARIOS; do
    case " $ALL_SCENARIOS " in *" $s "*) ;; *) die "unknown scenario $s (known: $ALL_SCENARIOS)" ;; esac
  done
fi

for tool in wrk nginx haproxy python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install nginx haproxy wrk python3 curl)"
done
if [ -z "$CANDIDATE" ]; then
  if [ -f "$ECHO_MODULE" ]; then CANDIDATE=nginx; else
    CANDIDATE=python
    log "nginx echo module not found (Debian: libnginx-mod-http-echo): the slow candidate is Python, which takes 2-3x the CPU per answer"
  fi
fi
case "$CANDIDATE" in
  nginx) [ -f "$ECHO_MODULE" ] || die "--candidate nginx needs $ECHO_MODULE (Debian: apt-get install libnginx-mod-http-echo)" ;;
  python) ;;
  *) die "--candidate is nginx or python, not $CANDIDATE" ;;
esac
HAVE_H2LOAD=0; command -v h2load >/dev/null && HAVE_H2LOAD=1
HAVE_OHA=0; command -v oha >/dev/null && HAVE_OHA=1
[ $HAVE_H2LOAD = 1 ] || log "h2load not found (Debian: nghttp2-client): HTTP/2 scenario skipped"
[ $HAVE_OHA = 1 ] || log "oha not found (cargo install oha): constant-rate scenarios skipped; latencies are closed-loop (coordinated omission)"

# -------------------------------------------------------------- processes
TMP=$(mktemp -d /tmp/strangler-load.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.3
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ $KEEP_TMP = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit $code
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every socket here counts against the open-file limit: the idle test
# opens IDLE_CONNS on each side.
NOFILE=$(ulimit -Hn)
[ "$NOFILE" = unlimited ] && NOFILE=65536
ulimit -n "$NOFILE"
if [ "$IDLE_CONNS" -gt $((NOFILE - 200)) ]; then
  log "open-file limit $NOFILE: idle test lowered to $((NOFILE - 200)) connections"
  IDLE_CONNS=$((NOFILE - 200))
fi

start() { # NAME CMD... — runs in the background, output to $TMP/NAME.out
  local name=$1; shift
  "$@" >"$TMP/$name.out" 2>&1 &
  PIDS+=($!)
  eval "PID_${name//-/_}=$!"
}

wait_http() { # URL NAME
  for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.1
  done
  cat "$TMP/$2.out" >&2 || true
  die "$2 did not answer on $1"
}

# ----------------------------------------------------------------- ports
P=$PORT_BASE
UP=$((P)); UP_H2=$((P + 1)); SLOW=$((P + 2))
S_MAIN=$((P + 10)); S_1K=$((P + 12)); S_LOG=$((P + 14)); S_SHADOW=$((P + 16)); S_BASE=$((P + 18))
N_MAIN=$((P + 20)); N_H2=$((P + 21)); N_1K=$((P + 22)); N_LOG=$((P + 23)); N_MIRROR=$((P + 24)); N_HDR=$((P + 25))
H_MAIN=$((P + 30)); H_H2=$((P + 31)); H_1K=$((P + 32)); H_LOG=$((P + 33)); H_HDR=$((P + 34))
ROUTE1K_PATH=/api/v1/svc0499/items/42

# ------------------------------------------------------------ strangler
if [ -z "$BIN" ]; then
  BIN="$ROOT/target/release/strangler"
  if [ ! -x "$BIN" ]; then
    log "building strangler (cargo build --release)"
    (cd "$ROOT" && cargo build --release)
  fi
fi
[ -x "$BIN" ] || die "no strangler binary at $BIN"
# A private copy: the tree may be rebuilt while we measure.
cp "$BIN" "$TMP/strangler"
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || die "no baseline binary at $BASELINE"
  cp "$BASELINE" "$TMP/strangler-baseline"
fi
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(cd "$ROOT" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then COMMIT="$COMMIT+dirty"; fi

# ------------------------------------------------------------- configs
mkdir -p "$TMP/www/static" "$TMP/up" "$TMP/px"
head -c 65536 /dev/zero | tr '\0' 'x' >"$TMP/www/static/64k.bin"
printf ok >"$TMP/www/upload"

nginx_common() { # DIR
  cat <<EOF
user root;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile $NOFILE;
EOF
}
nginx_http_common() { # DIR
  cat <<EOF
    access_log off;
    default_type text/plain;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    client_max_body_size 0;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

# The upstream: one nginx worker, a 2-byte answer and a 64 KB file.
cat >"$TMP/up/nginx.conf" <<EOF
$(nginx_common "$TMP/up")
worker_processes 1;
events { worker_connections $NOFILE; }
http {
$(nginx_http_common "$TMP/up")
    sendfile on;
    server {
        listen 127.0.0.1:$UP backlog=4096;
        listen 127.0.0.1:$UP_H2 http2 backlog=4096;
        root $TMP/www;
        location / { return 200 "ok"; }
        location /static/ { }
        # Reads the whole upload before answering, as a real endpoint does:
        # mirror_request_body makes nginx read the body first, the static
        # handler refuses POST (405) and error_page turns that into "ok".
        location = /upload {
            client_body_buffer_size 2m;
            mirror /void;
            mirror_request_body on;
            error_page 405 =200 @ok;
        }
        location = /void { internal; return 204; }
        location @ok { return 200 "ok"; }
    }
}
EOF

# nginx as reverse proxy: one instance, one server block per variant.
{
  nginx_common "$TMP/px"
  echo "worker_processes $WORKERS;"
  echo "events { worker_connections $NOFILE; }"
  echo "http {"
  nginx_http_common "$TMP/px"
  cat <<EOF
    upstream up { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 100000000; keepalive_timeout 60s; }
    upstream slow { server 127.0.0.1:$SLOW; keepalive 64; keepalive_timeout 60s; }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    # Streams request bodies like the other two, in 128 KB reads (the 16 KB
    # default halves upload throughput); 64 KB answers fit in the buffers.
    proxy_request_buffering off;
    client_body_buffer_size 128k;
    proxy_buffer_size 8k;
    proxy_buffers 16 8k;
    proxy_max_temp_file_size 0;
    server {
        listen 127.0.0.1:$N_MAIN backlog=4096;
        listen 127.0.0.1:$N_H2 http2 backlog=4096;
        location / { proxy_pass http://up; }
    }
    server {
        listen 127.0.0.1:$N_LOG backlog=4096;
        access_log $TMP/px/access.log;
        location / { proxy_pass http://up; }
    }
    # The headers strangler adds to every request, set the nginx way: the
    # forwarding headers, a request id (to the backend and back to the
    # client) and a traceparent; the client's Host passed on.
    server {
        listen 127.0.0.1:$N_HDR backlog=4096;
        location / {
            # proxy_set_header here replaces the server's list, not adds to it.
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header Forwarded "for=\$remote_addr;proto=\$scheme;host=\\"\$http_host\\"";
            proxy_set_header X-Request-Id \$request_id;
            proxy_set_header traceparent "00-\$request_id-00f067aa0ba902b7-01";
            add_header X-Request-Id \$request_id always;
            proxy_pass http://up;
        }
    }
    server {
        listen 127.0.0.1:$N_MIRROR backlog=4096;
        location / { mirror /mirror; mirror_request_body off; proxy_pass http://up; }
        location = /mirror { internal; proxy_pass http://slow\$request_uri; }
    }
    server {
        listen 127.0.0.1:$N_1K backlog=4096;
        location / { proxy_pass http://up; }
EOF
  for i in $(seq -f %04g 0 499); do
    echo "        location /api/v1/svc$i/items/ { proxy_pass http://up; }"
    echo "        location /api/v2/svc$i { proxy_pass http://up; }"
  done
  echo "    }"
  echo "}"
} >"$TMP/px/nginx.conf"

# HAProxy: one process, one frontend per variant.
for i in $(seq -f %04g 0 499); do
  echo "/api/v1/svc$i/items/ be_up"
  echo "/api/v2/svc$i be_up"
done >"$TMP/haproxy-routes.map"
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    # Above 10,000 for the idle test; HAProxy counts 2 FDs per connection
    # and would refuse to start under a hard limit of 20,000 without this.
    # Never low: with --idle 0 this was 100, and past 25% of its FDs in use
    # (tune.pool-high-fd-ratio) HAProxy stops keeping idle backend
    # connections and opens one per request: 3.5x slower, all kernel time.
    maxconn $(( (IDLE_CONNS > 4000 ? IDLE_CONNS : 4000) + 100 ))
    no strict-limits
defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 75s
    option http-keep-alive
    http-reuse always
frontend main
    bind 127.0.0.1:$H_MAIN backlog 4096
    default_backend be_up
frontend h2
    bind 127.0.0.1:$H_H2 proto h2 backlog 4096
    default_backend be_up
frontend routes1k
    bind 127.0.0.1:$H_1K backlog 4096
    use_backend %[path,map_beg($TMP/haproxy-routes.map,be_up)]
    default_backend be_up
frontend logs
    bind 127.0.0.1:$H_LOG backlog 4096
    log stdout format raw local0
    option httplog
    default_backend be_up
frontend headers
    bind 127.0.0.1:$H_HDR backlog 4096
    # The headers strangler adds to every request, set the HAProxy way.
    unique-id-format %[rand,hex]%[rand,hex]
    unique-id-header X-Request-Id
    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header Forwarded "for=%[src];proto=http;host=\\"%[req.hdr(host)]\\""
    http-request set-header traceparent "00-%[unique-id]-00f067aa0ba902b7-01"
    http-after-response set-header X-Request-Id %[unique-id]
    default_backend be_up
backend be_up
    server up 127.0.0.1:$UP
EOF

# strangler: one instance per variant (a route table is per process).
strangler_routes() { # DIR KIND
  mkdir -p "$1"
  {
    echo "backends:"
    echo "  upstream: { url: \"http://127.0.0.1:$UP\" }"
    [ "$2" = shadow ] && echo "  candidate: { url: \"http://127.0.0.1:$SLOW\" }"
    echo "default: upstream"
    echo "routes:"
    case "$2" in
      shadow)
        echo "  - name: all"
        echo "    match: { prefix: \"/\" }"
        echo "    backend: upstream"
        echo "    shadow: { backend: candidate, sample: 100% }"
        ;;
      1k)
        for i in $(seq -f %04g 0 499); do
          echo "  - { name: v1-$i, match: { path: \"/api/v1/svc$i/items/{id}\", methods: [GET] }, backend: upstream }"
          echo "  - { name: v2-$i, match: { prefix: \"/api/v2/svc$i\" }, backend: upstream }"
        done
        ;;
      *)
        echo "  - name: all"
        echo "    match: { prefix: \"/\" }"
        echo "    backend: upstream"
        ;;
    esac
  } >"$1/routes.yaml"
  "$TMP/strangler" check "$1" >/dev/null || die "generated routes in $1 are invalid"
}
strangler_routes "$TMP/s-main" main
strangler_routes "$TMP/s-1k" 1k
strangler_routes "$TMP/s-shadow" shadow

# --------------------------------------------------------------- start
log "starting upstream, slow candidate, nginx, HAProxy and strangler (workers=$WORKERS) in $TMP"
nginx -t -q -c "$TMP/up/nginx.conf" -p "$TMP/up" 2>"$TMP/up/t.err" || { cat "$TMP/up/t.err" >&2; die "upstream nginx config"; }
nginx -t -q -c "$TMP/px/nginx.conf" -p "$TMP/px" 2>"$TMP/px/t.err" || { cat "$TMP/px/t.err" >&2; die "proxy nginx config"; }
haproxy -c -q -f "$TMP/haproxy.cfg" >/dev/null 2>"$TMP/haproxy-check.err" || { cat "$TMP/haproxy-check.err" >&2; die "haproxy config"; }

start upstream nginx -c "$TMP/up/nginx.conf" -p "$TMP/up" -g 'daemon off;'
# The candidate stands for a service on other machines: on these shared
# cores it runs at a lower priority, for strangler and nginx alike, so that
# the shadow figures weigh each proxy's own cost of mirroring, not the cost
# of running a Python server beside it.
if [ "$CANDIDATE" = nginx ]; then
  mkdir -p "$TMP/slow"
  cat >"$TMP/slow/nginx.conf" <<EOF
load_module $ECHO_MODULE;
user root;
pid $TMP/slow/nginx.pid;
error_log $TMP/slow/error.log warn;
worker_processes 1;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    client_body_temp_path $TMP/slow/body;
    proxy_temp_path $TMP/slow/proxy;
    fastcgi_temp_path $TMP/slow/fastcgi;
    uwsgi_temp_path $TMP/slow/uwsgi;
    scgi_temp_path $TMP/slow/scgi;
    server {
        listen 127.0.0.1:$SLOW backlog=4096;
        location / { echo_sleep $(awk -v ms="$SHADOW_DELAY_MS" 'BEGIN { printf "%.3f", ms / 1000 }'); echo -n ok; }
    }
}
EOF
  nginx -t -q -c "$TMP/slow/nginx.conf" -p "$TMP/slow" 2>"$TMP/slow/t.err" || { cat "$TMP/slow/t.err" >&2; die "slow candidate nginx config"; }
  start slow nice -n "$CANDIDATE_NICE" nginx -c "$TMP/slow/nginx.conf" -p "$TMP/slow" -g 'daemon off;'
else
  start slow nice -n "$CANDIDATE_NICE" python3 "$HERE/helpers.py" slow-server "$SLOW" "$SHADOW_DELAY_MS"
fi
start nginx nginx -c "$TMP/px/nginx.conf" -p "$TMP/px" -g 'daemon off;'
start haproxy haproxy -db -f "$TMP/haproxy.cfg"
start_strangler() { # NAME ROUTES PORT RUST_LOG [BINARY]
  start "$1" env RUST_LOG="$4" "${5:-$TMP/strangler}" run --routes "$2" --listen "127.0.0.1:$3" \
    --admin "127.0.0.1:$(($3 + 1))" --state-dir "$TMP/$1-state" --workers "$WORKERS"
}
start_strangler strangler "$TMP/s-main" "$S_MAIN" warn
start_strangler strangler_1k "$TMP/s-1k" "$S_1K" warn
start_strangler strangler_log "$TMP/s-main" "$S_LOG" info
start_strangler strangler_shadow "$TMP/s-shadow" "$S_SHADOW" warn
if [ -n "$BASELINE" ]; then
  start_strangler baseline "$TMP/s-main" "$S_BASE" warn "$TMP/strangler-baseline"
fi

wait_http "http://127.0.0.1:$UP/" upstream
wait_http "http://127.0.0.1:$SLOW/" slow
wait_http "http://127.0.0.1:$N_MAIN/" nginx
wait_http "http://127.0.0.1:$H_MAIN/" haproxy
wait_http "http://127.0.0.1:$S_MAIN/" strangler
wait_http "http://127.0.0.1:$S_1K/" strangler_1k
wait_http "http://127.0.0.1:$S_LOG/" strangler_log
wait_http "http://127.0.0.1:$S_SHADOW/" strangler_shadow
if [ -n "$BASELINE" ]; then wait_http "http://127.0.0.1:$S_BASE/" baseline; fi
for url in "http://127.0.0.1:$S_MAIN/static/64k.bin" "http://127.0.0.1:$N_MAIN/static/64k.bin" \
           "http://127.0.0.1:$H_MAIN/static/64k.bin" "http://127.0.0.1:$S_1K$ROUTE1K_PATH" \
           "http://127.0.0.1:$N_1K$ROUTE1K_PATH" "http://127.0.0.1:$H_1K$ROUTE1K_PATH" \
           "http://127.0.0.1:$N_MIRROR/" "http://127.0.0.1:$N_LOG/" "http://127.0.0.1:$H_LOG/"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url")
  [ "$code" = 200 ] || die "$url answered $code"
done

# ------------------------------------------------------------ measuring
CLK_TCK=$(getconf CLK_TCK)
pids_of() { # instance -> the PIDs whose CPU counts (nginx: master + workers)
  local pid
  case "$1" in
    direct) pid=$PID_upstream ;;
    nginx*) pid=$PID_nginx ;;
    haproxy*) pid=$PID_haproxy ;;
    strangler) pid=$PID_strangler ;;
    strangler-1k) pid=$PID_strangler_1k ;;
    strangler-log) pid=$PID_strangler_log ;;
    strangler-shadow) pid=$PID_strangler_shadow ;;
    baseline) pid=$PID_baseline ;;
    *) die "unknown instance $1" ;;
  esac
  echo "$pid"
  cat "/proc/$pid/task/$pid/children" 2>/dev/null || true
}
cpu_ticks() { # PIDS... -> "utime+stime stime" in ticks, summed
  local total=0 kernel=0 pid t s
  for pid in "$@"; do
    read -r t s < <(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13, $13}') || true
    total=$((total + ${t:-0})); kernel=$((kernel + ${s:-0}))
  done
  echo "$total $kernel"
}
status_kb() { # FIELD PIDS... -> summed kB
  local field=$1 total=0 pid v; shift
  for pid in "$@"; do
    v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null) || v=0
    total=$((total + ${v:-0}))
  done
  echo $total
}
kv() { # KEY LINE -> value of KEY=value
  sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2" | head -1
}

RAW="$TMP/raw.tsv"
printf 'round\tscenario\ttarget\tinstance\trps\tp50\tp99\tp999\terrors\tcpu_s\trequests\tsys_s\n' >"$RAW"
record() { # round scenario target instance rps p50 p99 p999 errors cpu_s requests sys_s
  (IFS=$'\t'; echo "$*") >>"$RAW"
}

# One measured run. TOOL is wrk, h2load or oha; the rest of the arguments go to the tool.
# Mirrors strangler-shadow dropped so far (queue full or all slots busy).
shadow_dropped() {
  curl -s --max-time 5 "http://127.0.0.1:$((S_SHADOW + 1))/metrics" |
    awk '/^strangler_shadow_requests_total\{/ && /outcome="dropped"/ { n += $NF } END { printf "%d", n }'
}

measure() { # ROUND SCENARIO TARGET INSTANCE TOOL URL [args...]
  local round=$1 scenario=$2 target=$3 instance=$4 tool=$5 url=$6; shift 6
  local pids c0 c1 out line rps p50 p99 p999 errors requests d0=""
  pids=$(pids_of "$instance")
  [ "$instance" = strangler-shadow ] && d0=$(shadow_dropped)
  c0=$(cpu_ticks $pids)
  case "$tool" in
    wrk)
      out=$(timeout $((DURATION + 30)) wrk -t1 -d"${DURATION}s" --latency -s "$HERE/report.lua" "$@" "$url" 2>&1) || true
      line=$(grep '^RESULT' <<<"$out" || true)
      [ -n "$line" ] || { log "wrk failed: $out"; return 0; }
      requests=$(kv requests "$line")
      rps=$(awk -v r="$requests" -v d="$(kv duration_us "$line")" 'BEGIN {printf "%.1f", r / (d / 1e6)}')
      p50=$(kv p50 "$line"); p99=$(kv p99 "$line"); p999=$(kv p999 "$line"); errors=$(kv errors "$line")
      ;;
    h2load)
      rm -f "$TMP/h2.log"
      out=$(timeout $((DURATION + 30)) h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$DURATION" \
        --log-file="$TMP/h2.log" "$url" 2>&1) || true
      rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
      requests=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' <<<"$out")
      [ -n "$rps" ] && [ -n "$requests" ] || { log "h2load failed: $out"; return 0; }
      errors=$(sed -n 's/^requests: .* \([0-9]*\) failed, \([0-9]*\) errored.*/\1 \2/p' <<<"$out" | awk '{print $1 + $2}')
      line=$(python3 "$HERE/helpers.py" h2-latency "$TMP/h2.log")
      p50=$(kv p50 "$line"); p99=$(kv p99 "$line"); p999=$(kv p999 "$line")
      errors=$((errors + $(kv status_errors "$line")))
      ;;
    oha)
      out=$(timeout $((DURATION + 30)) oha -z "${DURATION}s" --no-tui --output-format json "$@" "$url" 2>"$TMP/oha.err") || true
      printf '%s' "$out" >"$TMP/oha.json"
      line=$(python3 "$HERE/helpers.py" oha-json "$TMP/oha.json" 2>/dev/null || true)
      [ -n "$line" ] || { log "oha failed: $(cat "$TMP/oha.err")"; return 0; }
      requests=$(kv requests "$line"); rps=$(kv rps "$line")
      p50=$(kv p50 "$line"); p99=$(kv p99 "$line"); p999=$(kv p999 "$line"); errors=$(kv errors "$line")
      ;;
  esac
  c1=$(cpu_ticks $pids)
  local cpu_s sys_s
  cpu_s=$(awk -v a="${c0% *}" -v b="${c1% *}" -v t="$CLK_TCK" 'BEGIN {printf "%.3f", (b - a) / t}')
  sys_s=$(awk -v a="${c0#* }" -v b="${c1#* }" -v t="$CLK_TCK" 'BEGIN {printf "%.3f", (b - a) / t}')
  record "$round" "$scenario" "$target" "$instance" "$rps" "$p50" "$p99" "$p999" "$errors" "$cpu_s" "$requests" "$sys_s"
  # Every request is mirrored (100%): the share dropped during this run.
  if [ -n "$d0" ]; then
    printf '%s\t%s\t%s\t%s\n' "$round" "$scenario" "$(($(shadow_dropped) - d0))" "$requests" >>"$TMP/shadow.tsv"
  fi
  log "round $round  $(printf '%-11s %-9s' "$scenario" "$target")  $(printf '%9.0f req/s' "$rps")  p50 ${p50}µs  p99 ${p99}µs  p99.9 ${p999}µs  cpu ${cpu_s}s  errors ${errors}"
  sleep 0.5
}

# The baseline binary's line, when there is one: TOOL URL [args...]
base_target() {
  [ -n "$BASELINE" ] || return 0
  echo "baseline baseline $*"
}

# scenario -> "target instance tool url args" lines
targets_of() {
  local s=$1 w="-c$CONNS" u=127.0.0.1
  case "$s" in
    get)
      echo "direct direct wrk http://$u:$UP/ $w"
      echo "strangler strangler wrk http://$u:$S_MAIN/ $w"
      base_target wrk "http://$u:$S_BASE/" $w
      echo "nginx nginx wrk http://$u:$N_MAIN/ $w"
      echo "haproxy haproxy wrk http://$u:$H_MAIN/ $w" ;;
    64k)
      echo "direct direct wrk http://$u:$UP/static/64k.bin $w"
      echo "strangler strangler wrk http://$u:$S_MAIN/static/64k.bin $w"
      base_target wrk "http://$u:$S_BASE/static/64k.bin" $w
      echo "nginx nginx wrk http://$u:$N_MAIN/static/64k.bin $w"
      echo "haproxy haproxy wrk http://$u:$H_MAIN/static/64k.bin $w" ;;
    close)
      echo "direct direct wrk http://$u:$UP/ $w -s $HERE/close.lua"
      echo "strangler strangler wrk http://$u:$S_MAIN/ $w -s $HERE/close.lua"
      base_target wrk "http://$u:$S_BASE/" $w -s "$HERE/close.lua"
      echo "nginx nginx wrk http://$u:$N_MAIN/ $w -s $HERE/close.lua"
      echo "haproxy haproxy wrk http://$u:$H_MAIN/ $w -s $HERE/close.lua" ;;
    upload)
      local up="-c$UPLOAD_CONNS -s $HERE/upload.lua"
      echo "direct direct wrk http://$u:$UP/upload $up"
      echo "strangler strangler wrk http://$u:$S_MAIN/upload $up"
      base_target wrk "http://$u:$S_BASE/upload" $up
      echo "nginx nginx wrk http://$u:$N_MAIN/upload $up"
      echo "haproxy haproxy wrk http://$u:$H_MAIN/upload $up" ;;
    routes1k)
      echo "strangler strangler-1k wrk http://$u:$S_1K$ROUTE1K_PATH $w"
      echo "nginx nginx-1k wrk http://$u:$N_1K$ROUTE1K_PATH $w"
      echo "haproxy haproxy-1k wrk http://$u:$H_1K$ROUTE1K_PATH $w" ;;
    h2)
      [ $HAVE_H2LOAD = 1 ] || return 0
      echo "direct direct h2load http://$u:$UP_H2/"
      echo "strangler strangler h2load http://$u:$S_MAIN/"
      base_target h2load "http://$u:$S_BASE/"
      echo "nginx nginx h2load http://$u:$N_H2/"
      echo "haproxy haproxy h2load http://$u:$H_H2/" ;;
    logs)
      echo "strangler strangler-log wrk http://$u:$S_LOG/ $w"
      echo "nginx nginx-log wrk http://$u:$N_LOG/ $w"
      echo "haproxy haproxy-log wrk http://$u:$H_LOG/ $w" ;;
    headers)
      echo "strangler strangler wrk http://$u:$S_MAIN/ $w"
      echo "nginx nginx-headers wrk http://$u:$N_HDR/ $w"
      echo "haproxy haproxy-headers wrk http://$u:$H_HDR/ $w" ;;
    shadow)
      echo "strangler strangler-shadow wrk http://$u:$S_SHADOW/ $w"
      echo "nginx nginx-mirror wrk http://$u:$N_MIRROR/ $w" ;;
    rate-get)
      [ $HAVE_OHA = 1 ] || return 0
      local q="-c $CONNS -q $RATE --latency-correction -w"
      echo "direct direct oha http://$u:$UP/ $q"
      echo "strangler strangler oha http://$u:$S_MAIN/ $q"
      base_target oha "http://$u:$S_BASE/" $q
      echo "nginx nginx oha http://$u:$N_MAIN/ $q"
      echo "haproxy haproxy oha http://$u:$H_MAIN/ $q" ;;
    rate-shadow)
      [ $HAVE_OHA = 1 ] || return 0
      local q="-c $CONNS -q $RATE --latency-correction -w"
      echo "strangler strangler-shadow oha http://$u:$S_SHADOW/ $q"
      echo "nginx nginx-mirror oha http://$u:$N_MIRROR/ $q" ;;
  esac
}


runs=0
for s in $SCENARIOS; do runs=$((runs + $(targets_of "$s" | wc -l))); done
log "$runs runs per round x $ROUNDS rounds x ${DURATION}s: about $(( (runs * (DURATION + 1) * ROUNDS + 90) / 60 )) min"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# Warm-up: fill every pool, fault in every page; not recorded.
for url in "$UP" "$S_MAIN" ${BASELINE:+"$S_BASE"} "$N_MAIN" "$H_MAIN" "$S_1K" "$N_1K" "$H_1K" "$S_LOG" "$N_LOG" "$H_LOG" "$N_HDR" "$H_HDR" "$S_SHADOW" "$N_MIRROR"; do
  timeout 20 wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$url/" >/dev/null 2>&1 || true
done

for round in $(seq 1 "$ROUNDS"); do
  for s in $SCENARIOS; do
    mapfile -t lines < <(targets_of "$s")
    n=${#lines[@]}
    [ "$n" -gt 0 ] || continue
    # Rotate the order each round so no target always runs first.
    for k in $(seq 0 $((n - 1))); do
      # shellcheck disable=SC2086
      measure "$round" "$s" ${lines[$(((k + round - 1) % n))]}
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------- memory
RSS="$TMP/rss.tsv"
printf 'instance\thwm_kb\trss_before_kb\trss_idle_kb\tidle_open\n' >"$RSS"
idle_test() { # INSTANCE PORT
  local pids hwm before after ready="" pid
  pids=$(pids_of "$1")
  hwm=$(status_kb VmHWM $pids)
  if [ "$IDLE_CONNS" -le 0 ]; then
    printf '%s\t%s\t\t\t\n' "$1" "$hwm" >>"$RSS"; return 0
  fi
  sleep 2
  before=$(status_kb VmRSS $pids)
  python3 "$HERE/helpers.py" idle-conns 127.0.0.1 "$2" "$IDLE_CONNS" 30 >"$TMP/idle.out" 2>&1 &
  pid=$!
  PIDS+=($pid)
  for _ in $(seq 1 600); do
    ready=$(grep '^READY' "$TMP/idle.out" || true)
    [ -n "$ready" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  # Read once it stops falling: freed buffers go back to the system over a
  # few seconds (strangler parks after 1 s of quiet, then jemalloc purges),
  # and a single early reading lands on the slope.
  after=$(status_kb VmRSS $pids)
  local now
  for _ in $(seq 1 30); do
    sleep 0.5
    now=$(status_kb VmRSS $pids)
    if [ $((after - now)) -le $((after / 100)) ]; then after=$now; break; fi
    after=$now
  done
  kill $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  [ -n "$ready" ] || log "idle test on $1 did not finish: $(cat "$TMP/idle.out")"
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$hwm" "$before" "$after" "$(kv alive "$ready")" >>"$RSS"
  log "idle $1: $ready; RSS ${before} kB -> ${after} kB"
}
idle_test strangler "$S_MAIN"
idle_test nginx "$N_MAIN"
idle_test haproxy "$H_MAIN"
for inst in strangler-1k strangler-log strangler-shadow ${BASELINE:+baseline} direct; do
  printf '%s\t%s\t\t\t\n' "$inst" "$(status_kb VmHWM $(pids_of $inst))" >>"$RSS"
done

# What became of the mirrored requests: a shadow that keeps the client
# fast by dropping its mirrors would show it here.
SHADOW_OUTCOMES=$(curl -s --max-time 5 "http://127.0.0.1:$((S_SHADOW + 1))/metrics" |
  awk '/^strangler_shadow_requests_total\{/ { match($0, /outcome="[a-z]+"/); o = substr($0, RSTART + 9, RLENGTH - 10); n[o] += $NF }
       END { for (o in n) printf "%s=%d ", o, n[o] }')
log "shadow outcomes: $SHADOW_OUTCOMES"

# -------------------------------------------------------------- report
version() { "$@" 2>&1 | head -1 || true; }
tools="$(version nginx -v | sed 's/.*version: //'), $(version haproxy -v | cut -d' ' -f1-3), $(version wrk -v | cut -d' ' -f1-2)"
if [ $HAVE_H2LOAD = 1 ]; then tools="$tools, $(version h2load --version)"; fi
if [ $HAVE_OHA = 1 ]; then tools="$tools, $(version oha --version)"; fi
python3 - "$TMP/meta.json" <<EOF
import json, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
mem = next((l.split(":", 1)[1].strip() for l in open("/proc/meminfo") if l.startswith("MemTotal")), "?")
json.dump({
    "date": "$(date -u '+%Y-%m-%d %H:%M UTC')", "workers": $WORKERS, "rounds": $ROUNDS, "duration": $DURATION,
    "nproc": "$(nproc)", "kernel": "$(uname -r)", "cpu": cpu, "mem": "memory " + mem,
    "load_before": "$LOAD_BEFORE", "load_after": "$LOAD_AFTER", "commit": "$COMMIT",
    "tools": """$tools""", "command": """$COMMAND""", "conns": $CONNS, "upload_conns": $UPLOAD_CONNS,
    "h2_conns": $H2_CONNS, "h2_streams": $H2_STREAMS, "shadow_delay_ms": $SHADOW_DELAY_MS, "candidate_nice": $CANDIDATE_NICE, "candidate": "$CANDIDATE",
    "shadow_outcomes": "$SHADOW_OUTCOMES",
    "rate": $([ $HAVE_OHA = 1 ] && echo "$RATE" || echo None),
    "baseline": """$BASELINE""",
}, open(sys.argv[1], "w"))
EOF
if [ $APPEND = 1 ]; then
  python3 "$HERE/helpers.py" report "$RAW" "$RSS" "$TMP/meta.json" "$RESULTS"
  log "appended to $RESULTS"
else
  python3 "$HERE/helpers.py" report "$RAW" "$RSS" "$TMP/meta.json" /dev/null
fi
