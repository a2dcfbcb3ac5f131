#!/usr/bin/env bash
# Load benchmark: line-auth-proxy against a plain upstream and (when installed)
# a plain nginx proxy_pass hop, in the same run, with the same settings.
#
#   benches/load.sh                      # DURATION=10 CONNS=32 by default
#   DURATION=20 CONNS=64 benches/load.sh
#   CURVE="1 32 256 1024" IDLE_CONNS=10000 # the concurrency curve and the idle-connection row
#   ROUNDS=3 IDENTITIES="1000 100000 1000000" COLD_LOGINS=2000
#
# The cached-token, session, h2c and TLS rows are the median of ROUNDS rounds,
# the proxy's and nginx's alternating. nginx is configured as the proxy runs:
# one worker, `keepalive 64` to the upstream, access log on, keep-alive client
# connections never closed for their request count (`keepalive_requests`).
#
# Servers (upstream, mock LINE, line-auth-proxy, nginx) are pinned to core 0 and
# wrk to core 1 when the machine has two cores. Everything is on 127.0.0.1: the
# LINE Platform is the in-process mock and never receives benchmark traffic.
# Prints a table and writes benches/results/latest.{md,json} and chart.png.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
COLD_LOGINS=${COLD_LOGINS:-2000}
IDENTITIES=${IDENTITIES:-1000 100000 1000000}
ROUNDS=${ROUNDS:-3}
CURVE=${CURVE:-1 32 256 1024}
IDLE_CONNS=${IDLE_CONNS:-10000}
# c=1024 and 10000 idle connections need the descriptors (both ends are here).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
OUT=$ROOT/benches/results
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need h2load; then
    echo "== installing wrk, h2load (Debian)"; apt-get update -qq && apt-get install -y -qq wrk nghttp2-client >/dev/null
fi
if [ "$(nproc)" -ge 2 ]; then SERVER="taskset -c 0"; LOAD="taskset -c 1"; PINNED="servers on core 0, wrk on core 1"
else SERVER=""; LOAD=""; PINNED="one core: no pinning"; fi
HZ=$(getconf CLK_TCK)

echo "== building (release)"
cargo build --release --quiet --bin line-auth-proxy --example loadbench
BIN=$ROOT/target/release/line-auth-proxy
LB=$ROOT/target/release/examples/loadbench

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_http() { for _ in $(seq 1 500); do curl -sf -o /dev/null "$1" && return 0; sleep 0.02; done; echo "not ready: $1" >&2; return 1; }
cpu_ticks() { local t=0; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
# user_ticks <pids…>: the user-space part of cpu_ticks (the rest is the kernel's).
user_ticks() { local t=0; for pid in "$@"; do t=$((t + $(awk '{print $14}' "/proc/$pid/stat"))); done; echo "$t"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# fixtures <line_delay_ms> -> sets UP_PORT LINE_PORT
fixtures() {
    local out=$TMP/fixtures-$1.out
    $SERVER "$LB" fixtures "$1" > "$out" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 500); do grep -q READY "$out" 2>/dev/null && break; sleep 0.02; done
    read -r _ UP_PORT LINE_PORT < <(grep READY "$out")
}

# proxy <name> <extra toml> -> sets PROXY_PORT ADMIN_PORT PROXY_PID
# Both listeners bind port 0; the ready line names the ports they got.
proxy() {
    cat > "$TMP/$1.toml" <<EOF
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
${PROXY_SERVER:-}
[upstream]
url = "http://127.0.0.1:$UP_PORT"
[line]
channel_ids = ["1234567890"]
api_base_url = "http://127.0.0.1:$LINE_PORT"
$2
EOF
    RUST_LOG=${PROXY_LOG:-info} $SERVER "$BIN" --config "$TMP/$1.toml" 2> "$TMP/$1.log" &
    PROXY_PID=$!
    PIDS+=($PROXY_PID)
    for _ in $(seq 1 500); do grep -q "line-auth-proxy ready" "$TMP/$1.log" 2>/dev/null && break; sleep 0.02; done
    PROXY_PORT=$(grep "line-auth-proxy ready" "$TMP/$1.log" | sed -E 's/.*listen=[^ ]*:([0-9]+).*/\1/')
    ADMIN_PORT=$(grep "line-auth-proxy ready" "$TMP/$1.log" | sed -E 's/.*admin=[^ ]*:([0-9]+).*/\1/')
    wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
}

# run_wrk <label> <url> <header or ""> <pids to measure…>
# (WRK_CONNS: connections instead of CONNS; WRK_SCRIPT: a wrk Lua script.)
# Sets RPS, P50, P99 (ms) and CPU_US (server CPU µs per request) [label].
declare -A RPS P50 P99 CPU_US CPU_USER
run_wrk() {
    local label=$1 url=$2 header=$3; shift 3
    local conns=${WRK_CONNS:-$CONNS}
    local common=(-t1 -c"$conns")
    [ -n "$header" ] && common+=(-H "$header")
    [ -n "${WRK_SCRIPT:-}" ] && common+=(-s "$WRK_SCRIPT")
    # Warm-up (connections, caches), not measured.
    $LOAD wrk "${common[@]}" -d2s "$url" > /dev/null
    local before; before=$(cpu_ticks "$@")
    local user_before; user_before=$(user_ticks "$@")
    $LOAD wrk "${common[@]}" -d"${DURATION}s" --latency "$url" > "$TMP/wrk-$label.txt"
    local after; after=$(cpu_ticks "$@")
    local user_after; user_after=$(user_ticks "$@")
    local requests; requests=$(awk '/requests in/ {print $1}' "$TMP/wrk-$label.txt")
    RPS[$label]=$(awk '/Requests\/sec/ {print $2}' "$TMP/wrk-$label.txt")
    P50[$label]=$(to_ms "$(awk '$1=="50%" {print $2}' "$TMP/wrk-$label.txt")")
    P99[$label]=$(to_ms "$(awk '$1=="99%" {print $2}' "$TMP/wrk-$label.txt")")
    if [ "$#" -gt 0 ]; then
        CPU_US[$label]=$(python3 -c "print(round(($after-$before)*1e6/$HZ/$requests, 2))")
        CPU_USER[$label]=$(python3 -c "print(round(($user_after-$user_before)*1e6/$HZ/$requests, 2))")
    else
        CPU_US[$label]=""
        CPU_USER[$label]=""
    fi
    if grep -q "Non-2xx" "$TMP/wrk-$label.txt"; then echo "!! $label: non-2xx answers" >&2; grep Non-2xx "$TMP/wrk-$label.txt" >&2; fi
}

# run_h2load <label> <url> <header> <pids…>: 32 streams on 4 h2c connections.
run_h2load() {
    local label=$1 url=$2 header=$3; shift 3
    $LOAD h2load -t1 -c4 -m8 -D 2 -H "$header" "$url" > /dev/null
    local before; before=$(cpu_ticks "$@")
    local user_before; user_before=$(user_ticks "$@")
    $LOAD h2load -t1 -c4 -m8 -D "$DURATION" -H "$header" "$url" > "$TMP/h2load-$label.txt"
    local after; after=$(cpu_ticks "$@")
    local user_after; user_after=$(user_ticks "$@")
    local answered ok
    answered=$(awk '/^requests:/ {print $6}' "$TMP/h2load-$label.txt")
    ok=$(awk '/^status codes:/ {print $3}' "$TMP/h2load-$label.txt")
    [ "$ok" = "$answered" ] || echo "!! $label: $ok of $answered answered 2xx" >&2
    RPS[$label]=$(awk '/^finished in/ {print $4}' "$TMP/h2load-$label.txt")
    P50[$label]=""
    P99[$label]=""
    CPU_US[$label]=$(python3 -c "print(round(($after-$before)*1e6/$HZ/$answered, 2))")
    CPU_USER[$label]=$(python3 -c "print(round(($user_after-$user_before)*1e6/$HZ/$answered, 2))")
}

# median <label>: RPS, P50, P99, CPU_US, CPU_USER [label] from the medians of label-r1..ROUNDS.
median() {
    local label=$1 m i
    for m in RPS P50 P99 CPU_US CPU_USER; do
        local -n values=$m
        local got=()
        for i in $(seq 1 "$ROUNDS"); do got+=("${values[$label-r$i]:-}"); done
        values[$label]=$(printf '%s\n' "${got[@]}" | { grep . || true; } | sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}')
        unset -n values
    done
}
to_ms() { python3 -c "
v='$1'
import re
m=re.match(r'([0-9.]+)(us|ms|s)', v)
n=float(m.group(1)); u=m.group(2)
print(round(n/1000 if u=='us' else n*1000 if u=='s' else n, 3))"; }

echo "== fixtures, proxy ($PINNED)"
fixtures 0
# A session route beside the default access-token route: the session row.
head -c 32 /dev/urandom > "$TMP/session.key"
chmod 600 "$TMP/session.key"
proxy main "[limits]
connections = 0
[session]
key_files = [\"$TMP/session.key\"]
[[routes]]
path_prefix = \"/app/\"
auth = \"session\""
IDLE_RSS=$(rss_kb "$PROXY_PID")
TOKEN="bench-hot-token"
curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PROXY_PORT/api/x"
# The session cookie the exchange issues for the same token (a browser's).
SESSION=$(curl -sf -D - -o /dev/null -X POST -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PROXY_PORT/auth/session" \
    | awk 'tolower($1) == "set-cookie:" {split($2, pair, ";"); print pair[1]}')
[ -n "$SESSION" ] || { echo "the session exchange gave no cookie" >&2; exit 1; }
curl -sf -o /dev/null -H "Cookie: theme=dark; $SESSION" "http://127.0.0.1:$PROXY_PORT/app/x"

# TLS: one certificate for the proxy's listener and nginx's.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$TMP/tls.key" -out "$TMP/tls.crt" 2> /dev/null
MAIN_PID=$PROXY_PID MAIN_PORT=$PROXY_PORT
PROXY_SERVER="tls_cert_file = \"$TMP/tls.crt\"
tls_key_file = \"$TMP/tls.key\"" proxy tls $'[limits]\nconnections = 0'
TLS_PID=$PROXY_PID TLS_PORT=$PROXY_PORT
PROXY_PID=$MAIN_PID PROXY_PORT=$MAIN_PORT
curl -sfk -o /dev/null -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$TLS_PORT/api/x"

NGINX=""
if need nginx; then
    NGINX_PORT=$(free_port) NGINX_H2C_PORT=$(free_port) NGINX_TLS_PORT=$(free_port)
    mkdir -p "$TMP/nginx"
    cat > "$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log $TMP/nginx/access.log;
    keepalive_requests 100000000;
    upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        listen 127.0.0.1:$NGINX_H2C_PORT http2;
        listen 127.0.0.1:$NGINX_TLS_PORT ssl;
        ssl_certificate $TMP/tls.crt;
        ssl_certificate_key $TMP/tls.key;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    $SERVER nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' 2>> "$TMP/nginx/error.log" &
    NGINX_MASTER=$!
    PIDS+=($NGINX_MASTER)
    wait_http "http://127.0.0.1:$NGINX_PORT/"
    NGINX_PIDS=("$NGINX_MASTER" $(pgrep -P "$NGINX_MASTER" || true))
    NGINX=1
fi

echo "== wrk: direct to the upstream"
run_wrk direct "http://127.0.0.1:$UP_PORT/api/x" ""
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round of $ROUNDS: cached token, session cookie, h2c, TLS (the proxy, then nginx)"
    run_wrk "proxy-r$round" "http://127.0.0.1:$PROXY_PORT/api/x" "Authorization: Bearer $TOKEN" "$PROXY_PID"
    run_wrk "session-r$round" "http://127.0.0.1:$PROXY_PORT/app/x" "Cookie: theme=dark; $SESSION" "$PROXY_PID"
    run_h2load "h2c-r$round" "http://127.0.0.1:$PROXY_PORT/api/x" "Authorization: Bearer $TOKEN" "$PROXY_PID"
    run_wrk "tls-r$round" "https://127.0.0.1:$TLS_PORT/api/x" "Authorization: Bearer $TOKEN" "$TLS_PID"
    if [ -n "$NGINX" ]; then
        run_wrk "nginx-r$round" "http://127.0.0.1:$NGINX_PORT/api/x" "" "${NGINX_PIDS[@]}"
        run_h2load "nginx_h2c-r$round" "http://127.0.0.1:$NGINX_H2C_PORT/api/x" "Authorization: Bearer $TOKEN" "${NGINX_PIDS[@]}"
        run_wrk "nginx_tls-r$round" "https://127.0.0.1:$NGINX_TLS_PORT/api/x" "" "${NGINX_PIDS[@]}"
    fi
done
for label in proxy session h2c tls nginx nginx_h2c nginx_tls; do median "$label"; done
kill "$TLS_PID" 2>/dev/null || true

# The curve: CPU per request as concurrency grows (the row at $CONNS is above).
CURVE_JSON="["
for c in $CURVE; do
    echo "== curve: $c connections"
    WRK_CONNS=$c run_wrk "proxy-c$c" "http://127.0.0.1:$PROXY_PORT/api/x" "Authorization: Bearer $TOKEN" "$PROXY_PID"
    row="{\"conns\": $c, \"proxy_cpu_us\": ${CPU_US[proxy-c$c]}, \"proxy_rps\": ${RPS[proxy-c$c]}, \"proxy_p99_ms\": ${P99[proxy-c$c]}"
    if [ -n "$NGINX" ]; then
        WRK_CONNS=$c run_wrk "nginx-c$c" "http://127.0.0.1:$NGINX_PORT/api/x" "" "${NGINX_PIDS[@]}"
        row+=", \"nginx_cpu_us\": ${CPU_US[nginx-c$c]}, \"nginx_rps\": ${RPS[nginx-c$c]}, \"nginx_p99_ms\": ${P99[nginx-c$c]}"
    fi
    CURVE_JSON+="$row},"
done
CURVE_JSON="${CURVE_JSON%,}]"

# Memory of idle keep-alive client connections, each served once (a fresh
# proxy, so that the RSS before is its idle RSS).
echo "== $IDLE_CONNS idle keep-alive connections"
PROXY_SERVER="max_connections = 20000" proxy idle $'[limits]\nconnections = 0'
IDLE_BEFORE=$(rss_kb "$PROXY_PID")
coproc HOLD { python3 "$ROOT/benches/idle_conns.py" 127.0.0.1 "$PROXY_PORT" "$IDLE_CONNS" "$TOKEN"; }
read -r _ HELD <&"${HOLD[0]}"
sleep 1
IDLE_AFTER=$(rss_kb "$PROXY_PID")
UPSTREAM_OPEN=$(ss -Htnp state established "( dport = :$UP_PORT )" 2>/dev/null | grep -c "pid=$PROXY_PID," || true)
exec {HOLD[1]}>&-
wait "$HOLD_PID" 2>/dev/null || true
IDLE_JSON="{\"connections\": $HELD, \"rss_before_kb\": $IDLE_BEFORE, \"rss_after_kb\": $IDLE_AFTER, \"upstream_connections_open\": $UPSTREAM_OPEN}"

echo "== cold logins (mock LINE answering in 20 ms), coalescing"
fixtures 20
# 500 concurrent connections from one address: over the default limits.connections (256).
proxy cold $'[limits]\nconnections = 0\nfresh_tokens_per_minute = 0'
COLD_BEFORE=$(cpu_ticks "$PROXY_PID")
COLD=$("$LB" cold "http://127.0.0.1:$PROXY_PORT" "http://127.0.0.1:$ADMIN_PORT" "$COLD_LOGINS" 8)
COLD_AFTER=$(cpu_ticks "$PROXY_PID")
# The proxy's own CPU per login (LINE's 20 ms are waiting, not CPU).
COLD_CPU_US=$(python3 -c "print(round(($COLD_AFTER-$COLD_BEFORE)*1e6/$HZ/$COLD_LOGINS, 1))")
COALESCE=$("$LB" coalesce "http://127.0.0.1:$PROXY_PORT" "http://127.0.0.1:$ADMIN_PORT" 500)

# Distinct cached identities: RSS, and the CPU of a hit on a token drawn at
# random from all of them (a wrk Lua script; the 1000 row is the baseline).
fixtures 0
MAX_IDS=$(printf '%s\n' $IDENTITIES | sort -g | tail -1)
PROXY_LOG="warn,line_auth_proxy=info" proxy ids "[cache]
ttl_seconds = 3600
max_entries = $((MAX_IDS + MAX_IDS / 10 + 1000))
[limits]
connections = 0
fresh_tokens_per_minute = 0"
cat > "$TMP/tokens.lua" <<'EOF'
local n = tonumber(os.getenv("TOKENS"))
math.randomseed(7)
request = function()
    return wrk.format("GET", "/api/x", { ["Authorization"] = "Bearer bench-fill-" .. math.random(0, n - 1) })
end
EOF
IDS_JSON="["
for n in $IDENTITIES; do
    echo "== $n cached identities"
    FILLED=$("$LB" fill "http://127.0.0.1:$PROXY_PORT" "$n" 32)
    sleep 1
    rss=$(rss_kb "$PROXY_PID")
    entries=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^line_auth_proxy_cache_entries / {print $2}')
    TOKENS=$n WRK_SCRIPT=$TMP/tokens.lua run_wrk "ids-$n" "http://127.0.0.1:$PROXY_PORT/api/x" "" "$PROXY_PID"
    IDS_JSON+="{\"identities\": $n, \"entries\": ${entries:-0}, \"rss_kb\": $rss, \"cpu_us\": ${CPU_US[ids-$n]}, \"rps\": ${RPS[ids-$n]}, \"fill\": $FILLED},"
done
IDS_JSON="${IDS_JSON%,}]"

export DURATION CONNS ROUNDS PINNED IDLE_RSS COLD COLD_CPU_US COALESCE NGINX CURVE_JSON IDLE_JSON IDS_JSON
for label in direct proxy session h2c tls nginx nginx_h2c nginx_tls; do
    key=${label^^}
    export "RPS_$key=${RPS[$label]:-}" "P50_$key=${P50[$label]:-}" "P99_$key=${P99[$label]:-}" "CPU_$key=${CPU_US[$label]:-}" "USER_$key=${CPU_USER[$label]:-}"
done
export CPU_MODEL=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo) CORES=$(nproc)
python3 "$ROOT/benches/report.py" "$OUT"
