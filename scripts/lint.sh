#!/usr/bin/env bash
# Formatting and lints, as scripts/test.sh runs them; quick to run before a commit.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The built-in guest's bare-metal code is only compiled for the guest.
CARGO_TARGET_DIR=target/guest-clippy RUSTFLAGS="--cfg bulkhead_guest" \
    cargo clippy -p bulkhead-guest --lib --locked -- -D warnings
