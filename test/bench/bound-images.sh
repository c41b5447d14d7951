#!/bin/sh
# Benchmark of the bound-images hook against a real local registry
# (Debian's docker-registry on 127.0.0.1), printing one table. A
# measurement, not a test: nothing here passes or fails, but each row says
# whether its target is met.
#
#   test/bench/bound-images.sh
#
# Environment: ROUNDS (default 3; medians of paired runs are shown),
# IMAGES (default 10), SIZE_KIB (each image's one random file, default
# 4096), OLD_REV (the commit whose hook is "the old behaviour", default
# 9bbc422, the last one before reuse), KEEP=1 keeps the work directory.
#
# Scenarios, each round running all of them back to back (paired):
#   upgrade  deployment A binds img1..imgN:1 and its store is full;
#            deployment B binds the same but imgN:2 (one image changed).
#            - this hook:   bound-images prepare of B (reuses A's store)
#            - old hook:    the hook of OLD_REV, prepare of B (pulls all N)
#            - bootc's way: for each of B's images `podman image exists`
#              in one shared store that holds A's images, `podman pull`
#              when absent (as bootc's boundimage.rs does)
#   cold     an empty machine pulls img1..imgN:1 with this hook,
#            BOUND_IMAGES_PARALLEL=3 against BOUND_IMAGES_PARALLEL=1.
# Bytes are what the registry's access log says it served in the run.
#
# Targets (issue 12): upgrade bytes <= 1.05x the changed image plus the
# manifests served; upgrade wall <= 1.2x bootc's way; cold parallel faster
# than sequential.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
rounds=${ROUNDS:-3}
n=${IMAGES:-10}
size=${SIZE_KIB:-4096}
old_rev=${OLD_REV:-9bbc422}

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-bound-images.XXXXXX")
reg_pid=
cleanup() {
	[ -z "$reg_pid" ] || kill "$reg_pid" 2>/dev/null || :
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
	sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

secs() { awk -v v="$1" 'BEGIN { printf "%.2f s", v / 1000 }'; }
mb() { awk -v v="$1" 'BEGIN { printf "%.2f MB", v / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", a / b }'; }

# --- the registry -----------------------------------------------------------
port=
for try in 1 2 3 4 5; do
	p=$((20000 + $(od -An -N2 -tu2 /dev/urandom) % 40000))
	cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$p
EOF
	docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
	reg_pid=$!
	i=0
	while [ $i -lt 100 ]; do
		if curl -fs "http://127.0.0.1:$p/v2/" >/dev/null 2>&1 ||
			skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$p/none:1" 2>&1 | grep -q 'manifest unknown'; then
			port=$p
			break
		fi
		kill -0 "$reg_pid" 2>/dev/null || break
		sleep 0.1
		i=$((i + 1))
	done
	[ -z "$port" ] || break
	kill "$reg_pid" 2>/dev/null || :
	reg_pid=
done
[ -n "$port" ] || { cat "$work/registry.log" >&2; echo "docker-registry did not start" >&2; exit 1; }
reg=127.0.0.1:$port

# log_mark: the access log's length; served_since MARK [PATTERN]: bytes
# served since MARK (by requests whose path matches PATTERN).
log_mark() { wc -l <"$work/registry.log"; }
served_since() {
	tail -n +"$(($1 + 1))" "$work/registry.log" |
		awk -v pat="${2:-.}" '$6 ~ /^"(GET|HEAD)$/ && $7 ~ pat && $10 ~ /^[0-9]+$/ { s += $10 } END { print s + 0 }'
}

# --- images -----------------------------------------------------------------
driver=$(podman --root "$work/probe" --runroot "$work/probe-run" info --format '{{.Store.GraphDriverName}}' 2>/dev/null)
opts=
[ "$driver" = overlay ] && opts=:overlay.skip_mount_home=true
echo "building and pushing $n images of $size KiB (+1 changed) to $reg ($driver driver)..." >&2
build() { # NAME:TAG
	rm -rf "$work/ctx"
	mkdir "$work/ctx"
	head -c "$((size * 1024))" /dev/urandom >"$work/ctx/data"
	echo "$1" >"$work/ctx/name"
	printf 'FROM scratch\nCOPY name /name\nCOPY data /data\n' >"$work/ctx/Containerfile"
	podman --root "$work/build" --runroot "$work/build-run" --storage-driver vfs build -q --network none -t "localhost/$1" "$work/ctx" >/dev/null
	skopeo copy -q --dest-tls-verify=false "containers-storage:[vfs@$work/build+$work/build-run]localhost/$1" "docker://$reg/bench/$1"
}
i=1
while [ $i -le "$n" ]; do
	build "img$i:1"
	i=$((i + 1))
done
build "img$n:2"
changed_bytes=$(skopeo inspect --raw --tls-verify=false "docker://$reg/bench/img$n:2" |
	tr ',{}[' '\n\n\n\n' | awk -F: '/"size"/ { s += $2 } END { print s }')
rm -rf "$work/build" "$work/build-run"

# --- the hooks --------------------------------------------------------------
mkdir -p "$work/old"
(cd "$repo" && git show "$old_rev:packaging/hooks/bound-images" >"$work/old/bound-images" &&
	git show "$old_rev:packaging/hooks/hook-lib.sh" >"$work/old/hook-lib.sh")
chmod 755 "$work/old/bound-images"

# deployment DEPLOYDIR NAME HOOKDIR TAGOFLAST: a deployment binding img1..N.
deployment() {
	d=$1/$2
	rm -rf "$d"
	mkdir -p "$d/usr/lib/bootc/bound-images.d" "$d/usr/share/containers/systemd" "$d/usr/libexec/bootc-prestage"
	cp "$3"/* "$d/usr/libexec/bootc-prestage/"
	j=1
	while [ $j -le "$n" ]; do
		tag=1
		[ $j -lt "$n" ] || tag=$4
		printf '[Image]\nImage=%s/bench/img%s:%s\nTLSVerify=false\n' "$reg" "$j" "$tag" >"$d/usr/share/containers/systemd/img$j.image"
		ln -s "/usr/share/containers/systemd/img$j.image" "$d/usr/lib/bootc/bound-images.d/img$j.image"
		j=$((j + 1))
	done
	echo "$d"
}

printf '[storage]\ndriver = "%s"\ngraphroot = "%s"\nrunroot = "%s"\n' "$driver" "$work/primary" "$work/primary-run" >"$work/storage.conf"

# hook DEPLOYMENT STOREROOT [ENV=VALUE...]: run prepare as the daemon would; prints ms.
hook() {
	d=$1 sr=$2
	shift 2
	rm -rf "$work/state"
	mkdir -p "$work/state"
	t0=$(now_ms)
	env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
		BOUND_IMAGES_STORE_ROOT="$sr" BOUND_IMAGES_RUNROOT="$sr-run" \
		BOUND_IMAGES_STORAGE_CONF="$work/storage.conf" BOUND_IMAGES_STORAGE_CONF_BASE= BOUND_IMAGES_AUTHFILE= \
		CONTAINERS_STORAGE_CONF="$work/storage.conf" \
		BOOTC_PRESTAGE_PHASE=prepare BOOTC_PRESTAGE_DEPLOYMENT="$d" BOOTC_PRESTAGE_HOOK=bound-images \
		BOOTC_PRESTAGE_TRANSACTION=bench BOOTC_PRESTAGE_STATE_DIRECTORY="$work/state" BOOTC_PRESTAGE_NOTIFY_FD=3 \
		"$@" "$d/usr/libexec/bootc-prestage/bound-images" prepare </dev/null >"$work/hook.log" 2>&1 3>/dev/null ||
		{ cat "$work/hook.log" >&2; exit 1; }
	echo $(($(now_ms) - t0))
}

drop() { # STORE: remove a store (and its runroot)
	findmnt -rn -o TARGET | while IFS= read -r m; do
		case $m in "$1"*) umount -l "$m" 2>/dev/null || : ;; esac
	done
	rm -rf "$1" "$1-run"
}

name_a=$(printf '%064d' 1).0
name_b=$(printf '%064d' 2).0
deps=$work/sysroot/ostree/deploy/bench/deploy
mkdir -p "$deps"
a=$(deployment "$deps" "$name_a" "$repo/packaging/hooks" 1)
b_new=$(deployment "$deps" "$name_b" "$repo/packaging/hooks" 2)
b_old=$(deployment "$work/old-sysroot" "$name_b" "$work/old" 2)
cold=$(deployment "$work/cold-sysroot" "$name_a" "$repo/packaging/hooks" 1)
echo "filling A's store, and bootc's shared store..." >&2
hook "$a" "$work/images" >/dev/null
shared() { podman --root "$work/shared" --runroot "$work/shared-run" --storage-driver "$driver" "$@"; }
j=1
while [ $j -le "$n" ]; do
	shared pull -q --tls-verify=false "docker://$reg/bench/img$j:1" >/dev/null
	j=$((j + 1))
done

bootc_way() { # prints ms; B's images into the shared store, skipping present ones
	t0=$(now_ms)
	j=1
	while [ $j -le "$n" ]; do
		tag=1
		[ $j -lt "$n" ] || tag=2
		shared image exists "$reg/bench/img$j:$tag" ||
			shared pull -q --tls-verify=false "docker://$reg/bench/img$j:$tag" >/dev/null
		j=$((j + 1))
	done
	echo $(($(now_ms) - t0))
}

for f in new old bootc par seq; do : >"$work/t.$f"; : >"$work/b.$f"; done
: >"$work/r.wall"
: >"$work/r.bytes"
: >"$work/r.cold"
r=1
while [ $r -le "$rounds" ]; do
	echo "round $r/$rounds..." >&2
	m=$(log_mark); t=$(hook "$b_new" "$work/images"); echo "$t" >>"$work/t.new"
	bn=$(served_since "$m"); echo "$bn" >>"$work/b.new"
	mf=$(served_since "$m" '/manifests/')
	drop "$work/images/$name_b"
	m=$(log_mark); to=$(hook "$b_old" "$work/images-old"); echo "$to" >>"$work/t.old"
	served_since "$m" >>"$work/b.old"
	drop "$work/images-old/$name_b"
	m=$(log_mark); tb=$(bootc_way); echo "$tb" >>"$work/t.bootc"
	served_since "$m" >>"$work/b.bootc"
	shared rmi -f "$reg/bench/img$n:2" >/dev/null
	m=$(log_mark); tp=$(hook "$cold" "$work/cold" BOUND_IMAGES_PARALLEL=3); echo "$tp" >>"$work/t.par"
	served_since "$m" >>"$work/b.par"
	drop "$work/cold/$name_a"
	m=$(log_mark); ts=$(hook "$cold" "$work/cold" BOUND_IMAGES_PARALLEL=1); echo "$ts" >>"$work/t.seq"
	served_since "$m" >>"$work/b.seq"
	drop "$work/cold/$name_a"
	ratio "$t" "$tb" >>"$work/r.wall"
	ratio "$bn" "$((changed_bytes + mf))" >>"$work/r.bytes"
	ratio "$tp" "$ts" >>"$work/r.cold"
	r=$((r + 1))
done

med() { median <"$work/$1"; }
medr() { sort -n "$work/$1" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rw=$(medr r.wall); rb=$(medr r.bytes); rc=$(medr r.cold)
range() { sort -n "$work/$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s–%s", lo, hi }'; }
met() { awk -v v="$1" -v lim="$2" 'BEGIN { print (v <= lim) ? "yes" : "**no**" }'; }
printf '\n%s rounds (medians of paired runs); %s images of %s KiB, 1 changed (%s of blobs); %s driver; %s cores, load %s\n\n' \
	"$rounds" "$n" "$size" "$(mb "$changed_bytes")" "$driver" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '| scenario | bytes served | wall | result | target | met |\n| --- | --- | --- | --- | --- | --- |\n'
printf '| upgrade, 1 of %s changed: this hook | %s | %s | bytes %s× the changed image + manifests; wall %s× (%s) bootc'"'"'s way | bytes ≤ 1.05×; wall ≤ 1.2× | %s; %s |\n' \
	"$n" "$(mb "$(med b.new)")" "$(secs "$(med t.new)")" "$rb" "$rw" "$(range r.wall)" "$(met "$rb" 1.05)" "$(met "$rw" 1.2)"
printf '| upgrade: old hook (%s, full re-pull) | %s | %s | — | — | — |\n' "$old_rev" "$(mb "$(med b.old)")" "$(secs "$(med t.old)")"
printf '| upgrade: bootc'"'"'s way (podman image exists / pull, one shared store) | %s | %s | — | — | — |\n' "$(mb "$(med b.bootc)")" "$(secs "$(med t.bootc)")"
printf '| cold pull of %s: parallel (3) | %s | %s | %s× (%s) sequential | < 1× | %s |\n' "$n" "$(mb "$(med b.par)")" "$(secs "$(med t.par)")" "$rc" "$(range r.cold)" "$(met "$rc" 0.99)"
printf '| cold pull of %s: one at a time | %s | %s | — | — | — |\n' "$n" "$(mb "$(med b.seq)")" "$(secs "$(med t.seq)")"
