#!/usr/bin/env bash
# Soak: holds 80 % of the measured maximum throughput (of the same token mix,
# measured first for 20 s) for 10 minutes with a token mix (90 % cached, 9 %
# fresh, 1 % invalid), LINE answering 500 for 30 s in the middle, and samples the proxy's RSS and open file descriptors every
# 10 s (and, to explain them, its cached verdicts, its connections to LINE,
# LINE's verify calls, the requests sent and the proxy's CPU time). Fails (exit 1) if RSS grows by more than 10 % after the first minute,
# if any request fails outside the outage, or if any request with a token that
# could not be verified (fresh or invalid) is forwarded during it.
#
#   benches/soak.sh                     # SECONDS_TOTAL=600 FRACTION=0.8
#   SECONDS_TOTAL=120 benches/soak.sh   # a shorter run
#   RATE=5000 benches/soak.sh           # a fixed rate instead of 80 % of the max
#
# The proxy is pinned to core 0 and the load (mock LINE, upstream, client) to
# core 1 when there are two cores. Not part of .ci/run. Everything is on
# 127.0.0.1: the real LINE Platform never receives soak traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_TOTAL=${SECONDS_TOTAL:-600}
FRACTION=${FRACTION:-0.8}
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true
if [ "$(nproc)" -ge 2 ]; then SERVER="taskset -c 0"; LOAD="taskset -c 1"; else SERVER=""; LOAD=""; fi

echo "== building (release)"
cargo build --release --quiet --bin line-auth-proxy --example loadbench
BIN=$ROOT/target/release/line-auth-proxy
LB=$ROOT/target/release/examples/loadbench

if [ -z "${RATE:-}" ]; then
    # The maximum of the same mix (fresh tokens cost LINE calls, so it is
    # below what one cached token reaches): 20 s as fast as it goes.
    echo "== the maximum: the soak's token mix for 20 s, 128 connections, no outage"
    MAX=$($LOAD "$LB" soak 0 20 $SERVER "$BIN" | tail -1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["achieved_rate"])')
    RATE=$(python3 -c "print(int($MAX * $FRACTION))")
    echo "   max $MAX req/s; soaking at $RATE req/s"
fi

echo "== soak: $RATE req/s for $SECONDS_TOTAL s (LINE answers 500 for 30 s in the middle)"
set +e
$LOAD "$LB" soak "$RATE" "$SECONDS_TOTAL" $SERVER "$BIN" | tee "$TMP/soak.json"
CODE=${PIPESTATUS[0]}
set -e
mkdir -p "$ROOT/benches/results"
python3 - "$TMP/soak.json" "$ROOT/benches/results/soak.md" "${MAX:-}" "$(getconf CLK_TCK)" <<'EOF'
import json, sys, datetime
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
mx = sys.argv[3]
hz = int(sys.argv[4])
# The samples' details (cached verdicts, connections to LINE, and in the 10 s
# before: LINE verify calls, requests sent, proxy CPU ticks), from the first
# sample at 60 s or later.
pairs = list(zip(r["samples"], r["detail"]))
start = r["seconds"] // 2 - 15
after = [d for s, d in pairs if s[0] >= 60] or [[0, 0, 0, 0, 0]]
# Whole 10 s intervals from 60 s on, away from the outage: whether the
# schedule was kept (sent a second) and how busy the proxy was.
steady = [(s, d) for s, d in pairs[1:-1] if s[0] >= 70 and not start < s[0] < start + 40]
span = lambda v: f"{min(v)}-{max(v)}" if v else "n/a (no whole sample from 60 s on)"
sent_rates = span([d[3] // 10 for s, d in steady])
cpu = span([d[4] * 100 // (10 * hz) for s, d in steady])
at60 = after[0]
# A sample's calls are the 10 s before it: in the outage when all of them were.
outage = [d[2] for s, d in pairs if start + 10 <= s[0] <= start + 30] or [0]
normal = [d[2] for s, d in pairs if s[0] >= 20 and not start < s[0] < start + 40] or [0]
lines = [
    f"Soak {datetime.date.today().isoformat()}: {r['rate']} req/s"
    + (f" (80 % of the {mx} req/s the same mix reached unpaced)" if mx else "")
    + f" for {r['seconds']} s, 90 % cached / 9 % fresh / 1 % invalid tokens, LINE answering 500 for 30 s in the middle.",
    "",
    "| measure | value |",
    "| --- | ---: |",
    f"| requests sent (achieved rate) | {r['sent']} ({r['achieved_rate']} req/s) |",
    f"| across the outage's edges (only: no invalid token forwarded) | {r['across_edges']} |",
    f"| failed outside the outage | {r['failed_outside_outage']} |",
    f"| unverifiable tokens forwarded in the outage | {r['forwarded_unverified_in_outage']} |",
    f"| 503 in the outage | {r['outage_503']} |",
    f"| cached tokens served in the outage | {r['outage_200_cached']} |",
    f"| RSS at 60 s -> peak after | {r['rss_kb_at_60s'] / 1024:.1f} MiB -> {r['rss_kb_peak_after'] / 1024:.1f} MiB ({r['rss_growth_pct']} %) |",
    f"| RSS at 120 s -> peak after (informational) | {r['rss_kb_at_120s'] / 1024:.1f} MiB -> {r['rss_kb_peak_after_120s'] / 1024:.1f} MiB ({r['rss_growth_after_120s_pct']} %) |",
    f"| open fds (min-max) | {r['fds_min']}-{r['fds_max']} |",
    f"| cached verdicts at 60 s -> min-max after | {at60[0]} -> {min(d[0] for d in after)}-{max(d[0] for d in after)} |",
    f"| connections open to LINE (min-max after 60 s) | {min(d[1] for d in after)}-{max(d[1] for d in after)} |",
    f"| LINE verify calls a second, most in a 10 s sample (outside / in the outage) | {max(normal) // 10} / {max(outage) // 10} |",
    f"| requests sent a second, per 10 s sample from 60 s on outside the outage (min-max; the schedule is {r['rate']}) | {sent_rates} |",
    f"| proxy CPU, per 10 s sample from 60 s on outside the outage (min-max, % of one core) | {cpu} |",
    f"| unexpected answers outside the outage (kind status: count) | {r['unexpected'] or 'none'} |",
    "",
    "Result: " + ("PASSED" if not r["failures"] else "FAILED: " + "; ".join(r["failures"])),
]
md = "\n".join(lines) + "\n"
print(md)
open(sys.argv[2], "w").write(md)
EOF
exit "$CODE"
