#!/bin/sh
# Time the bound-images hook's prepare step for N images (default 1, 4, 16)
# against the same pulls done by hand in sequence, and print a table.
# A measurement, not a test: nothing here passes or fails.
#
#   test/bench/bound-images.sh [N...]
#
# Environment: ROUNDS (default 3; the median is shown), SIZE_KIB (size of
# each image's one file, default 1024), KEEP=1 keeps the work directory.
#
# Every run starts from an empty store (the hook's store, or the store
# podman pulls into). Images come from local oci-archive files built first
# (test/fixtures/images/build-images.sh), so the network plays no part:
# what is measured is the work per image (store setup, layer copy,
# bookkeeping), which is where the hook could add overhead.
#
# Columns:
#   hook        bound-images prepare as the daemon runs it, default settings
#               (the driver comes from storage.conf, as on a distribution
#               that names it; without one, add a `podman info`, about 0.5 s)
#   podman      `podman --root S --runroot R pull oci-archive:...`, N times
#   skopeo      `skopeo copy oci-archive:... containers-storage:[...]...`, N
#               times: the hook's own copy command, without the hook
#   rerun       the hook again on the full store (everything present)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
hooks=$repo/packaging/hooks
rounds=${ROUNDS:-3}
size=${SIZE_KIB:-1024}
[ $# -gt 0 ] || set -- 1 4 16
max=0
for n in "$@"; do [ "$n" -gt "$max" ] && max=$n; done

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-bound-images.XXXXXX")
cleanup() {
	# Stores may leave overlay mounts behind; nothing below $work may stay mounted.
	findmnt -rn -o TARGET | while IFS= read -r m; do
		case $m in "$work"/*) umount -l "$m" 2>/dev/null || : ;; esac
	done
	if [ "${KEEP:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() {
	t=$(date +%s%N)
	echo $((t / 1000000))
}

# median of the numbers on stdin
median() {
	sort -n | {
		set --
		while read -r v; do set -- "$@" "$v"; done
		i=$((($# + 1) / 2))
		eval "echo \${$i}"
	}
}

driver=$(podman --root "$work/probe" --runroot "$work/probe-run" info --format '{{.Store.GraphDriverName}}' 2>/dev/null)
opts=
[ "$driver" = overlay ] && opts=:overlay.skip_mount_home=true

echo "building $max images of $size KiB ($driver driver)..." >&2
names=
i=1
while [ "$i" -le "$max" ]; do
	names="$names quay.io/bench/img$i:1"
	i=$((i + 1))
done
# shellcheck disable=SC2086 # a word list
"$repo/test/fixtures/images/build-images.sh" "$work/archives" "$size" $names
archive() { echo "$work/archives/quay.io_bench_img$1_1.tar"; }

: >"$work/sources"
i=1
while [ "$i" -le "$max" ]; do
	echo "quay.io/bench/img$i:1 oci-archive:$(archive "$i")" >>"$work/sources"
	i=$((i + 1))
done
printf '[storage]\ndriver = "%s"\ngraphroot = "%s"\nrunroot = "%s"\n' \
	"$driver" "$work/primary" "$work/primary-run" >"$work/storage.conf"

# A deployment binding images 1..N.
deployment() {
	d=$work/deploy/$(printf '%064d' "$1").0
	if [ ! -d "$d" ]; then
		mkdir -p "$d/usr/lib/bootc/bound-images.d" "$d/usr/share/containers/systemd" "$d/usr/libexec/bootc-prestage"
		cp "$hooks/bound-images" "$hooks/hook-lib.sh" "$d/usr/libexec/bootc-prestage/"
		j=1
		while [ "$j" -le "$1" ]; do
			printf '[Image]\nImage=quay.io/bench/img%s:1\n' "$j" >"$d/usr/share/containers/systemd/img$j.image"
			ln -s "/usr/share/containers/systemd/img$j.image" "$d/usr/lib/bootc/bound-images.d/img$j.image"
			j=$((j + 1))
		done
	fi
	echo "$d"
}

# hook N [ENV=VALUE...]: run prepare as the daemon would, print milliseconds.
hook() {
	d=$(deployment "$1")
	shift
	t0=$(now_ms)
	env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
		BOUND_IMAGES_STORE_ROOT="$work/images" BOUND_IMAGES_RUNROOT="$work/run" \
		BOUND_IMAGES_STORAGE_CONF="$work/storage.conf" BOUND_IMAGES_STORAGE_CONF_BASE= \
		BOUND_IMAGES_SOURCES="$work/sources" BOUND_IMAGES_SOURCES_ONLY=1 BOUND_IMAGES_AUTHFILE= \
		CONTAINERS_STORAGE_CONF="$work/storage.conf" \
		BOOTC_PRESTAGE_PHASE=prepare BOOTC_PRESTAGE_DEPLOYMENT="$d" BOOTC_PRESTAGE_HOOK=bound-images \
		BOOTC_PRESTAGE_TRANSACTION=bench BOOTC_PRESTAGE_STATE_DIRECTORY="$work/state" BOOTC_PRESTAGE_NOTIFY_FD=3 \
		"$@" "$d/usr/libexec/bootc-prestage/bound-images" prepare </dev/null >"$work/hook.log" 2>&1 3>/dev/null ||
		{ cat "$work/hook.log" >&2; exit 1; }
	echo $(($(now_ms) - t0))
}

reset_stores() {
	findmnt -rn -o TARGET | while IFS= read -r mnt; do
		case $mnt in "$work/images"* | "$work/byhand"*) umount -l "$mnt" 2>/dev/null || : ;; esac
	done
	rm -rf "$work/images" "$work/run" "$work/byhand" "$work/byhand-run"
}

by_podman() {
	t0=$(now_ms)
	j=1
	while [ "$j" -le "$1" ]; do
		CONTAINERS_STORAGE_CONF="$work/storage.conf" podman --root "$work/byhand" --runroot "$work/byhand-run" \
			pull -q "oci-archive:$(archive "$j")" >/dev/null
		j=$((j + 1))
	done
	echo $(($(now_ms) - t0))
}

by_skopeo() {
	t0=$(now_ms)
	j=1
	while [ "$j" -le "$1" ]; do
		skopeo copy -q "oci-archive:$(archive "$j")" \
			"containers-storage:[$driver@$work/byhand+$work/byhand-run$opts]quay.io/bench/img$j:1"
		j=$((j + 1))
	done
	echo $(($(now_ms) - t0))
}

secs() {
	v=$1
	printf '%d.%02d' $((v / 1000)) $((v % 1000 / 10))
}

printf '\n%d rounds, median shown; seconds; %s KiB per image; %s driver; %s cores, load %s\n\n' \
	"$rounds" "$size" "$driver" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%4s | %8s | %8s | %8s | %8s | %s\n' N hook podman skopeo rerun 'hook/podman'
printf '%s\n' '-----+----------+----------+----------+----------+------------'
for n in "$@"; do
	: >"$work/t.hook"; : >"$work/t.podman"; : >"$work/t.skopeo"; : >"$work/t.rerun"
	r=1
	while [ "$r" -le "$rounds" ]; do
		reset_stores
		hook "$n" >>"$work/t.hook"
		hook "$n" >>"$work/t.rerun"
		reset_stores
		by_podman "$n" >>"$work/t.podman"
		reset_stores
		by_skopeo "$n" >>"$work/t.skopeo"
		r=$((r + 1))
	done
	h=$(median <"$work/t.hook")
	p=$(median <"$work/t.podman")
	s=$(median <"$work/t.skopeo")
	re=$(median <"$work/t.rerun")
	ratio=$((h * 100 / p))
	printf '%4s | %8s | %8s | %8s | %8s | %d.%02d\n' "$n" "$(secs "$h")" "$(secs "$p")" \
		"$(secs "$s")" "$(secs "$re")" $((ratio / 100)) $((ratio % 100))
done
