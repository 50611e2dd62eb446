#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each, one after another, seeded from
# fuzz/corpus/<target>/ (the protocols/ vectors) and fuzz/regressions/<target>/ (past
# crashes). Prints each target's executions and result; exits non-zero if any crashed.
# A crash input lands in fuzz/artifacts/<target>/: fix it, then copy it to
# fuzz/regressions/<target>/ so `cargo test --test fuzz_regressions` keeps it fixed.
#
#   fuzz/run.sh 600                 # every target, 10 minutes each
#   fuzz/run.sh 60 envelope mailbox # only these
#
# Needs the nightly toolchain (libFuzzer's instrumentation); installs cargo-fuzz if missing.
# Built without a sanitizer: the crate has no unsafe code of its own, and what the fuzzer
# hunts here is panics, overflows (debug assertions are on), hangs and memory blow-ups.
set -euo pipefail

secs="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build -s none

failed=0
printf '%-22s %12s %8s  %s\n' target executions seconds result
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "regressions/$t" "artifacts/$t"
    log="artifacts/$t/run.log"
    start=$(date +%s)
    # -rss_limit_mb: a decoder that allocates far beyond its input is a finding too.
    if cargo +nightly fuzz run -s none "$t" "corpus/$t" "regressions/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (see $log, fuzz/artifacts/$t/)"
        failed=1
    fi
    took=$(($(date +%s) - start))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    printf '%-22s %12s %8s  %s\n' "$t" "${execs:-?}" "$took" "$result"
done
exit "$failed"
