#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run) and as the README says.
# Installs what the tests need (Debian packages, QEMU, the Linux guest image),
# then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "prerequisites"
scripts/install-deps.sh

step "format and lints"
scripts/lint.sh

step "tests"
if [[ -d /sys/module/kvm_pvm ]]; then
    echo "NOTE: this host's KVM is KVM-PVM (no VT-x/AMD-V): the tests that boot a Linux"
    echo "      kernel through Bulkhead are SKIPPED (they say so in tests/linux_guest.rs);"
    echo "      Linux guests still run here under QEMU's TCG against Bulkhead's devices."
fi
cargo test --workspace --locked --no-fail-fast

# Every fuzz target of fuzz/ (image parsers, API, Firecracker API, virtqueues, vhost-user both
# sides, virtio-mmio registers; fuzz/README.md) for 6 s from the committed seed corpus: ~80 s for
# the 10 targets, plus the build (~3 min from scratch on 2 busy cores, less on a quiet machine;
# nothing when fuzz/target is kept). A finding fails CI, printing the panic and the input.
step "fuzz"
fuzz/run-short.sh 6
