# shellcheck shell=sh
# bound-images-store.sh: the deployment's own containers-storage, and how
# it is filled. Sourced by bound-images (never run), which sets store,
# runroot, STORE_ROOT, RUNROOT_BASE, deploy_dir, name, work, the settings,
# NL and US first.
#
# For each bound image, in this order (docs/bound-images.md "How reuse
# decides"):
#   1. already in this deployment's store (a pinned reference: with that
#      manifest digest): kept;
#   2. the manifest digest it must have: the pinned one, or for a tag the
#      digest of the manifest the source serves now (skopeo inspect --raw:
#      one manifest request, no layers);
#   3. a first store starts as a clone of the booted deployment's, its
#      layer files hard-linked, pruned to the images bound here with those
#      digests (clone_store);
#   4. another deployment's store holds an image of that repository with
#      that digest: copied from there (skopeo copy between the two
#      containers-storage stores: no download);
#   5. otherwise pulled from the source.
# Either way the new store owns every layer it uses (a hard link keeps a
# file's data after the old store's link is gone), so it never depends on
# the old store, which a later commit removes.
# Up to BOUND_IMAGES_PARALLEL images are worked on at once, each by a job
# (a subshell) that reports to the main loop through a FIFO; the main loop
# alone writes to the notify fd.

# ---------------------------------------------------------------------------
# The deployment's store.

# primary_info: set p_driver, p_graphroot, p_runroot from podman's view of
# the primary store (whatever configuration podman reads, drop-ins included).
primary_info() {
	[ -z "${p_driver:-}" ] || return 0
	_pi=$(run $PODMAN info --format '{{.Store.GraphDriverName}}|{{.Store.GraphRoot}}|{{.Store.RunRoot}}') ||
		die "'$PODMAN info' failed (see above): the primary containers storage must work before bound images can be added to it"
	p_driver=${_pi%%|*}
	_pi=${_pi#*|}
	p_graphroot=${_pi%%|*}
	p_runroot=${_pi#*|}
	[ -n "$p_driver" ] || die "'$PODMAN info' reported no storage driver"
}

# store_driver_of DIR: the graph driver a store was made with (its
# <driver>-images directory), or nothing.
store_driver_of() {
	set +f
	for _sd in "$1"/*-images; do
		set -f
		[ -d "$_sd" ] || continue
		_sd=${_sd##*/}
		printf '%s' "${_sd%-images}"
		return 0
	done
	set -f
	return 0
}

# The store's driver must be the primary store's: podman opens additional
# image stores with its own driver.
choose_driver() {
	driver=$(store_driver_of "$store")
	if [ -n "$driver" ]; then
		[ -z "$DRIVER_SETTING" ] || [ "$DRIVER_SETTING" = "$driver" ] ||
			die "$store was made with the $driver driver but BOUND_IMAGES_STORAGE_DRIVER=$DRIVER_SETTING; abort this deployment's pre-stage (which removes the store) and prepare again"
		return 0
	fi
	if [ -n "$DRIVER_SETTING" ]; then
		driver=$DRIVER_SETTING
	elif driver=$(configured_driver) && [ -n "$driver" ]; then
		:
	else
		primary_info
		driver=$p_driver
	fi
}

# configured_driver: the driver the storage.conf podman reads names, found
# the way containers-storage finds that file (CONTAINERS_STORAGE_CONF, else
# /etc, else /usr/share). Fails, so that podman is asked instead, when the
# file names none (the driver is then chosen at run time) or storage.conf.d
# drop-ins could change it. Saves a 'podman info' (0.5 s or more) per
# prepare; commit asks podman anyway and refuses a store of another driver.
configured_driver() {
	for _cd in /etc/containers/storage.conf.d /usr/share/containers/storage.conf.d; do
		[ ! -d "$_cd" ] || return 1
	done
	if [ -n "${CONTAINERS_STORAGE_CONF:-}" ]; then
		_cd=$CONTAINERS_STORAGE_CONF
	elif [ -e /etc/containers/storage.conf ]; then
		_cd=/etc/containers/storage.conf
	else
		_cd=/usr/share/containers/storage.conf
	fi
	[ -f "$_cd" ] && [ -r "$_cd" ] || return 1
	_cd_table=
	_cd_driver=
	while IFS= read -r _cd_line || [ -n "$_cd_line" ]; do
		_cd_line=${_cd_line#"${_cd_line%%[![:space:]]*}"}
		case $_cd_line in
		\[*) _cd_table=$(table_name "$_cd_line") ;;
		driver*=*)
			[ "$_cd_table" = storage ] || continue
			_cd_key=${_cd_line%%=*}
			[ "$(trim "$_cd_key")" = driver ] || continue
			_cd_driver=$(trim "${_cd_line#*=}")
			_cd_driver=$(trim "${_cd_driver%%#*}")
			case $_cd_driver in
			\"*\" | \'*\') _cd_driver=${_cd_driver#?}; _cd_driver=${_cd_driver%?} ;;
			esac
			;;
		esac
	done <"$_cd"
	[ -n "$_cd_driver" ] || return 1
	printf '%s' "$_cd_driver"
}

# store_ref_of DRIVER STORE RUNROOT REF: a containers-storage reference.
store_ref_of() {
	_opts=
	# The overlay driver would bind-mount its home onto itself and leave the
	# mount behind; a store that is only read from needs no private mount.
	[ "$1" = overlay ] && _opts=:overlay.skip_mount_home=true
	printf 'containers-storage:[%s@%s+%s%s]%s' "$1" "$2" "$3" "$_opts" "$4"
}

# store_ref REF: REF in this deployment's store.
store_ref() {
	store_ref_of "$driver" "$store" "$runroot" "$1"
}

# store_names [STORE DRIVER]: the names the images of STORE (this
# deployment's by default) carry now, one per line, read from
# containers-storage's image list. A name is added to an image only after
# its layers, manifest and configuration are all in (containers/image names
# the image last), so a name listed here is a complete image.
store_names() {
	_sn_file=${1:-$store}/${2:-$driver}-images/images.json
	[ -s "$_sn_file" ] || return 0
	_sn_in=0
	tr ',' '\n' <"$_sn_file" | while IFS= read -r _sn; do
		case $_sn in
		*'"names":['*) _sn_in=1; _sn=${_sn#*\"names\":[} ;;
		*) [ "$_sn_in" = 1 ] || continue ;;
		esac
		case $_sn in
		*]*) _sn_in=0; _sn=${_sn%%]*} ;;
		esac
		_sn=${_sn#\"}
		_sn=${_sn%\"}
		[ -z "$_sn" ] || printf '%s\n' "$_sn"
	done
}

# manifest_digest FILE: the sha256 digest of FILE's bytes.
manifest_digest() {
	_md=$(sha256sum <"$1") || return 1
	printf 'sha256:%s' "${_md%% *}"
}

# image_state DEST DIGEST: 0 present (and, when pinned, matching), 1 absent,
# 2 present under that name but with another manifest digest. Sets
# got_digest to the stored manifest's digest. Scratch files go to $jw.
image_state() {
	got_digest=
	run $SKOPEO inspect --raw "$(store_ref "$1")" >"$jw/manifest" 2>"$jw/inspect.err" || return 1
	got_digest=$(manifest_digest "$jw/manifest") || return 1
	[ -z "$2" ] || [ "$got_digest" = "$2" ] || return 2
	return 0
}

# manifest_bytes FILE: the bytes an image manifest's config and layers add
# up to (every "size" in it), or nothing for a manifest list, whose
# instance is not known yet.
manifest_bytes() {
	_mb_text=$(cat -- "$1") || return 0
	case $_mb_text in
	*'"manifests"'*) return 0 ;;
	esac
	_mb_sum=0
	# shellcheck disable=SC2020 # each of the four characters becomes a newline
	for _mb in $(printf '%s' "$_mb_text" | tr ',{}[' '\n\n\n\n' | tr -d ' \t'); do
		case $_mb in
		'"size":'[0-9]*)
			_mb=${_mb#\"size\":}
			case $_mb in *[!0-9]*) continue ;; esac
			_mb_sum=$((_mb_sum + _mb))
			;;
		esac
	done
	[ "$_mb_sum" -gt 0 ] && printf '%s' "$_mb_sum"
	return 0
}

# other_stores: the stores another deployment's images may be copied from,
# as lines 'STORE DRIVER RUNROOT': the booted deployment's first (the one
# whose root is /, as libostree decides: same device and inode), then the
# other deployments that still exist, then stores whose deployment is gone
# but that a commit has not removed yet. Trash and this deployment's own
# store are never sources.
other_stores() {
	[ -d "$STORE_ROOT" ] || return 0
	_os_root=$(stat -L -c '%d:%i' / 2>/dev/null) || _os_root=
	: >"$work/others.booted"
	: >"$work/others.live"
	: >"$work/others.gone"
	set +f
	set -- "$STORE_ROOT"/*
	set -f
	for _os_d in "$@"; do
		_os_n=${_os_d##*/}
		[ "$_os_n" != "$name" ] && [ -d "$_os_d" ] && [ ! -L "$_os_d" ] || continue
		_os_drv=$(store_driver_of "$_os_d")
		[ -n "$_os_drv" ] && [ -s "$_os_d/$_os_drv-images/images.json" ] || continue
		_os_line="$_os_d $_os_drv $RUNROOT_BASE/$_os_n"
		case $_os_line in
		*"$NL"*) continue ;;
		esac
		if [ -d "$deploy_dir/$_os_n" ]; then
			if [ -n "$_os_root" ] && [ "$(stat -L -c '%d:%i' "$deploy_dir/$_os_n" 2>/dev/null)" = "$_os_root" ]; then
				printf '%s\n' "$_os_line" >>"$work/others.booted"
			else
				printf '%s\n' "$_os_line" >>"$work/others.live"
			fi
		else
			printf '%s\n' "$_os_line" >>"$work/others.gone"
		fi
	done
	cat "$work/others.booted" "$work/others.live" "$work/others.gone"
}

# event TEXT: one line to the main loop (fd 5, the FIFO). A line is one
# write, shorter than PIPE_BUF, so lines of parallel jobs never mix.
event() {
	printf '%s\n' "$*" >&5
}

# job_fail MESSAGE: end this job with MESSAGE as the step's error.
job_fail() {
	printf '%s' "$*" >"$jw/error"
	exit 1
}

# job_run COMMAND...: run COMMAND as this job's child, its pid recorded so
# that the main loop can stop it; fails at once once the main loop has
# asked every job to stop.
job_run() {
	[ ! -e "$work/stop" ] || exit 143
	run "$@" &
	printf '%s\n' "$!" >"$jw/pid"
	wait "$!"
}

# source_digest SRC TLS: the digest of the manifest SRC serves now, saved
# in $jw/source.manifest; only the manifest is fetched.
source_digest() {
	_sd_src=$1 _sd_tls=$2
	# shellcheck disable=SC2086 # SKOPEO is a word list
	set -- $SKOPEO --tmpdir "$jw/tmp" inspect --raw --retry-times "$RETRY_TIMES"
	[ -z "$authfile" ] || set -- "$@" --authfile "$authfile"
	[ -z "$_sd_tls" ] || set -- "$@" --tls-verify="$_sd_tls"
	job_run "$@" "$_sd_src" >"$jw/source.manifest" 2>"$jw/source.err" || return 1
	got_digest=$(manifest_digest "$jw/source.manifest")
}

# reuse_from DEST REPO DIGEST: copy REPO@DIGEST from the first other store
# that has it into this store as DEST. Sets reused_from.
reuse_from() {
	reused_from=
	[ -s "$work/others" ] || return 1
	while read -r _rf_store _rf_drv _rf_run; do
		# The digest is in the store's image list (as an image's digest, or
		# one of its manifests): only then is a copy attempted.
		_rf_list=$(cat -- "$_rf_store/$_rf_drv-images/images.json" 2>/dev/null) || continue
		case $_rf_list in
		*"\"$3\""* | *"-$3\""*) ;;
		*) continue ;;
		esac
		event "reuse $job $_rf_store"
		say "$1: copying $2@$3 from $_rf_store (the manifest digest matches; nothing is downloaded)"
		# shellcheck disable=SC2086 # SKOPEO is a word list
		if job_run $SKOPEO --tmpdir "$jw/tmp" copy -q "$(store_ref_of "$_rf_drv" "$_rf_store" "$_rf_run" "$2@$3")" "$(store_ref "$1")" 2>"$jw/reuse.err"; then
			reused_from=$_rf_store
			return 0
		fi
		[ ! -e "$work/stop" ] || exit 143
		warn "$1: copying from $_rf_store failed, trying elsewhere: $(tr '\n' ' ' <"$jw/reuse.err")"
	done <"$work/others"
	return 1
}

pull_one() {
	_po_dest=$1 _po_src=$2 _po_digest=$3 _po_tls=$4
	# shellcheck disable=SC2086 # SKOPEO is a word list
	set -- $SKOPEO --tmpdir "$jw/tmp" copy -q --retry-times "$RETRY_TIMES"
	[ -z "$authfile" ] || set -- "$@" --src-authfile "$authfile"
	[ -z "$_po_tls" ] || set -- "$@" --src-tls-verify="$_po_tls"
	# A pinned manifest must be stored as it is, never converted.
	[ -z "$_po_digest" ] || set -- "$@" --preserve-digests
	rm -f -- "$jw/digest"
	job_run "$@" --digestfile "$jw/digest" "$_po_src" "$(store_ref "$_po_dest")"
}

# image_job I: make image I of the list ($work/img.I) present in the store.
# Runs in a subshell; its result goes to $jw/result ('present DIGEST',
# 'reused STORE DIGEST' or 'pulled DIGEST'), a failure's message to
# $jw/error.
image_job() {
	job=$1
	jw=$work/job.$1
	mkdir -p -- "$jw/tmp" || job_fail "cannot make $jw"
	# skopeo keeps the blobs of a pull in its --tmpdir until the image is
	# stored: that directory's growth is the bytes pulled so far, and what a
	# killed run leaves there goes with $work.
	TMPDIR=$jw/tmp
	export TMPDIR
	IFS="$US" read -r _j_dest _j_src _j_digest _j_tls _j_link <"$work/img.$1"
	_j_rc=1
	case "$NL$present$NL" in
	*"$NL$_j_dest$NL"*)
		# In a clone, a tag's name came from another deployment: it is
		# checked against the registry below, never trusted.
		if [ -n "$_j_digest" ] || [ "$cloning" = 0 ]; then
			_j_rc=0
			got_digest=
			# Pinned: what the name holds is checked, not assumed.
			[ -z "$_j_digest" ] || image_state "$_j_dest" "$_j_digest" || _j_rc=$?
		fi
		;;
	esac
	case $_j_rc in
	0)
		if [ "$cloning" = 1 ]; then
			say "$_j_dest: in the clone with the pinned digest ($got_digest)"
			echo "cloned $got_digest" >"$jw/result"
		elif [ -n "$got_digest" ]; then
			say "$_j_dest: already present ($got_digest)"
			echo "present $got_digest" >"$jw/result"
		else
			say "$_j_dest: already present"
			echo "present" >"$jw/result"
		fi
		return 0
		;;
	2) warn "$_j_dest: the store holds manifest $got_digest under that name, not the pinned one; fetching again" ;;
	esac

	# The manifest the source serves now: its digest decides reuse (a tag),
	# its sizes are the pull's total bytes. One manifest request, no layers.
	_j_want=$_j_digest
	_j_bytes=
	if source_digest "$_j_src" "$_j_tls"; then
		_j_bytes=$(manifest_bytes "$jw/source.manifest")
		[ -n "$_j_want" ] || _j_want=$got_digest
	else
		[ ! -e "$work/stop" ] || exit 143
		warn "$_j_dest: cannot read the manifest from $_j_src ($(tr '\n' ' ' <"$jw/source.err")); pulling without checking other stores"
		[ -n "$_j_digest" ] || _j_want=
	fi
	if [ "$cloning" = 1 ] && [ -n "$_j_want" ] && [ -z "$_j_digest" ] && clone_has "$_j_dest" "$_j_want"; then
		say "$_j_dest: in the clone with the digest the source serves ($_j_want)"
		echo "cloned $_j_want" >"$jw/result"
		return 0
	fi
	if is_true "$REUSE" && [ -n "$_j_want" ] && [ -s "$work/others" ]; then
		case $_j_dest in
		*@*) _j_repo=${_j_dest%%@*} ;;
		*) _j_repo=${_j_dest%:*} ;;
		esac
		if reuse_from "$_j_dest" "$_j_repo" "$_j_want"; then
			# The copy keeps the source's manifest under its digest: what
			# the store now finds by that digest must hash to it.
			_j_rc=0
			image_state "$_j_repo@$_j_want" "$_j_want" || _j_rc=$?
			[ "$_j_rc" = 0 ] ||
				job_fail "$_j_dest: copied from $reused_from, but this store does not find it by the digest $_j_want; abort this deployment's pre-stage and prepare again"
			say "$_j_dest: reused from $reused_from ($_j_want)"
			echo "reused $reused_from $_j_want" >"$jw/result"
			return 0
		fi
	fi

	event "pull $1 ${_j_bytes:-0}"
	say "$_j_dest: pulling from $_j_src ($_j_link)"
	pull_one "$_j_dest" "$_j_src" "$_j_digest" "$_j_tls" || {
		[ ! -e "$work/stop" ] || exit 143
		job_fail "pulling $_j_dest from $_j_src failed (see above); bound by $_j_link. Check the name, the network or mirror, and the credentials (${authfile:-the default auth files of skopeo}), then start the pre-stage again: images already pulled are kept"
	}
	_j_rc=0
	if [ -n "$_j_digest" ]; then
		# Check what the store holds under the pinned name, independently
		# of the copy (a pinned manifest list is stored whole too).
		image_state "$_j_dest" "$_j_digest" || _j_rc=$?
	else
		got_digest=$(cat -- "$jw/digest" 2>/dev/null) || got_digest=unknown
	fi
	case $_j_rc in
	0) ;;
	2) job_fail "$_j_dest: the pulled image's manifest digest is $got_digest, not the pinned $_j_digest: $_j_src does not hold the image $_j_link pins; fix the source or the digest" ;;
	*) cat "$jw/inspect.err" >&2; job_fail "$_j_dest: pulled, but the store does not find it by that name (see above)" ;;
	esac
	say "$_j_dest: pulled ($got_digest)"
	echo "pulled $got_digest" >"$jw/result"
}

# image_records [STORE]: the image records of STORE's images.json (this
# store by default), one per line as 'ID<US>RECORD'. Each record starts
# with {"id":" and nested objects have no "id", so the split is exact for
# the compact JSON containers-storage writes. tr does the splitting: in
# dash, cutting a 16 kB string with ${x#*...} costs about 0.1 s.
image_records() {
	[ -s "${1:-$store}/$driver-images/images.json" ] || return 0
	tr '{\n' '\n ' <"${1:-$store}/$driver-images/images.json" | {
		_ir_id=
		_ir_rec=
		while IFS= read -r _ir_l || [ -n "$_ir_l" ]; do
			case $_ir_l in
			'"id":"'*)
				[ -z "$_ir_id" ] || printf '%s%s%s\n' "$_ir_id" "$US" "$_ir_rec"
				_ir_id=${_ir_l#\"id\":\"}
				_ir_id=${_ir_id%%\"*}
				_ir_rec=$_ir_l
				;;
			*) [ -z "$_ir_id" ] || _ir_rec="$_ir_rec{$_ir_l" ;;
			esac
		done
		[ -z "$_ir_id" ] || printf '%s%s%s\n' "$_ir_id" "$US" "$_ir_rec"
	}
}

# clone_has NAME DIGEST: the clone's image named NAME has DIGEST (as its
# manifest's digest, or one of its manifests'), by the records clone_start
# read once (splitting the JSON costs about 0.1 s in dash).
clone_has() {
	while IFS="$US" read -r _sh_id _sh_rec; do
		_sh_names=${_sh_rec#*\"names\":\[}
		_sh_names=${_sh_names%%]*}
		case ",$_sh_names," in
		*",\"$1\","*) ;;
		*) continue ;;
		esac
		case $_sh_rec in
		*"\"$2\""* | *"-$2\""*) return 0 ;;
		esac
		return 1
	done <"$work/clone.records"
	return 1
}

# clone_start: begin this deployment's first store as a clone of the
# booted deployment's (the first of $work/others), under .clone-<name>;
# $store names the clone until clone_finish. Layer files are hard links
# (cp -a --link): no data is copied, and since a file's data stays until
# its last link goes, removing the old store later leaves the clone whole.
# Everything containers-storage rewrites (its JSON records, locks, image
# metadata, tar-split files) is a copy of its own. Layer files are never
# modified in place: overlay mounts them read-only below a container's
# upper directory, and these stores hold no containers. A clone left by a
# killed run is taken up again: no tag in a clone is trusted (image_job
# asks the registry for each), so it is as good as a new one.
clone_start() {
	cloning=0
	final_store=$store
	_cl_tmp=$STORE_ROOT/.clone-$name
	if [ ! -d "$_cl_tmp" ]; then
		read -r _cl_src _cl_drv _cl_run <"$work/others" || return 0
		[ "$_cl_drv" = "$driver" ] || return 0
		remove_tree "$_cl_tmp" || return 0
		notify "STATUS=Cloning $_cl_src (layers shared by hard links)"
		mkdir -- "$_cl_tmp.new" 2>/dev/null || { remove_tree "$_cl_tmp.new" && mkdir -- "$_cl_tmp.new"; } || return 0
		set +f
		set -- "$_cl_src"/*
		set -f
		for _cl_e in "$@"; do
			case ${_cl_e##*/} in
			# podman's own database and scratch directories are not part of the store.
			libpod | tmp | mounts) continue ;;
			"$_cl_drv") _cl_how=--link ;;
			*) _cl_how= ;;
			esac
			# shellcheck disable=SC2086 # empty or one option
			if ! cp -a $_cl_how -- "$_cl_e" "$_cl_tmp.new/"; then
				warn "cannot clone $_cl_src (see above); copying image by image instead"
				remove_tree "$_cl_tmp.new" || :
				return 0
			fi
		done
		# Complete under its name or not there at all.
		mv -- "$_cl_tmp.new" "$_cl_tmp" || { remove_tree "$_cl_tmp.new" || :; return 0; }
		say "cloned $_cl_src (layer files hard-linked); each image is checked against its source"
	else
		say "taking up the clone $_cl_tmp a killed run left; each image is checked against its source"
	fi
	cloning=1
	store=$_cl_tmp
	image_records >"$work/clone.records"
}

# unbound_images RECORDS: the ids of the images in RECORDS (image_records
# lines) that carry no name bound here.
unbound_images() {
	while IFS="$US" read -r _ub_id _ub_rec; do
		_ub_names=${_ub_rec#*\"names\":\[}
		_ub_names=${_ub_names%%]*}
		_ub_i=1
		_ub_keep=0
		while [ "$_ub_i" -le "$_ei_n" ]; do
			eval "_ub_dest=\$_ei_name_$_ub_i"
			case ",$_ub_names," in
			*",\"$_ub_dest\","*) _ub_keep=1; break ;;
			esac
			_ub_i=$((_ub_i + 1))
		done
		[ "$_ub_keep" = 1 ] && continue
		case $_ub_id in
		'' | *[!0-9a-f]*) return 1 ;;
		esac
		printf '%s\n' "$_ub_id"
	done <"$1"
}

# prune_clone IDS...: remove those images from the clone (their layers go
# unless a kept image shares them). Its own process, started by
# prune_start beside the image jobs: containers-storage locks the store
# for each change, as for parallel podman commands.
prune_clone() {
	for _pc_id in "$@"; do
		# shellcheck disable=SC2086 # SKOPEO is a word list
		run $SKOPEO delete "$(store_ref "@$_pc_id")" || {
			printf '%s\n' "$_pc_id" >"$work/prune.failed"
			return 1
		}
	done
}

# prune_start: remove, in the background, the clone's images that carry no
# name bound here (the other deployment's images, normally all but the
# ones kept).
prune_start() {
	_ps_ids=$(unbound_images "$work/clone.records") || die "cannot read the image records of $store"
	_ei_pruned=0
	_ei_pruner=
	[ -n "$_ps_ids" ] || return 0
	# shellcheck disable=SC2086 # ids: one word each
	set -- $_ps_ids
	_ei_pruned=$#
	prune_clone "$@" 3>&- 4<&- 5<&- </dev/null &
	_ei_pruner=$!
}

# clone_finish: wait for the pruning; when a pull or copy took over a name
# that an image of the clone carried, remove that image too if no bound
# name is left on it; then rename the clone into place as the store.
clone_finish() {
	[ "$cloning" = 1 ] || return 0
	if [ -n "$_ei_pruner" ]; then
		wait "$_ei_pruner" ||
			die "cannot remove image $(cat -- "$work/prune.failed" 2>/dev/null), which this deployment does not bind, from $store (see above); start the pre-stage again"
	fi
	if [ "$_ei_renamed" = 1 ]; then
		image_records >"$work/records"
		_cf_ids=$(unbound_images "$work/records") || die "cannot read the image records of $store"
		# shellcheck disable=SC2086 # ids: one word each
		prune_clone $_cf_ids ||
			die "cannot remove image $(cat -- "$work/prune.failed" 2>/dev/null), which this deployment does not bind, from $store (see above); start the pre-stage again"
		set -- $_cf_ids
		_ei_pruned=$((_ei_pruned + $#))
	fi
	sync -- "$store/$driver-images/images.json" "$store/$driver-layers/layers.json" 2>/dev/null || :
	mv -- "$store" "$final_store" || die "cannot rename $store to $final_store"
	sync -- "$STORE_ROOT" 2>/dev/null || :
	[ "$_ei_pruned" = 0 ] || say "removed $_ei_pruned images this deployment does not bind from the clone"
	store=$final_store
	cloning=0
}

# fmt_bytes DONE TOTAL: "120/300 MB" (decimal units, as registries and
# podman count), "120 MB" when TOTAL is unknown (0).
fmt_bytes() {
	if [ "$2" -ge 10000000 ] || { [ "$2" = 0 ] && [ "$1" -ge 10000000 ]; }; then
		_fb_u=MB _fb_d=1000000
	else
		_fb_u=kB _fb_d=1000
	fi
	if [ "$2" = 0 ]; then
		printf '%s %s' "$(($1 / _fb_d))" "$_fb_u"
	else
		printf '%s/%s %s' "$(($1 / _fb_d))" "$(($2 / _fb_d))" "$_fb_u"
	fi
}

# progress_tick: a STATUS with the bytes of every running pull (the form of
# docs/hooks.md, "Bytes progress", which the CLI parses), and a
# PROGRESS counting finished images whole and running pulls by their bytes.
progress_tick() {
	_pt_status=
	_pt_sum=$((_ei_done * 100))
	for _pt_i in $_ei_pulling; do
		_pt_done=$(du -sb -- "$work/job.$_pt_i/tmp" 2>/dev/null) || _pt_done=0
		_pt_done=${_pt_done%%[!0-9]*}
		_pt_done=${_pt_done:-0}
		eval "_pt_total=\${_ei_total_$_pt_i:-0}"
		if [ "$_pt_total" -gt 0 ]; then
			[ "$_pt_done" -le "$_pt_total" ] || _pt_done=$_pt_total
			# A pull is 100 % only once its image is stored.
			_pt_pc=$((_pt_done * 100 / _pt_total))
			[ "$_pt_pc" -le 99 ] || _pt_pc=99
			_pt_sum=$((_pt_sum + _pt_pc))
		fi
		eval "_pt_name=\$_ei_name_$_pt_i"
		_pt_status="$_pt_status${_pt_status:+, }pulling $_pt_name $(fmt_bytes "$_pt_done" "$_pt_total")"
	done
	[ -n "$_pt_status" ] || return 0
	notify "STATUS=$_pt_status ($_ei_done/$_ei_n images ready)"
	progress $((_pt_sum / _ei_n))
}

# progress N: PROGRESS=N, never lower than one sent before.
progress() {
	[ "$1" -gt "$_ei_progress" ] || return 0
	_ei_progress=$1
	notify "PROGRESS=$1"
}

# stop_jobs: ask every running job to stop, and stop its current command.
stop_jobs() {
	: >"$work/stop"
	for _sj in $_ei_running; do
		# Only the command: the job itself then sees the stop and reports.
		[ -s "$work/job.$_sj/pid" ] && kill -TERM "$(cat -- "$work/job.$_sj/pid")" 2>/dev/null
	done
	return 0
}

# words_without LIST WORD: LIST without WORD.
words_without() {
	_ww=
	for _w in $1; do
		[ "$_w" = "$2" ] || _ww="$_ww $_w"
	done
	printf '%s' "$_ww"
}

# run_jobs MODE: image_MODE I for every image I, PARALLEL at once, until
# all are done or one failed (_ei_failed); events from the jobs and the
# ticker are handled as they come.
run_jobs() {
	_ei_next=1
	_ei_done=0
	_ei_running=
	_ei_pulling=
	_ei_failed=
	while :; do
		while [ -z "$_ei_failed" ] && [ "$_ei_next" -le "$_ei_n" ] && [ "$(set -- $_ei_running; echo $#)" -lt "$PARALLEL" ]; do
			eval "_ei_dest=\$_ei_name_$_ei_next"
			notify "STATUS=Checking bound image $_ei_next/$_ei_n: $_ei_dest"
			(
				trap - TERM INT EXIT
				("image_$1" "$_ei_next")
				event "done $_ei_next $?"
			) 3>&- 4<&- </dev/null &
			printf '%s\n' "$!" >"$work/job.$_ei_next.pid"
			_ei_running="$_ei_running $_ei_next"
			_ei_next=$((_ei_next + 1))
		done
		[ -n "$_ei_running" ] || break
		IFS=' ' read -r _ei_ev _ei_i _ei_arg <&5 || die "lost the events of the image jobs"
		case $_ei_ev in
		tick) progress_tick ;;
		reuse)
			eval "_ei_dest=\$_ei_name_$_ei_i"
			notify "STATUS=Reusing bound image $_ei_i/$_ei_n: $_ei_dest (from $_ei_arg)"
			;;
		pull)
			eval "_ei_dest=\$_ei_name_$_ei_i"
			eval "_ei_total_$_ei_i=\$_ei_arg"
			_ei_pulling="$_ei_pulling $_ei_i"
			notify "STATUS=Pulling bound image $_ei_i/$_ei_n: $_ei_dest"
			notify "EXTEND_TIMEOUT_USEC=$((PULL_TIMEOUT_SEC * 1000000))"
			;;
		done)
			wait "$(cat -- "$work/job.$_ei_i.pid")" 2>/dev/null || :
			_ei_running=$(words_without "$_ei_running" "$_ei_i")
			_ei_pulling=$(words_without "$_ei_pulling" "$_ei_i")
			if [ "$_ei_arg" = 0 ] && [ -s "$work/job.$_ei_i/result" ]; then
				_ei_done=$((_ei_done + 1))
				case $(cat -- "$work/job.$_ei_i/result") in
				pulled*) _ei_pulled=$((_ei_pulled + 1)); _ei_fetched=1 ;;
				reused*) _ei_reused=$((_ei_reused + 1)); _ei_fetched=1 ;;
				cloned*) _ei_reused=$((_ei_reused + 1)); _ei_fetched=0 ;;
				*) _ei_fetched=0 ;;
				esac
				# A name the clone had, now on a newly fetched image: the old
				# image may have no bound name left (clone_finish).
				if [ "$cloning" = 1 ] && [ "$_ei_fetched" = 1 ]; then
					eval "_ei_dest=\$_ei_name_$_ei_i"
					case "$NL$present$NL" in
					*"$NL$_ei_dest$NL"*) _ei_renamed=1 ;;
					esac
				fi
				progress $((_ei_done * 100 / _ei_n))
			elif [ -z "$_ei_failed" ]; then
				_ei_failed=$_ei_i
				stop_jobs
			fi
			;;
		esac
	done
}

# ensure_images: every image of $work/images present in the store (kept,
# reused or pulled, see the top of this file), with progress on the notify
# fd. Fails naming the first image that could not be made present; the
# other jobs are stopped, and what they completed stays.
ensure_images() {
	_ei_n=0
	while IFS= read -r _ei_line; do
		_ei_n=$((_ei_n + 1))
		printf '%s\n' "$_ei_line" >"$work/img.$_ei_n"
		eval "_ei_name_$_ei_n=\${_ei_line%%\"\$US\"*}"
	done <"$work/images"
	choose_driver
	mkdir -p -- "$STORE_ROOT" "$RUNROOT_BASE" || die "cannot create $STORE_ROOT or $RUNROOT_BASE"
	chmod 0700 -- "$STORE_ROOT" 2>/dev/null || :
	other_stores >"$work/others"
	jw=$work
	# A first store starts as a clone of the booted deployment's.
	cloning=0
	_ei_pruner=
	_ei_renamed=0
	if [ ! -e "$store" ] && is_true "$REUSE" && { [ -s "$work/others" ] || [ -d "$STORE_ROOT/.clone-$name" ]; }; then
		clone_start
	fi
	present=$(store_names)
	[ "$cloning" = 0 ] || prune_start
	rm -f -- "$work/stop" "$work/events"
	mkfifo -m 0600 -- "$work/events" || die "cannot make $work/events"
	# Read and write: neither open blocks, and no writer ever sees EPIPE.
	exec 5<>"$work/events"
	# The ticker: a line a second, for the bytes progress. Its sleep is
	# stopped with it, so that nothing outlives the step; and it ends by
	# itself once the step's shell ($$) is gone (a SIGKILL of the step
	# alone): its writes to the events FIFO never fail, since it holds the
	# FIFO open for reading too.
	(
		_tk=
		trap 'kill "$_tk" 2>/dev/null; exit 0' TERM
		trap - INT
		while [ ! -e "$work/stop" ] && [ ! -e "$work/done" ] && kill -0 "$$" 2>/dev/null; do
			sleep 1 &
			_tk=$!
			wait "$_tk"
			event tick 2>/dev/null || exit 0
		done
	) 3>&- 4<&- </dev/null >/dev/null 2>&1 &
	_ei_ticker=$!
	_ei_progress=0
	_ei_pulled=0
	_ei_reused=0
	_ei_failed=
	trap 'stop_jobs; kill -TERM "$_ei_ticker" $_ei_pruner 2>/dev/null; exit 143' TERM
	trap 'stop_jobs; kill -TERM "$_ei_ticker" $_ei_pruner 2>/dev/null; exit 130' INT
	run_jobs job
	: >"$work/done"
	kill -TERM "$_ei_ticker" 2>/dev/null
	wait "$_ei_ticker" 2>/dev/null
	exec 5<&-
	trap 'exit 143' TERM
	trap 'exit 130' INT
	[ -n "$_ei_failed" ] || clone_finish
	if [ -n "$_ei_failed" ]; then
		# Nothing of this step outlives it: the pruning ends first.
		[ -z "$_ei_pruner" ] || wait "$_ei_pruner" 2>/dev/null || :
		eval "_ei_dest=\$_ei_name_$_ei_failed"
		if [ -s "$work/job.$_ei_failed/error" ]; then
			die "$(cat -- "$work/job.$_ei_failed/error")"
		fi
		die "$_ei_dest: its job ended without a result (see above)"
	fi
	# Where SELinux labels matter, give the store the labels policy assigns
	# (docs/bound-images.md: the package maps the store root to
	# /var/lib/containers' labels).
	if [ -e /sys/fs/selinux/enforce ] && command -v restorecon >/dev/null 2>&1; then
		restorecon -R -F -- "$store" || warn "restorecon on $store failed; containers may be denied access to its layers"
	fi
	notify "STATUS=$_ei_n bound images ready ($_ei_pulled pulled, $_ei_reused reused)"
	say "$_ei_n bound images ready in $store, $_ei_reused reused from other deployments' stores ($_ei_pulled pulled, $((_ei_n - _ei_pulled - _ei_reused)) already present)"
}
