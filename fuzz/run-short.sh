#!/usr/bin/env bash
# Runs every fuzz target for a short while (default 20 seconds each), starting from the seed
# corpus in corpus/<target>/ without changing it. Used by CI; needs cargo-fuzz
# (`cargo install cargo-fuzz`). cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP=1 lets the
# stable toolchain provide them.
set -euo pipefail
secs="${1:-20}"
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo fuzz build
for target in $(cargo fuzz list); do
    echo "== fuzzing $target for ${secs}s"
    mkdir -p "$work/$target"
    log="$work/$target.log"
    if ! cargo fuzz run "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 >"$log" 2>&1; then
        grep -E "panicked|ERROR|SUMMARY|^thread|Reproduce|cargo fuzz run" "$log" | cut -c1-300 >&2 || tail -c 3000 "$log" >&2
        echo "fuzz target $target failed; the crashing input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$log" || true
done
echo "all fuzz targets ran ${secs}s without a crash"
