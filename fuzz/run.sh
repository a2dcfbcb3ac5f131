#!/usr/bin/env bash
# Runs the cargo-fuzz targets, each for SECONDS (default 30: the smoke test
# .ci/run does), from the committed seeds in fuzz/seeds/<target>/ plus whatever
# earlier runs kept in fuzz/corpus/<target>/ (not committed). A crash or a
# property violation stops the run with the input in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh                    # every target, 30 s each
#   SECONDS_PER_TARGET=600 fuzz/run.sh routes config
#   JOBS=2 fuzz/run.sh             # two targets at a time (one core each)
#
# Needs the nightly toolchain (libFuzzer's instrumentation) and cargo-fuzz,
# which it installs when absent. Prints, per target, the executions per
# second and the coverage libFuzzer reports at the end.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${SECONDS_PER_TARGET:-30}
JOBS=${JOBS:-1}
ALL=(routes identity_strip credential id_token line_answers config)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
echo "== building the fuzz targets (nightly, release + sanitizer)"

cargo +nightly fuzz build

mkdir -p logs
run_one() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    # -timeout: one input taking 10 s is a finding; -rss_limit_mb: so is 2 GiB.
    if cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        > "logs/$t.log" 2>&1; then
        local execs cov ft
        execs=$(awk '/stat::number_of_executed_units/ {print $2}' "logs/$t.log")
        cov=$(grep -Eo 'cov: [0-9]+' "logs/$t.log" | tail -1 | awk '{print $2}')
        ft=$(grep -Eo 'ft: [0-9]+' "logs/$t.log" | tail -1 | awk '{print $2}')
        echo "ok    $t: $execs executions in ${SECS} s ($((execs / SECS))/s), cov $cov, ft $ft, corpus $(ls "corpus/$t" | wc -l)"
    else
        echo "FAIL  $t: see fuzz/logs/$t.log and fuzz/artifacts/$t/"
        grep -E "panicked|ERROR|SUMMARY" "logs/$t.log" | head -5
        return 1
    fi
}

status=0
pids=()
for t in "${TARGETS[@]}"; do
    run_one "$t" &
    pids+=($!)
    if [ ${#pids[@]} -ge "$JOBS" ]; then
        wait "${pids[0]}" || status=1
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
