#!/bin/sh
# Bulkhead test init: the guest side of Linux-guest tests (busybox sh, PID 1).
#
# It mounts /proc, /sys and /dev, loads the virtio modules listed in /etc/bulkhead/modules
# (paths under /lib/modules/<release>, dependencies first), runs the checks named on the kernel
# command line, reports on the console, and powers the machine off.
#
# Kernel command line (all optional):
#   bulkhead.test=LIST     checks to run, comma-separated: cpus mem rng blk net stress-blk
#   bulkhead.blk=LIST      disks for blk and stress-blk, comma-separated (default: vda).
#                          blk and stress-blk OVERWRITE these disks; give them scratch images.
#   bulkhead.bytes=N       bytes blk writes and reads back (default 4194304; at most the disk)
#   bulkhead.rounds=N      passes stress-blk makes over each whole disk (default 1)
#   bulkhead.ip=ADDR/LEN   address for eth0 (default 10.0.2.15/24)
#   bulkhead.peer=ADDR     address net pings, 3 times (default 10.0.2.1)
#   bulkhead.shell=1       start a shell on the console instead of powering off
#
# Output: one line per event, `BH <event>` then `key=value` fields; values never hold spaces.
#   BH ready kernel=<release> cpus=<n> uptime=<seconds since the kernel started>
#   BH warn what=<word> ...                        something odd that fails no check
#   BH progress name=stress-blk dev=vda round=<r> phase=write|verify blocks=<n>
#   BH check name=<check> status=ok ...            one per check (one per disk for blk)
#   BH check name=<check> status=fail reason=<word> ...
#   BH done status=ok|fail checks=<n> failed=<n> uptime=<seconds>
# `BH done` is always the last line; then the init runs `poweroff -f`.
#
# Checks and their fields:
#   cpus        count=<online CPUs> online=<cpu list>
#   mem         memtotal_kb=<MemTotal>
#   rng         bytes=4096 distinct=<distinct byte values> source=<hwrng driver>;
#               fails if /dev/hwrng is not a virtio rng or gives constant bytes
#   blk         dev= size=<bytes> ro=0|1 bytes=<n> md5=<md5 of the n bytes>: a writable disk
#               gets a deterministic pattern written with O_DIRECT, flushed, caches dropped,
#               read back with O_DIRECT and compared; a read-only disk must refuse a write
#               (write=rejected), and md5 is then that of its first n bytes as they are
#   net         ip= peer= sent=3 received=<n>; ok only if every ping came back
#   stress-blk  dev= rounds= blocks= block_bytes=: each round writes every block of the disk
#               (a header naming round and block, then filler), then reads each back with
#               O_DIRECT and compares; any I/O error or mismatch fails it with the block
#               (reason=io-error op=write|read, or reason=mismatch)

PATH=/bin
export PATH
FAILED=0
CHECKS=0

bh() { echo "BH $*"; }

# Replaces spaces and `=` so that a free text becomes one field value.
word() { printf '%s' "$*" | tr ' =\n\t' '____' | cut -c1-120; }

uptime_s() { cut -d' ' -f1 /proc/uptime; }

# param NAME DEFAULT: the value of bulkhead.NAME on the kernel command line.
param() {
	# shellcheck disable=SC2013 # the command line is split into words on purpose
	for arg in $(cat /proc/cmdline); do
		case "$arg" in
		"bulkhead.$1="*) echo "${arg#*=}"; return ;;
		esac
	done
	echo "$2"
}

ok() { CHECKS=$((CHECKS + 1)); bh check name="$1" status=ok "$2"; }
fail() {
	CHECKS=$((CHECKS + 1)); FAILED=$((FAILED + 1))
	bh check name="$1" status=fail reason="$2" "$3"
}

# wait_for PATH: waits up to 5 s for a file to appear.
wait_for() {
	i=0
	while [ ! -e "$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	[ -e "$1" ]
}

setup() {
	/bin/busybox --install -s /bin
	mount -t proc proc /proc
	mount -t sysfs sys /sys
	mount -t devtmpfs dev /dev
	mkdir -p /tmp && mount -t tmpfs tmp /tmp
	release=$(uname -r)
	while read -r m; do
		[ -n "$m" ] || continue
		out=$(insmod "/lib/modules/$release/$m" 2>&1) ||
			bh warn what=insmod module="$(basename "$m")" error="$(word "$out")"
	done </etc/bulkhead/modules
	bh ready kernel="$release" cpus="$(grep -c ^processor /proc/cpuinfo)" uptime="$(uptime_s)"
}

check_cpus() {
	online=$(cat /sys/devices/system/cpu/online)
	ok cpus "count=$(grep -c ^processor /proc/cpuinfo) online=$online"
}

check_mem() {
	kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
	if [ -n "$kb" ]; then ok mem "memtotal_kb=$kb"; else fail mem no-memtotal; fi
}

check_rng() {
	cur=/sys/class/misc/hw_random/rng_current
	i=0
	while [ "$(cat $cur 2>/dev/null)" = none ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	src=$(cat $cur 2>/dev/null)
	case "$src" in
	virtio_rng*) ;;
	*) fail rng no-virtio-rng "source=$(word "${src:-absent}")"; return ;;
	esac
	if ! dd if=/dev/hwrng of=/tmp/rng bs=4096 count=1 iflag=fullblock 2>/dev/null; then
		fail rng read-error "source=$src"; return
	fi
	n=$(wc -c </tmp/rng)
	distinct=$(od -An -v -tx1 /tmp/rng | tr -s ' ' '\n' | grep . | sort -u | wc -l)
	detail="bytes=$n distinct=$distinct source=$src"
	if [ "$n" -ne 4096 ]; then fail rng short-read "$detail"
	elif [ "$distinct" -lt 64 ]; then fail rng not-random "$detail"
	else ok rng "$detail"; fi
}

# pattern BYTES FILE: a deterministic pattern, 8-byte numbered lines, unique in every sector.
pattern() { seq -w 0 9999999 | head -c "$1" >"$2"; }

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# disk DEV: checks the disk is there and sets SIZE (bytes) and RO.
disk() {
	if ! wait_for "/sys/block/$1/size"; then return 1; fi
	SIZE=$(($(cat "/sys/block/$1/size") * 512))
	RO=$(cat "/sys/block/$1/ro")
}

check_blk_dev() {
	dev=$1
	if ! disk "$dev"; then fail blk no-disk "dev=$dev"; return; fi
	bytes=$(param bytes 4194304)
	[ "$bytes" -gt "$SIZE" ] && bytes=$SIZE
	bytes=$((bytes / 4096 * 4096))
	info="dev=$dev size=$SIZE ro=$RO bytes=$bytes"
	if [ "$bytes" -eq 0 ]; then fail blk disk-too-small "$info"; return; fi
	if [ "$RO" = 1 ]; then check_blk_ro "$dev" "$info"; return; fi
	pattern "$bytes" /tmp/pattern
	want=$(md5sum </tmp/pattern | cut -d' ' -f1)
	if ! dd if=/tmp/pattern of="/dev/$dev" bs=1M oflag=direct conv=notrunc,fsync 2>/dev/null; then
		fail blk io-error "op=write $info"; return
	fi
	blockdev --flushbufs "/dev/$dev"
	drop_caches
	got=$(dd if="/dev/$dev" bs=1M count="$bytes" iflag=direct,count_bytes 2>/dev/null | md5sum | cut -d' ' -f1)
	if [ "$got" = "$want" ]; then ok blk "$info md5=$got"
	else fail blk mismatch "$info md5=$got expected=$want"; fi
}

check_blk_ro() {
	dev=$1 info=$2
	head -c 4096 /dev/zero >/tmp/zero
	if dd if=/tmp/zero of="/dev/$dev" bs=4096 count=1 oflag=direct conv=notrunc 2>/dev/null; then
		fail blk write-accepted "$info"; return
	fi
	if ! got=$(dd if="/dev/$dev" bs=1M count="$bytes" iflag=direct,count_bytes 2>/dev/null | md5sum); then
		fail blk io-error "op=read $info"; return
	fi
	ok blk "$info write=rejected md5=${got%% *}"
}

check_net() {
	ip=$(param ip 10.0.2.15/24)
	peer=$(param peer 10.0.2.1)
	info="ip=$ip peer=$peer"
	if ! wait_for /sys/class/net/eth0; then fail net no-eth0 "$info"; return; fi
	ip link set lo up
	if ! ip addr add "$ip" dev eth0 || ! ip link set eth0 up; then
		fail net ip-setup "$info"; return
	fi
	out=$(ping -c 3 -W 5 "$peer" 2>&1)
	received=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
	info="$info sent=3 received=${received:-0}"
	if [ "${received:-0}" = 3 ]; then ok net "$info"; else fail net ping-lost "$info"; fi
}

# stress_block R I BS FILE: the expected contents of block I in round R.
stress_block() {
	{ printf 'bulkhead stress round %d block %d\n' "$1" "$2"; cat /tmp/fill; } |
		head -c "$3" >"$4"
}

check_stress_dev() {
	dev=$1
	if ! disk "$dev"; then fail stress-blk no-disk "dev=$dev"; return; fi
	rounds=$(param rounds 1)
	bs=1048576
	[ "$SIZE" -lt $bs ] && bs=$((SIZE / 4096 * 4096))
	blocks=$((SIZE / bs))
	info="dev=$dev rounds=$rounds blocks=$blocks block_bytes=$bs"
	if [ "$RO" = 1 ] || [ "$blocks" -eq 0 ]; then fail stress-blk unusable-disk "$info ro=$RO"; return; fi
	pattern "$bs" /tmp/fill
	r=1
	while [ $r -le "$rounds" ]; do
		bh progress name=stress-blk dev="$dev" round=$r phase=write blocks="$blocks"
		i=0
		while [ $i -lt "$blocks" ]; do
			stress_block $r $i $bs /tmp/want
			if ! dd if=/tmp/want of="/dev/$dev" bs=$bs seek=$i count=1 oflag=direct conv=notrunc 2>/dev/null; then
				fail stress-blk io-error "op=write round=$r block=$i $info"; return
			fi
			i=$((i + 1))
		done
		drop_caches
		bh progress name=stress-blk dev="$dev" round=$r phase=verify blocks="$blocks"
		i=0
		while [ $i -lt "$blocks" ]; do
			stress_block $r $i $bs /tmp/want
			if ! dd if="/dev/$dev" of=/tmp/got bs=$bs skip=$i count=1 iflag=direct 2>/dev/null; then
				fail stress-blk io-error "op=read round=$r block=$i $info"; return
			fi
			if ! cmp -s /tmp/want /tmp/got; then
				fail stress-blk mismatch "round=$r block=$i $info"; return
			fi
			i=$((i + 1))
		done
		r=$((r + 1))
	done
	ok stress-blk "$info"
}

# for_disks CHECK: runs CHECK once per disk in bulkhead.blk.
for_disks() {
	for dev in $(param blk vda | tr ',' ' '); do "$1" "$dev"; done
}

run_checks() {
	for t in $(param test "" | tr ',' ' '); do
		case "$t" in
		cpus) check_cpus ;;
		mem) check_mem ;;
		rng) check_rng ;;
		blk) for_disks check_blk_dev ;;
		net) check_net ;;
		stress-blk) for_disks check_stress_dev ;;
		*) fail "$(word "$t")" unknown-check ;;
		esac
	done
}

setup
run_checks
if [ $FAILED -eq 0 ]; then status=ok; else status=fail; fi
bh "done" status=$status checks=$CHECKS failed=$FAILED uptime="$(uptime_s)"
if [ "$(param shell 0)" = 1 ]; then
	setsid cttyhack sh
fi
sync
poweroff -f
# Should poweroff fail, reboot through sysrq rather than let PID 1 exit (a kernel panic).
echo o >/proc/sysrq-trigger
sleep 5
echo b >/proc/sysrq-trigger
