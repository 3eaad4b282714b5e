#!/bin/bash
# A long mixed-I/O soak with continuous verification (issue 16): four fio jobs at QD 64,
# each on its own 128 MiB of the client namespace, 50/50 random reads and writes of
# 4–64 KiB, crc32c verified while running, both vCPUs (so both I/O queues). Exit status:
# fio's (non-zero on any I/O error or verify mismatch). Run it in the userland:
#   scripts/run-guest --userland --share guest-tests/byo --exec "RUNTIME=600 bash /host/randrw-soak.sh"
# and watch the lab's RSS from the host meanwhile (/proc/<p2plab pid>/status).
set -u
ns=${P2PLAB_CLIENT_NS:?not a lab guest with a client namespace}
irqs() { grep -E 'nvme[0-9]+q[1-9]' /proc/interrupts | awk '{s = 0; for (i = 2; i <= NF - 3; i++) s += $i; print "#", $NF, s}'; }
irqs
fio --name=rw --filename="$ns" --direct=1 --ioengine=io_uring --rw=randrw --rwmixread=50 \
	--bs=4k-64k --iodepth=64 --numjobs=4 --size=128M --offset_increment=128M \
	--time_based --runtime="${RUNTIME:-600}" --cpus_allowed=0-1 --cpus_allowed_policy=split \
	--verify=crc32c --verify_backlog=512 --verify_fatal=1 --do_verify=1 --verify_state_save=0 \
	--group_reporting --output-format=json >/tmp/randrw-soak.json
rc=$?
irqs
python3 - <<'PY'
import json
t = open('/tmp/randrw-soak.json').read()
j = json.loads(t[t.index('{'):])['jobs'][0]  # fio may print notices before the JSON
r, w = j['read'], j['write']
print(f"# fio error {j['error']}: {w['total_ios']} writes ({w['io_bytes'] >> 20} MiB), "
      f"{r['total_ios']} reads ({r['io_bytes'] >> 20} MiB, verify reads included)")
PY
exit $rc
