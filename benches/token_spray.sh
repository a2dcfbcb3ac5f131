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
N=${N:-5000}
CONC=${CONC:-32}
source "$(dirname "$0")/common.sh"
start_fixtures
write_config proxy
PROXY_LOG="info,access=off" start_proxy proxy
echo "== $N fresh invalid tokens from one address, $CONC at a time"
"$LB" spray "http://127.0.0.1:$PROXY_PORT" "http://127.0.0.1:$ADMIN_PORT" "$N" "$CONC"
