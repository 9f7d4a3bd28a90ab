#!/usr/bin/env bash
# Installs QEMU 7.2 (Debian bookworm's qemu-system-x86) for Bulkhead's tests, without dpkg.
#
# Why not `apt-get install qemu-system-x86`: it conflicts with the qemu-utils 10.x these
# machines come with. Instead this script
#   1. downloads qemu-system-x86, qemu-system-common (it holds the TCG accelerator module),
#      qemu-system-data, seabios and ipxe-qemu with `apt-get download`, plus every library
#      package qemu-system-x86 needs (directly or through other libraries) that is not installed;
#      when the apt lists do not know qemu-system-x86 or name files the archive no longer has
#      (a fresh machine's lists can be months old), it runs `apt-get update` once, as root;
#   2. unpacks them with `dpkg-deb -x` into $CACHE/qemu-7.2/root, where
#      CACHE = $BULKHEAD_CACHE_DIR, else $XDG_CACHE_HOME/bulkhead, else ~/.cache/bulkhead;
#   3. drops the optional QEMU modules (display, audio, spice, usb) whose libraries are absent,
#      and checks with ldd that the emulator and its TCG module resolve every library;
#   4. writes $CACHE/qemu-7.2/bin/qemu-system-x86_64, a wrapper that sets LD_LIBRARY_PATH,
#      QEMU_MODULE_DIR and `-L` (the firmware folders), and checks that it runs; and
#      $CACHE/qemu-7.2/bin/virtiofsd, QEMU 7.2's virtio-fs backend (from qemu-system-common),
#      the outside backend the virtio-fs tests attach.
# The install is built beside the old one and renamed into place. When QEMU 7.2 is already
# installed it only checks the wrapper and exits (well under a second).
#
# Usage: scripts/install-qemu.sh [--force] [--print-path]
#   --force        reinstall even if installed
#   --print-path   print only the wrapper's path on standard output
set -euo pipefail

force=0
quiet=0
for arg in "$@"; do
	case "$arg" in
	--force) force=1 ;;
	--print-path) quiet=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "install-qemu.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
	esac
done

say() { [ "$quiet" = 1 ] || echo "install-qemu: $*" >&2; }
die() { echo "install-qemu: error: $*" >&2; exit 1; }

if [ -n "${BULKHEAD_CACHE_DIR:-}" ]; then
	cache=$BULKHEAD_CACHE_DIR
elif [ -n "${XDG_CACHE_HOME:-}" ] && [ "${XDG_CACHE_HOME#/}" != "$XDG_CACHE_HOME" ]; then
	cache=$XDG_CACHE_HOME/bulkhead
elif [ -n "${HOME:-}" ]; then
	cache=$HOME/.cache/bulkhead
else
	die "HOME is not set; set BULKHEAD_CACHE_DIR to a directory"
fi
dest=$cache/qemu-7.2
wrapper=$dest/bin/qemu-system-x86_64

installed() {
	[ -f "$dest/installed" ] && "$wrapper" --version 2>/dev/null | grep -q 'version 7\.2\.' &&
		"$dest/bin/virtiofsd" --version >/dev/null 2>&1
}

if [ "$force" = 0 ] && installed; then
	say "QEMU 7.2 is already installed: $wrapper"
	[ "$quiet" = 0 ] || echo "$wrapper"
	exit 0
fi

for tool in apt-get apt-cache dpkg-deb dpkg-query ldd; do
	command -v "$tool" >/dev/null || die "$tool was not found; this script needs a Debian 12 (bookworm) host"
done
[ "$(dpkg --print-architecture)" = amd64 ] || die "this script installs the amd64 QEMU; this host is $(dpkg --print-architecture)"

candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }

# A fresh machine's apt lists may predate the archive: they may not know qemu-system-x86, or
# name files that a point release or a security update has since replaced. Then, as root, the
# lists are refreshed once (`apt-get update`) and everything is resolved again.
refreshed=0
refresh_lists() {
	if [ "$refreshed" = 1 ] || [ "$(id -u)" != 0 ]; then return 1; fi
	refreshed=1
	say "refreshing the apt lists (apt-get update)"
	apt-get update -q >&2 || die "apt-get update failed; check the apt sources"
}

is_installed() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]; }

# depends PKG: the first alternative of each Depends entry of PKG's candidate.
depends() {
	apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
		--no-replaces --no-enhances --no-pre-depends "$1" |
		awk '/^ *\|?Depends: [^<]/ { sub(/^ *\|?Depends: /, ""); print }' | sort -u
}

# The library packages qemu-system-x86 needs that are not installed, found breadth-first.
missing_libs() {
	local queue seen=" " next pkg dep
	queue=$(depends qemu-system-x86)
	while [ -n "$queue" ]; do
		next=""
		for pkg in $queue; do
			case "$seen" in *" $pkg "*) continue ;; esac
			seen="$seen$pkg "
			case "$pkg" in lib*) ;; *) continue ;; esac
			is_installed "$pkg" && continue
			echo "$pkg"
			for dep in $(depends "$pkg"); do next="$next $dep"; done
		done
		queue=$next
	done
}

main_pkgs="qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu"

# resolve: sets qemu_version and libs from the apt lists.
resolve() {
	qemu_version=$(candidate qemu-system-x86)
	if [ -z "$qemu_version" ] || [ "$qemu_version" = "(none)" ]; then
		refresh_lists ||
			die "apt offers no qemu-system-x86; run 'apt-get update' as root (the bookworm 'main' source is needed)"
		resolve
		return
	fi
	case "$qemu_version" in
	1:7.2*) ;;
	*) die "apt offers qemu-system-x86 $qemu_version, not 7.2; this script expects Debian 12 (bookworm)" ;;
	esac
	libs=$(missing_libs | sort -u | tr '\n' ' ')
	say "QEMU $qemu_version; libraries not installed here: ${libs:-none}"
}

# download DIR: the packages, into DIR (emptied first).
download() {
	rm -f "$1"/*.deb
	# shellcheck disable=SC2086 # word splitting of the package lists is meant
	(cd "$1" && apt-get -q -o APT::Sandbox::User=root download $main_pkgs $libs >&2)
}

resolve
mkdir -p "$cache"
work=$(mktemp -d "$cache/.qemu-7.2-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/new/root" "$work/new/bin"
if ! download "$work/debs"; then
	refresh_lists || die "apt-get download failed (see above); run 'apt-get update' as root and try again"
	resolve
	download "$work/debs" || die "apt-get download failed (see above), with fresh apt lists too"
fi
say "downloaded $(du -sh "$work/debs" | cut -f1)"
for deb in "$work"/debs/*.deb; do
	dpkg-deb -x "$deb" "$work/new/root" || die "dpkg-deb could not unpack $deb"
done
root=$work/new/root
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/lintian"

libpath="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu"
moddir=$root/usr/lib/x86_64-linux-gnu/qemu
for mod in "$moddir"/*.so; do
	if LD_LIBRARY_PATH=$libpath ldd "$mod" | grep -q 'not found'; then rm -f "$mod"; fi
done
for bin in "$root/usr/bin/qemu-system-x86_64" "$moddir/accel-tcg-x86_64.so" "$root/usr/lib/qemu/virtiofsd"; do
	[ -f "$bin" ] || die "the packages did not provide $bin"
	unresolved=$(LD_LIBRARY_PATH=$libpath ldd "$bin" | awk '/not found/ { print $1 }' | tr '\n' ' ')
	[ -z "$unresolved" ] || die "$(basename "$bin") still lacks $unresolved; install the packages that provide them"
done

cat >"$work/new/bin/qemu-system-x86_64" <<'EOF'
#!/bin/sh
# Written by scripts/install-qemu.sh: Debian's QEMU 7.2 run from its unpacked packages.
root=$(cd "$(dirname "$0")/../root" && pwd)
LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
QEMU_MODULE_DIR="$root/usr/lib/x86_64-linux-gnu/qemu"
export LD_LIBRARY_PATH QEMU_MODULE_DIR
exec "$root/usr/bin/qemu-system-x86_64" -L "$root/usr/share/qemu" -L "$root/usr/share/seabios" \
	-L "$root/usr/lib/ipxe/qemu" "$@"
EOF
chmod +x "$work/new/bin/qemu-system-x86_64"
cat >"$work/new/bin/virtiofsd" <<'EOF'
#!/bin/sh
# Written by scripts/install-qemu.sh: QEMU 7.2's virtiofsd run from its unpacked package.
root=$(cd "$(dirname "$0")/../root" && pwd)
LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$root/usr/lib/qemu/virtiofsd" "$@"
EOF
chmod +x "$work/new/bin/virtiofsd"
"$work/new/bin/virtiofsd" --version >/dev/null 2>&1 || die "the unpacked virtiofsd does not run"
"$work/new/bin/qemu-system-x86_64" --version | grep -q 'version 7\.2\.' ||
	die "the unpacked QEMU does not run: $("$work/new/bin/qemu-system-x86_64" --version 2>&1 | head -3)"
"$work/new/bin/qemu-system-x86_64" -accel help | grep -qx tcg || die "the unpacked QEMU has no TCG accelerator"

# shellcheck disable=SC2016 # dpkg-deb expands ${Package}, not the shell
for deb in "$work"/debs/*.deb; do dpkg-deb --show --showformat='${Package} ${Version}\n' "$deb"; done >"$work/new/installed"
rm -rf "$dest.old"
[ ! -e "$dest" ] || mv "$dest" "$dest.old"
mv "$work/new" "$dest"
rm -rf "$dest.old"
say "installed $(wc -l <"$dest/installed") packages ($(du -sh "$dest" | cut -f1)): $wrapper"
[ "$quiet" = 0 ] || echo "$wrapper"
