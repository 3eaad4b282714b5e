#!/bin/bash
# Bring-your-own-test example (bash in the toolroot's Debian userland): a test suite
# that expects a normal root — bash, coreutils, util-linux, nvme-cli, fio, python3 —
# runs unmodified. Run by the suite as:
#   scripts/run-guest --userland --share guest-tests/byo --exec 'bash userland.sh'
set -euo pipefail
shopt -s nullglob
die() { echo "userland: $*" >&2; exit 1; }

ns=${P2PLAB_CLIENT_NS:?P2PLAB_CLIENT_NS is not set}
nss=(/dev/nvme*n*)
(( ${#nss[@]} > 0 )) || die "no /dev/nvme*n* inside the userland"
echo "userland: $(bash --version | head -n1)"
echo "userland: namespaces: ${nss[*]}; lsblk: $(lsblk -dno NAME,SIZE "$ns" | tr -s ' ')"

# nvme-cli: the controller by serial, through the JSON output a test parses.
ctrl=${ns%n*}
nvme id-ctrl -o json "$ctrl" >/tmp/id.json
python3 - /tmp/id.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
sn = d["sn"].strip()
assert sn.startswith("P2PLAB") or sn, "empty serial"
print(f"userland: python3 read id-ctrl: sn={sn} mn={d['mn'].strip()} mdts={d['mdts']}")
PY

# The lab's modules are where modprobe looks for them.
modinfo nvme >/dev/null || die "modinfo nvme: the kernel's modules are not under /lib/modules/$(uname -r)"
[[ -d /sys/kernel/debug/block ]] || die "/sys/kernel/debug is not mounted"

# fio with a job file kept beside this script.
FILENAME=$ns fio --output-format=terse --terse-version=3 randrw-verify.fio >/tmp/fio.out ||
	die "fio failed: $(cat /tmp/fio.out)"
errs=$(awk -F';' '{print $5}' /tmp/fio.out | head -n1)
[[ $errs == 0 ]] || die "fio reported error $errs"
echo "userland: fio randrw-verify.fio: 16 MiB written and verified, error $errs"
echo "userland: ok"
