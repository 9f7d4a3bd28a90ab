#!/usr/bin/env bash
# Installs what Bulkhead's tests need on a fresh Debian machine; idempotent
# and fast once done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
if ((${#need_apt[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if [[ ! -c /dev/kvm ]]; then
    echo "warning: /dev/kvm is missing: the tests that boot VMs will fail" >&2
fi
