#!/usr/bin/env bash
# Nonce flood benchmark: the proxy's RSS before, during and after a flood of
# nonce requests over one h2c connection, and whether another address still
# gets a nonce right after it. Three floods of N requests, with
# limits.nonces_per_minute = 0 (no per-minute budget: what the store allows):
#
#   one-address        from 127.0.0.1
#   hundred-addresses  from 100 addresses (X-Forwarded-For through a trusted
#                      127.0.0.1): enough to fill the store at 1000 each
#   every-address      each request from another address: the worst case for
#                      memory, and a store full of one-nonce holders
#
#   benches/nonce_flood.sh                        # N=100000 CONC=400
#   BIN=/path/to/other/line-auth-proxy benches/nonce_flood.sh   # compare a build
#   (for a build that has no [limits] section: LIMITS=none)
#
# Nonces live 10 s here (nonce.ttl_seconds = 10); the store keeps an expired one
# 60 s longer and sweeps every 10 s, so the "after expiry" reading is taken 85 s
# after the flood.
# Everything is on 127.0.0.1: the LINE Platform is the in-process mock.
set -euo pipefail
N=${N:-100000}
CONC=${CONC:-400}
source "$(dirname "$0")/common.sh"
start_fixtures

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v s="$1" '$1 == s {print $2}'; }

# flood <label> <server extra> <limits extra> [addresses]
flood() {
    cat > "$TMP/$1.toml" <<T
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
$2
[upstream]
url = "http://127.0.0.1:$UP_PORT"
[line]
channel_ids = ["1234567890"]
api_base_url = "http://127.0.0.1:$LINE_PORT"
id_token_verification = "remote"
[nonce]
ttl_seconds = 10
${3:+[limits]
$3}
[[routes]]
path_prefix = "/login"
auth = "id_token"
T
    start_proxy "$1"
    local pid=$PROXY_PID port=$PROXY_PORT
    sleep 0.5
    local base; base=$(rss_kb "$pid")
    echo "== $1: $N nonce requests, $CONC at a time"
    local out; out=$(env ${4:+SPRAY=$4} "$LB" nonces "http://127.0.0.1:$port" "$N" "$CONC")
    local peak; peak=$(rss_kb "$pid")
    # Another address right after the flood (Linux routes 127.0.0.0/8 to loopback).
    local other; other=$(curl -s -o /dev/null -w '%{http_code}' --interface 127.0.0.2 "http://127.0.0.1:$port/auth/nonce")
    sleep 85
    local after; after=$(rss_kb "$pid")
    echo "   answers: $out"
    echo "   another address during the flood: $other"
    awk -v b="$base" -v p="$peak" -v a="$after" 'BEGIN { printf "   RSS: baseline %.1f MiB, after the flood %.1f MiB (+%.1f), 85 s later %.1f MiB (+%.1f)\n", b/1024, p/1024, (p-b)/1024, a/1024, (a-b)/1024 }'
    echo "   nonces issued $(metric 'line_auth_proxy_nonces_total{event="issued"}'), expired $(metric 'line_auth_proxy_nonces_total{event="expired"}'), evicted $(metric 'line_auth_proxy_nonces_total{event="evicted"}')"
    kill "$pid"
}

if [ "${LIMITS:-}" = none ]; then NO_BUDGET=""; else NO_BUDGET="nonces_per_minute = 0"; fi
flood one-address "" "$NO_BUDGET"
TRUSTED='trusted_proxies = ["127.0.0.1/32"]'
flood hundred-addresses "$TRUSTED" "$NO_BUDGET" 100
flood every-address "$TRUSTED" "$NO_BUDGET" "$N"
