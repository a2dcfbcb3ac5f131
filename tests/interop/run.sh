#!/usr/bin/env bash
# The interop suite alone: installs the third-party servers and clients it runs
# (tests/setup.sh, cached between runs), then runs them against the proxy.
#   tests/interop/run.sh                 # all of it
#   tests/interop/run.sh nginx           # the tests whose names contain "nginx"
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/setup.sh
start=$SECONDS
cargo test --test interop -- "$@"
echo "interop: $((SECONDS - start)) s"
