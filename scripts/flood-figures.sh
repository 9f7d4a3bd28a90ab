#!/usr/bin/env bash
# The figures of docs/ARCHITECTURE.md, "A compartment that floods": blk-bench (randread 4K qd1,
# 3 s) through the block compartment, alone and while the rng compartment floods
# (BULKHEAD_FAULT=flood, in debug builds only), polling and with interrupts, ROUNDS rounds
# (default 3) side by side. Needs `cargo build` (debug) and /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug/bulkhead
rounds="${1:-3}"
disk="$(mktemp /tmp/bulkhead-flood-XXXXXX.raw)"
trap 'rm -f "$disk"' EXIT
truncate -s 64M "$disk"
for round in $(seq 1 "$rounds"); do
    for irq in 0 1; do
        for fault in none flood; do
            env=""
            [[ $fault == flood ]] && env="flood:after=0:device=rng"
            line=$(BULKHEAD_FAULT=$env timeout 60 "$bin" run --disk "$disk,format=raw" --rng \
                --cmdline "bulkhead.run=rng,blk-bench bulkhead.seconds=3 bulkhead.irq=$irq" \
                2>/dev/null | grep "BH result" || true)
            echo "round=$round irq=$irq fault=$fault" \
                "$(grep -oE '(iops|p50_us|p99_us|max_us)=[0-9.]+' <<<"$line" | tr '\n' ' ')"
        done
    done
done
