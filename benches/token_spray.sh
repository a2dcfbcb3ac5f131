#!/usr/bin/env bash
# Fresh-token spray benchmark: one address sends N never-seen (invalid) access
# tokens, CONC at a time; then a user on another address presents a token the
# proxy has never seen. Prints the sprayer's statuses, how many verify calls
# the spray sent to LINE, and the user's status. Default [limits]
# (fresh_tokens_per_minute = 600).
#
#   benches/token_spray.sh                       # N=5000 CONC=32
#   BIN=/path/to/other/line-auth-proxy LIMITS=none benches/token_spray.sh
#
# Everything is on 127.0.0.1: the LINE Platform is the in-process mock.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000}
CONC=${CONC:-32}
echo "== building (release)"
cargo build --release --quiet --bin line-auth-proxy --example loadbench
BIN=${BIN:-$PWD/target/release/line-auth-proxy}
LB=$PWD/target/release/examples/loadbench
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

"$LB" fixtures 0 > "$TMP/fixtures.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 500); do grep -q READY "$TMP/fixtures.out" 2>/dev/null && break; sleep 0.02; done
read -r _ UP_PORT LINE_PORT < <(grep READY "$TMP/fixtures.out")
cat > "$TMP/proxy.toml" <<T
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
url = "http://127.0.0.1:$UP_PORT"
[line]
channel_ids = ["1234567890"]
api_base_url = "http://127.0.0.1:$LINE_PORT"
T
RUST_LOG="info,access=off" "$BIN" --config "$TMP/proxy.toml" 2> "$TMP/proxy.log" &
PIDS+=($!)
for _ in $(seq 1 500); do grep -q "line-auth-proxy ready" "$TMP/proxy.log" 2>/dev/null && break; sleep 0.02; done
if ! grep -q "line-auth-proxy ready" "$TMP/proxy.log"; then echo "the proxy did not start:" >&2; cat "$TMP/proxy.log" >&2; exit 1; fi
PORT=$(grep "line-auth-proxy ready" "$TMP/proxy.log" | sed -E 's/.*listen=[^ ]*:([0-9]+).*/\1/')
ADMIN=$(grep "line-auth-proxy ready" "$TMP/proxy.log" | sed -E 's/.*admin=[^ ]*:([0-9]+).*/\1/')
echo "== $N fresh invalid tokens from one address, $CONC at a time"
"$LB" spray "http://127.0.0.1:$PORT" "http://127.0.0.1:$ADMIN" "$N" "$CONC"
