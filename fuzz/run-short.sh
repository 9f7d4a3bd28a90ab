#!/usr/bin/env bash
# Runs every fuzz target for a short while (default 20 seconds each; CI gives 6), starting from
# the seed corpus committed in corpus/<target>/ (read, never changed: new inputs go to a scratch
# folder).
# Used by CI (scripts/test.sh); needs cargo-fuzz (`cargo install cargo-fuzz --locked`, which
# scripts/install-deps.sh does). cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP=1 lets the
# stable toolchain provide them.
#
# Exit status 0 when every target ran its time without a finding; 1 at the first crash, panic,
# hang (an input running over 30 s) or memory blow-up (over 2 GiB), after printing the panic
# message, the crashing input's path under fuzz/artifacts/<target>/ and, when it is small, the
# input itself in base64 (CI logs are all that is left of a CI machine).
set -euo pipefail
secs="${1:-20}"
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo fuzz build
for target in $(cargo fuzz list); do
    if [[ -z "$(ls -A "corpus/$target" 2>/dev/null)" ]]; then
        echo "FUZZ FAILED: fuzz target $target has no seed corpus in fuzz/corpus/$target/" >&2
        exit 1
    fi
    echo "== fuzzing $target for ${secs}s from $(ls "corpus/$target" | wc -l) seed inputs"
    mkdir -p "$work/$target"
    log="$work/$target.log"
    if ! cargo fuzz run "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -max_len=262144 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -E -A3 "panicked at" "$log" | head -20 >&2 || true
        grep -E "ERROR: libFuzzer|SUMMARY|Test unit written|cargo fuzz run" "$log" | cut -c1-300 >&2 \
            || tail -c 3000 "$log" >&2
        input="$(grep -oE "artifacts/$target/[a-z]+-[0-9a-f]+" "$log" | head -1 || true)"
        if [[ -n "$input" && -f "$input" && $(stat -c %s "$input") -le 16384 ]]; then
            echo "the input, base64: $(base64 -w0 "$input")" >&2
        fi
        echo "FUZZ FAILED: fuzz target $target found a bug; the input is fuzz/${input:-artifacts/$target/}" >&2
        echo "reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $target ${input:-artifacts/$target/<file>}" >&2
        exit 1
    fi
    grep -E "INFO: seed corpus|stat::number_of_executed_units|stat::peak_rss_mb" "$log" || true
done
echo "all fuzz targets ran ${secs}s without a finding"
