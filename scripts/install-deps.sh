#!/usr/bin/env bash
# Installs what Bulkhead's tests need on a fresh Debian x86-64 machine;
# idempotent, and fast once done:
#   - Debian packages: a C toolchain, qemu-utils (qemu-img, qemu-io,
#     qemu-storage-daemon), iproute2;
#   - QEMU 7.2, the comparison peer and the independent vhost-user frontend
#     (scripts/install-qemu.sh, unpacked into ~/.cache/bulkhead);
#   - the Linux test guest: Debian's kernel and a test initramfs, built from
#     pinned packages (`bulkhead image build`, into ~/.local/share/bulkhead);
#     a cached build is reused without any apt call;
#   - the test kernel that boots through Bulkhead's own core on any KVM host:
#     Linux 6.1 from Debian's pinned linux-source-6.1 with the configuration and
#     patch in crates/guests/linux-guest/test-kernel/ (`bulkhead image kernel`,
#     with make, flex, bison, bc, patch and libelf-dev: about 5-7 minutes on 2
#     cores, once; a cached build is reused without any apt call);
#   - cargo-fuzz, for the short fuzz run (from crates.io with its locked
#     dependencies: about 30 s to build on 2 cores, once);
#   - rust-vmm's vhost-device-vsock 0.3.0, the outside vsock backend the tests
#     attach (from crates.io with its locked dependencies, into the cache
#     folder: about a minute to build on 2 cores, once);
#   - the Rust virtiofsd 1.14.0, the virtio-fs backend Bulkhead runs as a
#     sandboxed compartment (`--device fs,…,exec=virtiofsd …`; QEMU 7.2's C
#     virtiofsd needs capabilities a compartment does not have): from
#     crates.io with its locked dependencies, into the cache folder, against
#     Debian's libseccomp-dev and libcap-ng-dev (about 2 minutes, once).
# A fresh machine's apt lists can be months old, and Debian's archive drops
# old versions (a kernel's whole package when its next ABI ships). So nothing
# here trusts the lists: `apt-get update` runs before any `apt-get install`,
# install-qemu.sh and `bulkhead image build` run it (once, as root) when the
# lists lack what they need, and `bulkhead image build` builds from the
# current version of a package whose pinned version is gone, saying so in one
# line. CI runs this as root.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v c++ >/dev/null || need_apt+=(g++)   # libFuzzer, built by the fuzz targets
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
command -v qemu-storage-daemon >/dev/null || need_apt+=(qemu-utils)
command -v ip >/dev/null || need_apt+=(iproute2)
for tool in make flex bison bc patch; do   # for building the test kernel
    command -v "$tool" >/dev/null || need_apt+=("$tool")
done
command -v xz >/dev/null || need_apt+=(xz-utils)     # the kernel source tarball
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)   # the Linux tests' root images
for dev in libseccomp-dev libcap-ng-dev libelf-dev; do   # virtiofsd; the test kernel's objtool
    dpkg-query -W -f='${Status}' "$dev" 2>/dev/null | grep -q '^install ok installed' ||
        need_apt+=("$dev")
done
if ((${#need_apt[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

scripts/install-qemu.sh
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if [ -n "${BULKHEAD_CACHE_DIR:-}" ]; then
    cache=$BULKHEAD_CACHE_DIR
elif [ -n "${XDG_CACHE_HOME:-}" ] && [ "${XDG_CACHE_HOME#/}" != "$XDG_CACHE_HOME" ]; then
    cache=$XDG_CACHE_HOME/bulkhead
else
    cache=$HOME/.cache/bulkhead
fi
vsock_root=$cache/vhost-device-vsock-0.3.0
if [[ ! -x $vsock_root/bin/vhost-device-vsock ]]; then
    cargo install vhost-device-vsock --version 0.3.0 --locked --root "$vsock_root"
fi
virtiofsd_root=$cache/virtiofsd-1.14.0
if [[ ! -x $virtiofsd_root/bin/virtiofsd ]]; then
    cargo install virtiofsd --version 1.14.0 --locked --root "$virtiofsd_root"
fi
cargo run --release --locked -q -- image build
cargo run --release --locked -q -- image kernel

if [[ ! -c /dev/kvm ]]; then
    echo "warning: /dev/kvm is missing: the tests that boot VMs will fail" >&2
fi
