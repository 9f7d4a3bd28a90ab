#!/bin/bash
# Which system calls each class of the core's threads makes, for the lists in
# crates/vmm/src/confine/lists.rs: runs the core under `strace -ff` with
# `--core-seccomp log` (filters installed, nothing refused) through the
# scenarios below, then prints, per thread class, the calls made after the
# thread installed its filter; for the launcher, also what its compartments
# call from clone3 until they enter their own sandbox.
#
# Scenarios: microkernel with blk, net (a tap in a network namespace), rng and
# --verbose — status (text and JSON), restart and upgrade through
# `bulkhead ctl`, a compartment killed, then Ctrl-C (SIGINT); monolithic with
# the same devices, status, then SIGTERM; power-off and reboot by the guest in
# both modes.
#
# Usage: scripts/core-syscalls.sh [BINARY]   (root; default target/release/bulkhead)
set -euo pipefail
BIN=$(realpath "${1:-target/release/bulkhead}")
MODE=${MODE:-log}  # MODE=on checks the lists: a violation stops the core, named in the .err files
OUT=$(mktemp -d /tmp/core-syscalls.XXXX)
NS=bh-tcb-$$
trap 'ip netns del $NS 2>/dev/null || true' EXIT
ip netns add $NS
ip -n $NS link set lo up
ip -n $NS tuntap add dev tap0 mode tap
ip -n $NS addr add 10.0.2.1/24 dev tap0
ip -n $NS link set tap0 up
IMG=$OUT/disk.raw
truncate -s 8M "$IMG"

traced() { # NAME ARGS...: the core under strace, in the namespace, in the background (pid in $s)
  local name=$1; shift
  mkdir -p "$OUT/$name"
  ip netns exec $NS strace -f -ff -qq -o "$OUT/$name/t" "$BIN" run --core-seccomp "$MODE" "$@" \
    >"$OUT/$name.out" 2>"$OUT/$name.err" </dev/null &
  s=$!
}
core_of() { # the core's pid under strace (ip netns exec → strace → bulkhead)
  for _ in $(seq 200); do
    local p; p=$(pgrep -f "^$BIN run --core-seccomp $MODE" -n || true)
    [ -n "$p" ] && { echo "$p"; return; }
    sleep 0.1
  done
  echo "no core under $1" >&2; exit 1
}
ctl() { "$BIN" ctl "$@" >/dev/null 2>&1 || echo "ctl $* failed" >&2; }
wait_up() { for _ in $(seq 300); do "$BIN" ctl "$1" status >/dev/null 2>&1 && return; sleep 0.2; done; echo "$1 never answered" >&2; }

DEVICES=(--disk "$IMG,format=raw" --net tap=tap0 --rng)
LONG="bulkhead.run=blk-stress bulkhead.seconds=600"

# 1. microkernel: status, restart, upgrade, kill, Ctrl-C
traced micro "${DEVICES[@]}" --verbose --name tcb-micro-$$ --cmdline "$LONG"; c=$(core_of "$s")
wait_up tcb-micro-$$
ctl tcb-micro-$$ status; ctl tcb-micro-$$ status --json
ctl tcb-micro-$$ device restart blk0
ctl tcb-micro-$$ device upgrade rng0 --binary "$BIN"
ctl tcb-micro-$$ device restart net0
sleep 1
pkill -9 -P "$c" -f "device blk" || true
sleep 2; ctl tcb-micro-$$ status
kill -INT "$c"; wait "$s" || true

# 2. monolithic: status, SIGTERM
traced mono "${DEVICES[@]}" --mode monolithic --name tcb-mono-$$ --cmdline "$LONG"; c=$(core_of "$s")
wait_up tcb-mono-$$
ctl tcb-mono-$$ status; ctl tcb-mono-$$ device restart blk0
sleep 1; kill -TERM "$c"; wait "$s" || true

# 3. power-off and reboot by the guest, both modes
for mode in microkernel monolithic; do
  traced off-$mode "${DEVICES[@]}" --mode $mode --cmdline "bulkhead.run=blk-verify,rng,net-ping"; wait "$s" || true
  traced reboot-$mode --rng --mode $mode --cmdline "bulkhead.run=reboot"; wait "$s" || true
done

python3 - "$OUT" <<'PY'
import os, re, sys, collections
out = sys.argv[1]
call = re.compile(r'^([a-z0-9_]+)\(')
classes = collections.defaultdict(set)
for scen in sorted(os.listdir(out)):
    d = os.path.join(out, scen)
    if not os.path.isdir(d):
        continue
    files = {int(f.split('.')[-1]): os.path.join(d, f) for f in os.listdir(d)}
    lines = {tid: open(p, errors='replace').read().splitlines() for tid, p in files.items()}
    core = min(files)
    for tid, ls in lines.items():
        text = '\n'.join(ls)
        m = re.search(r'prctl\(PR_SET_NAME, "([^"]*)"', text)
        name = m.group(1) if m else ''
        compartment = re.search(r'^execve\([^\n]*"device"', text, re.M) is not None
        if compartment:
            # until its own filters (the first seccomp call), under the launcher's
            cut = next((i for i, l in enumerate(ls) if l.startswith('seccomp(')), len(ls))
            cls = 'launcher(compartment start)'
            seen = ls[:cut]
        else:
            if tid == core: cls = 'event-loop'
            elif name.startswith('vcpu'): cls = 'vcpu'
            elif name == 'bulkhead-api': cls = 'api'
            elif name == 'bulkhead-alarm': cls = 'event-loop'
            elif name.startswith('sup-'): cls = 'supervisor'
            elif name == 'bulkhead-launch': cls = 'launcher'
            elif name.startswith('bh-'): cls = 'device-' + name[3:6]
            elif not name:
                # a forked child before its execve: the launcher's
                cls = 'launcher(compartment start)'
            else: cls = 'other:' + name
            idx = [i for i, l in enumerate(ls) if l.startswith('seccomp(')]
            seen = ls[idx[-1] + 1:] if idx else (ls if cls.startswith(('device-', 'launcher(')) else [])
        for l in seen:
            m = call.match(l)
            if m: classes[cls].add(m.group(1))
for cls in sorted(classes):
    print(f"{cls} ({len(classes[cls])}): {' '.join(sorted(classes[cls]))}")
PY
grep -H "seccomp:" "$OUT"/*.err || echo "no seccomp violation"
echo "traces in $OUT"
