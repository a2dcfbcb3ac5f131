#!/usr/bin/env bash
# What a forward-auth check and a signed assertion cost: wrk against the same
# proxy binary in four set-ups, a cached access token each time, measuring the
# proxy process's CPU per request (utime + stime over the requests wrk made):
#
#   proxy                 the proxy path to the plain upstream (the baseline)
#   proxy + assertion     the same with [assertion] on (Ed25519 and P-256 keys)
#   forward-auth          GET forward_auth.path: verdict + 200 with the identity
#                         headers, nothing forwarded (what an ingress asks)
#
#   benches/forward_auth.sh                  # DURATION=10 CONNS=32
#
# Servers on core 0, wrk on core 1 when there are two cores. Everything is on
# 127.0.0.1; the LINE Platform is the in-process mock.
set -euo pipefail
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
source "$(dirname "$0")/common.sh"
command -v wrk >/dev/null 2>&1 || { echo "== installing wrk (Debian)"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
if [ "$(nproc)" -ge 2 ]; then SERVER="taskset -c 0"; LOAD="taskset -c 1"; else SERVER=""; LOAD=""; fi
HZ=$(getconf CLK_TCK)
TOKEN="bench-forward-auth"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_fixtures
[ -n "$SERVER" ] && taskset -a -p -c 0 "${PIDS[0]}" > /dev/null
keys() {
    case $1 in
        EdDSA) openssl genpkey -algorithm ed25519 -out "$TMP/$1.pem" 2>/dev/null ;;
        ES256) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/$1.pem" 2>/dev/null ;;
    esac
    chmod 600 "$TMP/$1.pem"
}

printf '| set-up | requests/s | p99 | proxy CPU per request |\n| --- | --- | --- | --- |\n'
measure() { # <label> <path>
    local url="http://127.0.0.1:$PROXY_PORT$2"
    $LOAD wrk -t1 -c"$CONNS" -d2s -H "Authorization: Bearer $TOKEN" "$url" > /dev/null
    local before after requests
    before=$(cpu_ticks "$PROXY_PID")
    $LOAD wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "$url" > "$TMP/wrk-$1.txt"
    after=$(cpu_ticks "$PROXY_PID")
    requests=$(awk '/requests in/ {print $1}' "$TMP/wrk-$1.txt")
    if grep -q "Non-2xx" "$TMP/wrk-$1.txt"; then echo "!! $1: non-2xx answers" >&2; grep Non-2xx "$TMP/wrk-$1.txt" >&2; exit 1; fi
    printf '| %s | %s | %s | %s µs |\n' "$1" "$(awk '/Requests\/sec/ {print $2}' "$TMP/wrk-$1.txt")" \
        "$(awk '$1=="99%" {print $2}' "$TMP/wrk-$1.txt")" \
        "$(python3 -c "print(round(($after-$before)*1e6/$HZ/$requests, 2))")"
}
run() { # <label> <extra toml> <path>
    write_config "$1" "$2"
    PROXY_LOG="warn,line_auth_proxy=info,access=off" start_proxy "$1"
    [ -n "$SERVER" ] && taskset -a -p -c 0 "$PROXY_PID" > /dev/null
    measure "$1" "$3"
    kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true
}
keys EdDSA
keys ES256
run "proxy" "" /api/x
run "proxy + assertion (EdDSA)" "[assertion]
enabled = true
key_file = \"$TMP/EdDSA.pem\"" /api/x
run "proxy + assertion (ES256)" "[assertion]
enabled = true
key_file = \"$TMP/ES256.pem\"" /api/x
run "forward-auth" "[forward_auth]
enabled = true" /_auth/verify
run "forward-auth + assertion (EdDSA)" "[forward_auth]
enabled = true
[assertion]
enabled = true
key_file = \"$TMP/EdDSA.pem\"" /_auth/verify
