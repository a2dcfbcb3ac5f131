# Shared by benches/nonce_flood.sh, token_spray.sh, silent_clients.sh and forward_auth.sh
# (sourced, not run): the release build, a temporary directory and the
# processes to stop on exit, the fixtures (upstream + mock LINE), and starting
# a proxy whose listeners bind port 0 and reading the ports it got.

cd "$(dirname "$0")/.."
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

# start_fixtures -> sets UP_PORT LINE_PORT
start_fixtures() {
    "$LB" fixtures 0 > "$TMP/fixtures.out" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 500); do grep -q READY "$TMP/fixtures.out" 2>/dev/null && break; sleep 0.02; done
    read -r _ UP_PORT LINE_PORT < <(grep READY "$TMP/fixtures.out")
}

# write_config <label> [more toml] -> $TMP/<label>.toml: both listeners on
# port 0, the fixtures as upstream and LINE, then whatever else is given.
write_config() {
    cat > "$TMP/$1.toml" <<T
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
url = "http://127.0.0.1:$UP_PORT"
[line]
channel_ids = ["1234567890"]
api_base_url = "http://127.0.0.1:$LINE_PORT"
${2:-}
T
}

# start_proxy <label> (config in $TMP/<label>.toml) -> sets PROXY_PID PROXY_PORT ADMIN_PORT
start_proxy() {
    RUST_LOG="${PROXY_LOG:-warn,line_auth_proxy=info}" "$BIN" --config "$TMP/$1.toml" 2> "$TMP/$1.log" &
    PROXY_PID=$!
    PIDS+=($PROXY_PID)
    for _ in $(seq 1 500); do grep -q "line-auth-proxy ready" "$TMP/$1.log" 2>/dev/null && break; sleep 0.02; done
    if ! grep -q "line-auth-proxy ready" "$TMP/$1.log"; then echo "the proxy did not start:" >&2; cat "$TMP/$1.log" >&2; exit 1; fi
    PROXY_PORT=$(grep "line-auth-proxy ready" "$TMP/$1.log" | sed -E 's/.*listen=[^ ]*:([0-9]+).*/\1/')
    ADMIN_PORT=$(grep "line-auth-proxy ready" "$TMP/$1.log" | sed -E 's/.*admin=[^ ]*:([0-9]+).*/\1/')
}
