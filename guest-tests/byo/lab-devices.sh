#!/bin/sh
# Bring-your-own-test example (busybox sh): what a test finds in the lab guest.
# Run by the suite as: scripts/run-guest --share guest-tests/byo --exec 'sh lab-devices.sh'
# Exits non-zero (the `exec` case then fails) if anything a test would look for is missing.
set -eu
fail() { echo "lab-devices: $*" >&2; exit 1; }

[ -n "${P2PLAB_CLIENT_NS:-}" ] || fail "P2PLAB_CLIENT_NS is not set"
[ -b "$P2PLAB_CLIENT_NS" ] || fail "$P2PLAB_CLIENT_NS is not a block device"
ls /dev/nvme*n* >/dev/null 2>&1 || fail "no /dev/nvme*n*"
for c in /sys/class/nvme/nvme*; do
	echo "lab-devices: $(basename "$c"): serial $(cat "$c/serial") model $(cat "$c/model" | tr -s ' ')"
done
[ -d /sys/kernel/debug/block ] || fail "/sys/kernel/debug is not mounted"
[ -f /host/lab-devices.sh ] || fail "the shared directory is not at /host"
# The client's controller answers identify through nvme-cli.
nvme id-ctrl "${P2PLAB_CLIENT_NS%n*}" | grep -q '^sn ' || fail "nvme id-ctrl failed"
# A few MiB written and read back O_DIRECT.
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
dd if=/tmp/pattern of="$P2PLAB_CLIENT_NS" bs=1M count=4 oflag=direct 2>/dev/null
dd if="$P2PLAB_CLIENT_NS" of=/tmp/back bs=1M count=4 iflag=direct 2>/dev/null
cmp /tmp/pattern /tmp/back || fail "read-back differs"
echo "lab-devices: ok"
