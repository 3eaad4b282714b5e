#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build p2pgpu.ko with W=1 and fail on any compiler or modpost warning.
#
# Usage: build.sh TOOLROOT [KDIR] OUTDIR
#   TOOLROOT  the lab toolroot (Debian trixie root with gcc and the
#             linux-headers-<release> scripts/setup resolved), see scripts/setup.
#   KDIR      kernel build directory. Default: the toolroot's only
#             /usr/src/linux-headers-*-amd64 (p2plab passes the stamped one).
#             A tree outside the toolroot (yours, e.g. from scripts/build-kernel)
#             is bind-mounted at the same path inside it and built with the
#             toolroot's compiler — the one the kernel was built with — unless its
#             CONFIG_CC_VERSION_TEXT names this host's gcc. Building in the
#             toolroot needs root.
#   OUTDIR    receives p2pgpu.ko and build.log.
#
# The sources are copied to a scratch directory first, so this directory
# stays clean and several builds may run at once.

set -euo pipefail

usage() {
	echo "usage: $0 TOOLROOT [KDIR] OUTDIR" >&2
	exit 2
}

case $# in
2) toolroot=$1 kdir= outdir=$2 ;;
3) toolroot=$1 kdir=$2 outdir=$3 ;;
*) usage ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sources=(p2pgpu.c p2pgpu_regs.h p2pgpu_uapi.h Kbuild Makefile)
toolroot=$(cd "$toolroot" && pwd)
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

if [[ -z $kdir ]]; then
	shopt -s nullglob
	found=("$toolroot"/usr/src/linux-headers-*-amd64)
	shopt -u nullglob
	if [[ ${#found[@]} -ne 1 ]]; then
		echo "build.sh: no unique linux-headers-*-amd64 in $toolroot/usr/src; name KDIR" >&2
		exit 1
	fi
	kdir=${found[0]#"$toolroot"}
fi

need_root() {
	if [[ $(id -u) -ne 0 ]]; then
		echo "build.sh: building in the toolroot needs root (chroot): $1" >&2
		exit 1
	fi
}
binds=()
if [[ $kdir == /* && -f $toolroot$kdir/Makefile ]]; then
	mode=chroot
	need_root "$kdir"
elif [[ -f $kdir/Makefile ]]; then
	# Symlinks resolved: a modules tree's build link points at the real O= directory,
	# whose Makefile and auto.conf name real paths; those are what get bind-mounted.
	kdir=$(cd "$kdir" && pwd -P)
	# The module must be built by the compiler the kernel was built with: the
	# toolroot's (scripts/build-kernel) unless the tree says it was this host's.
	want=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\(.*\)"$/\1/p' "$kdir/.config" 2>/dev/null)
	host_cc=$(gcc --version 2>/dev/null | head -n1)
	if [[ -n $want && $want == "$host_cc" ]]; then
		mode=host
	else
		mode=bind
		need_root "$kdir was built by ${want:-an unknown compiler}; the module is built in the toolroot with the same one"
		# The tree (and its source, for an O= build) at the same paths inside the root.
		binds=("$kdir")
		if [[ -L $kdir/source ]]; then
			binds+=("$(cd "$kdir/source" && pwd -P)")
		fi
	fi
else
	echo "build.sh: $kdir is not a kernel build directory (in $toolroot or here)" >&2
	exit 1
fi
if [[ $mode == host ]]; then
	scratch=$(mktemp -d "${TMPDIR:-/tmp}/p2pgpu-build.XXXXXX")
	inner=$scratch
else
	scratch=$(mktemp -d "$toolroot/tmp/p2pgpu-build.XXXXXX")
	inner=${scratch#"$toolroot"}
fi
trap 'rm -rf "$scratch"' EXIT

for f in "${sources[@]}"; do
	cp "$here/$f" "$scratch/"
done

make_args=(-C "$kdir" M="$inner" W=1 modules)
log=$outdir/build.log
set +e
if [[ $mode != host ]]; then
	# objtool reads /proc: mount it in a private mount namespace, so it goes away
	# with the build and nothing is left mounted in the toolroot; likewise the binds.
	unshare --mount --propagation private -- sh -c '
		root=$1; shift
		mount -t proc proc "$root/proc" || exit 1
		while [ "$1" != -- ]; do
			mkdir -p "$root$1" && mount --bind "$1" "$root$1" || exit 1
			shift
		done
		shift
		exec chroot "$root" "$@"' \
		sh "$toolroot" "${binds[@]}" -- /usr/bin/env -i \
		PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
		make "${make_args[@]}" >"$log" 2>&1
else
	make "${make_args[@]}" >"$log" 2>&1
fi
status=$?
set -e

if [[ $status -ne 0 ]]; then
	cat "$log" >&2
	echo "build.sh: make failed ($status); log in $log" >&2
	exit 1
fi
if grep -qi 'warning' "$log"; then
	grep -i -B2 -A4 'warning' "$log" >&2
	echo "build.sh: the build has warnings; log in $log" >&2
	exit 1
fi
cp "$scratch/p2pgpu.ko" "$outdir/p2pgpu.ko"
echo "build.sh: $outdir/p2pgpu.ko ($mode, $kdir)"
