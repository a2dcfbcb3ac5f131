#!/usr/bin/env bash
# Builds the final stage of deploy/Dockerfile from a binary built here and
# starts the image: no registry is needed (the builder stage's base image is
# not pulled; the binary it would build is built on this machine the same way).
#
#   deploy/image-check.sh
#
# It proves, of the image that comes out:
#   - the final stage's instructions build (buildah, vfs storage, chroot);
#   - it is under 20 MB, runs as uid 65532 by default, its entrypoint is the
#     binary, it holds that one file; the proxy in it idles under 10 MB RSS;
#   - the binary inside starts from a mounted configuration and answers
#     /healthz and /readyz on the admin port;
#   - names resolve from the container's /etc/hosts (what the kubelet mounts,
#     hostAliases included): the upstream is named `upstream.image-check`;
#   - a request with a token is verified (against the bench's mock LINE on
#     127.0.0.1, never the real one) and forwarded: 200; one without a token
#     is 401.
# Needs root, curl, pgrep (procps), python3, buildah and musl-tools (Debian;
# the last two installed when absent) and rustup's musl target (added when
# absent; rustup must reach its download server for that).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=x86_64-unknown-linux-musl
TMP=$(mktemp -d)
PIDS=()
export BUILDAH_ISOLATION=chroot
STORE=(--storage-driver vfs --root "$TMP/storage" --runroot "$TMP/run")
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    buildah "${STORE[@]}" rm --all >/dev/null 2>&1 || true
    buildah "${STORE[@]}" rmi --all --force >/dev/null 2>&1 || true
    # Whatever buildah left mounted under the store, then the store.
    { grep -o " $TMP/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$TMP" 2>/dev/null || true
}
trap cleanup EXIT
fail() { echo "image check FAILED: $*" >&2; exit 1; }

if ! command -v buildah >/dev/null || ! command -v musl-gcc >/dev/null; then
    echo "installing buildah and musl-tools (Debian)"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends buildah musl-tools >/dev/null
fi
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"

echo "-- the production binary, static (musl)"
cargo build --release --locked --target "$TARGET" --bin line-auth-proxy \
    --no-default-features --features otel --target-dir target/image
BIN=target/image/$TARGET/release/line-auth-proxy
# ldd says "statically linked" of a static-pie binary, "not a dynamic
# executable" of a static one; anything else lists libraries.
ldd "$BIN" 2>&1 | grep -qE "statically linked|not a dynamic" || fail "$BIN is not statically linked"

echo "-- the final stage of deploy/Dockerfile, from that binary"
# The lines from `FROM scratch` to the end, the binary copied from the build
# context instead of the builder stage: every other line as written.
CONTEXT=$TMP/context
mkdir -p "$CONTEXT"
cp "$BIN" "$CONTEXT/line-auth-proxy"
awk '/^FROM scratch/ {on = 1} on' deploy/Dockerfile > "$TMP/final.Dockerfile"
[ "$(grep -c -- '--from=builder' "$TMP/final.Dockerfile")" = 1 ] \
    || fail "the final stage should copy exactly one thing from the builder"
grep -q '^COPY --from=builder /out/line-auth-proxy ' "$TMP/final.Dockerfile" \
    || fail "the final stage should copy /out/line-auth-proxy from the builder"
sed -i 's|^COPY --from=builder /out/line-auth-proxy |COPY line-auth-proxy |' "$TMP/final.Dockerfile"
buildah "${STORE[@]}" bud --quiet --layers=false -f "$TMP/final.Dockerfile" -t localhost/line-auth-proxy:check "$CONTEXT" >/dev/null

# The image's configuration (OCI), as a runtime reads it.
buildah "${STORE[@]}" inspect --type image localhost/line-auth-proxy:check > "$TMP/inspect.json"
config() { python3 -c "import json, sys; c = json.load(open(sys.argv[1]))['OCIv1']['config']; print($1)" "$TMP/inspect.json"; }
user=$(config "c.get('User', '')")
entrypoint=$(config "json.dumps(c.get('Entrypoint'))")
[ "$user" = "65532:65532" ] || fail "the image's user is '$user', not 65532:65532"
[ "$entrypoint" = '["/usr/local/bin/line-auth-proxy"]' ] || fail "entrypoint $entrypoint"
CTR=$(buildah "${STORE[@]}" from --quiet localhost/line-auth-proxy:check)
MNT=$(buildah "${STORE[@]}" mount "$CTR")
files=$(cd "$MNT" && find . -type f | sort | tr '\n' ' ')
bytes=$(du -sb "$MNT" | cut -f1)
[ "$files" = "./usr/local/bin/line-auth-proxy " ] || fail "the image holds more than the binary: $files"
[ "$bytes" -lt 20000000 ] || fail "the image is $bytes bytes (budget: 20 MB)"
echo "   user $user, entrypoint $entrypoint, one file, $bytes bytes"

echo "-- starting it"
# The bench fixtures (an upstream and a mock LINE), debug build: `cargo test
# --all-targets` has built it already in CI.
LB=target/debug/examples/loadbench
cargo build --locked --quiet --example loadbench
"$LB" fixtures 0 > "$TMP/fixtures.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 500); do grep -q READY "$TMP/fixtures.out" && break; sleep 0.02; done
read -r _ UP LINE < <(grep READY "$TMP/fixtures.out") || fail "the bench fixtures did not start"
mkdir -p "$TMP/config"
cat > "$TMP/config/config.toml" <<TOML
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[upstream]
# A name only the container's /etc/hosts knows.
url = "http://upstream.image-check:$UP"

[line]
channel_ids = ["1234567890"]
api_base_url = "http://127.0.0.1:$LINE"
TOML
printf '127.0.0.1 localhost\n127.0.0.1 upstream.image-check\n' > "$TMP/hosts"
chmod -R a+rX "$TMP/config" "$TMP/hosts"
# The image's own user and entrypoint; the host's network (chroot isolation),
# the configuration and /etc/hosts mounted as the kubelet would.
buildah "${STORE[@]}" run --network host --no-hosts --user "$user" --env "RUST_LOG=${RUST_LOG:-info}" \
    --volume "$TMP/config:/etc/line-auth-proxy:ro" --volume "$TMP/hosts:/etc/hosts:ro" \
    "$CTR" -- $(config "' '.join(c['Entrypoint'] + c.get('Cmd', []))") > "$TMP/proxy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 500); do grep -qs "line-auth-proxy ready" "$TMP/proxy.log" && break; sleep 0.02; done
ready=$(grep -m1 "line-auth-proxy ready" "$TMP/proxy.log") || { cat "$TMP/proxy.log" >&2; fail "the proxy in the image did not become ready"; }
PORT=$(sed -E 's/.* listen=[^ ]*:([0-9]+).*/\1/' <<< "$ready")
ADMIN=$(sed -E 's/.* admin=[^ ]*:([0-9]+).*/\1/' <<< "$ready")
pid=$(pgrep -f -n "line-auth-proxy --config /etc/line-auth-proxy/config.toml" || true)
[ -n "$pid" ] || fail "no proxy process"
idle_rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
[ "$idle_rss" -le 10240 ] || fail "idle RSS $idle_rss kB (budget: 10 MB)"
status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
[ "$(status "http://127.0.0.1:$ADMIN/healthz")" = 200 ] || fail "/healthz"
[ "$(status "http://127.0.0.1:$ADMIN/readyz")" = 200 ] || fail "/readyz"
[ "$(status "http://127.0.0.1:$PORT/x")" = 401 ] || fail "a request without a token was not 401"
got=$(status -H "Authorization: Bearer bench-image-check" "http://127.0.0.1:$PORT/x")
[ "$got" = 200 ] || { sleep 1.5; cat "$TMP/proxy.log" >&2; fail "a verified request to upstream.image-check answered $got"; }
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
[ "$uid" = 65532 ] || fail "the proxy runs as uid '$uid'"
echo "   /healthz 200, /readyz 200, no token 401, token 200 through upstream.image-check; uid $uid, idle RSS $idle_rss kB, $rss kB after"
echo "image check passed"
