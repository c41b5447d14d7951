# shellcheck shell=sh
# bound-images-units.sh: reading a deployment's bound-images.d into the
# list of images to pull. Sourced by bound-images (never run), which sets
# deployment, work, SOURCES, SOURCES_ONLY, BOUND_DIR, NL and US first.
# ---------------------------------------------------------------------------
# Reading bound-images.d, as bootc does (crates/lib/src/boundimage.rs):
# every entry must be a symlink to a .image or .container file, resolved
# inside the deployment; [Image] or [Container] Image= names the image;
# %-specifiers other than %% are refused; AuthFile= is refused.

# unit_value VALUE: a quadlet value with one pair of surrounding quotes
# removed and %% made %; fails (after a message) on any other specifier.
unit_value() {
	_uv=$1
	case $_uv in
	\"*\") _uv=${_uv#?}; _uv=${_uv%?} ;;
	\'*\') _uv=${_uv#?}; _uv=${_uv%?} ;;
	esac
	_uv_out=
	while :; do
		case $_uv in
		*%*) ;;
		*) break ;;
		esac
		_uv_out=$_uv_out${_uv%%\%*}
		_uv=${_uv#*%}
		case $_uv in
		%*) _uv_out=$_uv_out%; _uv=${_uv#?} ;;
		'') printf '%s\n' "an unterminated %" >&2; return 1 ;;
		*) printf '%s\n' "systemd specifier %${_uv%"${_uv#?}"} is not supported in bound images (bootc refuses it too); write the value literally, and %% for a %" >&2; return 1 ;;
		esac
	done
	printf '%s' "$_uv_out$_uv"
}

# parse_unit FILE SECTION WHERE: set u_image and u_tls from FILE's
# [SECTION]. Syntax as systemd reads unit files: comments (# ;), blank lines,
# a trailing backslash continues the line, the last assignment of a key wins.
parse_unit() {
	u_image=
	u_tls=
	_pu_section=
	_pu_pending=
	_pu_no=0
	# shellcheck disable=SC2094 # $1 is only read; the loop passes its name for messages
	while IFS= read -r _pu_line || [ -n "$_pu_line" ]; do
		_pu_no=$((_pu_no + 1))
		_pu_t=${_pu_line#"${_pu_line%%[![:space:]]*}"}
		_pu_t=${_pu_t%"${_pu_t##*[![:space:]]}"}
		case $_pu_t in
		\#* | \;*) continue ;;
		esac
		_pu_bs=$_pu_t
		_pu_odd=0
		while :; do
			case $_pu_bs in
			*\\) _pu_bs=${_pu_bs%?}; _pu_odd=$((1 - _pu_odd)) ;;
			*) break ;;
			esac
		done
		if [ "$_pu_odd" = 1 ]; then
			_pu_pending="$_pu_pending${_pu_t%?} "
			continue
		fi
		parse_unit_line "$1" "$2" "$3" "$_pu_pending$_pu_t" "$_pu_no"
		_pu_pending=
	done <"$1"
	[ -z "$_pu_pending" ] || parse_unit_line "$1" "$2" "$3" "$_pu_pending" "$_pu_no"
	[ -n "$u_image" ] || die "$3: no Image= in its [$2] section; bootc needs one to bind the image"
}

parse_unit_line() {
	_pl=$4
	case $_pl in
	'') return 0 ;;
	\[*\]) _pu_section=${_pl#?}; _pu_section=${_pu_section%?}; return 0 ;;
	*=*) ;;
	*) warn "$3:$5: not a Key=Value line, ignored"; return 0 ;;
	esac
	[ "$_pu_section" = "$2" ] || return 0
	_pl_key=${_pl%%=*}
	_pl_key=${_pl_key%"${_pl_key##*[![:space:]]}"}
	_pl_val=${_pl#*=}
	_pl_val=${_pl_val#"${_pl_val%%[![:space:]]*}"}
	case $2:$_pl_key in
	*:Image)
		if [ -z "$_pl_val" ]; then
			u_image=
		else
			u_image=$(unit_value "$_pl_val") || die "$3:$5: Image=$_pl_val: see above"
		fi
		;;
	Image:AuthFile)
		[ -z "$_pl_val" ] ||
			die "$3:$5: AuthFile= is not supported for bound images (bootc refuses it too): the pull uses the host's credentials (BOUND_IMAGES_AUTHFILE, by default /etc/ostree/auth.json as bootc does); remove the key"
		;;
	Image:TLSVerify)
		case $_pl_val in
		'') u_tls= ;;
		1 | [yY][eE][sS] | [tT][rR][uU][eE] | [oO][nN]) u_tls=true ;;
		0 | [nN][oO] | [fF][aA][lL][sS][eE] | [oO][fF][fF]) u_tls=false ;;
		*) die "$3:$5: TLSVerify=$_pl_val is not a boolean" ;;
		esac
		;;
	Image:AllTags)
		case $_pl_val in
		'' | 0 | [nN][oO] | [fF][aA][lL][sS][eE] | [oO][fF][fF]) ;;
		*) die "$3:$5: AllTags= is not supported for bound images: bind each tag with its own .image file" ;;
		esac
		;;
	Image:Arch | Image:OS | Image:Variant | Image:Creds | Image:CertDir | Image:DecryptionKey)
		[ -z "$_pl_val" ] ||
			die "$3:$5: $_pl_key= changes what is pulled and is not supported for bound images (bootc ignores it and pulls for this host, so the image would not be the one the unit asks for); remove the key"
		;;
	esac
	return 0
}

# normalize_ref REF: the name containers-storage gives REF, Docker style
# (busybox -> docker.io/library/busybox:latest), so names compare equal to
# what podman lists. Short names resolve as Docker does, not through
# registries.conf's search list.
normalize_ref() {
	_nr=$1
	_nr_digest=
	case $_nr in
	*@*) _nr_digest=@${_nr#*@}; _nr=${_nr%%@*} ;;
	esac
	case $_nr in
	*/*)
		_nr_first=${_nr%%/*}
		case $_nr_first in
		*.* | *:* | localhost) ;;
		*) _nr=docker.io/$_nr ;;
		esac
		;;
	*) _nr=docker.io/library/$_nr ;;
	esac
	case $_nr in
	docker.io/*/*) ;;
	docker.io/*) _nr=docker.io/library/${_nr#docker.io/} ;;
	esac
	if [ -z "$_nr_digest" ]; then
		case ${_nr##*/} in
		*:*) ;;
		*) _nr=$_nr:latest ;;
		esac
	fi
	printf '%s' "$_nr$_nr_digest"
}

# check_sources: BOUND_IMAGES_SOURCES, if set, is readable and well formed
# (lines 'IMAGE SOURCE', '#' comments), so that source_for can only fail
# for "not there".
check_sources() {
	[ -n "$SOURCES" ] || return 0
	if [ ! -f "$SOURCES" ] || [ ! -r "$SOURCES" ]; then
		die "BOUND_IMAGES_SOURCES=$SOURCES is not a readable file"
	fi
	_cs_no=0
	while read -r _sf_img _sf_src _sf_extra || [ -n "${_sf_img:-}" ]; do
		_cs_no=$((_cs_no + 1))
		case ${_sf_img:-} in
		'' | \#*) continue ;;
		esac
		if [ -n "${_sf_extra:-}" ] || [ -z "${_sf_src:-}" ]; then
			die "$SOURCES:$_cs_no: expected 'IMAGE SOURCE' (two words), got '$_sf_img ${_sf_src:-} ${_sf_extra:-}'"
		fi
		case $_sf_src in
		?*:?*) ;;
		*) die "$SOURCES:$_cs_no: source '$_sf_src' needs a transport, e.g. oci-archive:/path/image.tar or docker://mirror.example/name:tag" ;;
		esac
	done <"$SOURCES"
}

# source_for REF: print the source BOUND_IMAGES_SOURCES maps REF to; fails
# when it maps nothing.
source_for() {
	[ -n "$SOURCES" ] || return 1
	while read -r _sf_img _sf_src _sf_extra || [ -n "${_sf_img:-}" ]; do
		if [ "${_sf_img:-}" = "$1" ]; then
			printf '%s' "$_sf_src"
			return 0
		fi
	done <"$SOURCES"
	return 1
}

# add_image LINK KIND UNIT: parse UNIT and append its image to $work/images
# as dest, source, digest, tls, link separated by $US (deduplicated by dest).
add_image() {
	case $2 in
	image) parse_unit "$3" Image "$1" ;;
	container) parse_unit "$3" Container "$1" ;;
	esac
	_ai_ref=${u_image#docker://}
	case $_ai_ref in
	'' | -* | *[[:space:][:cntrl:]]*)
		die "$1: Image=$u_image is not an image reference" ;;
	oci:* | oci-archive:* | dir:* | docker-archive:* | docker-daemon:* | containers-storage:* | ostree:* | sif:* | tarball:* | *://*)
		die "$1: Image=$u_image names a transport, not an image name podman could find later; bind a registry reference (registry/repository:tag or @sha256:...), and fetch it from an archive or mirror with BOUND_IMAGES_SOURCES" ;;
	*.image | *.build)
		die "$1: Image=$u_image refers to another quadlet unit; link that .image file into $BOUND_DIR instead" ;;
	esac
	_ai_digest=
	_ai_name=$_ai_ref
	case $_ai_ref in
	*@*)
		_ai_digest=${_ai_ref#*@}
		_ai_name=${_ai_ref%%@*}
		_ai_hex=${_ai_digest#sha256:}
		if [ "$_ai_hex" = "$_ai_digest" ] || [ "${#_ai_hex}" -ne 64 ]; then
			die "$1: Image=$u_image: only sha256 digests (@sha256: and 64 hex digits) can be verified"
		fi
		case $_ai_hex in
		*[!0-9a-f]*) die "$1: Image=$u_image: the digest must be lowercase hexadecimal" ;;
		esac
		# A tag next to a digest says nothing more: containers-storage and
		# podman find name@digest for name:tag@digest.
		case ${_ai_name##*/} in
		*:*) _ai_name=${_ai_name%:*} ;;
		esac
		_ai_ref_nt=$_ai_name@$_ai_digest
		;;
	*) _ai_ref_nt=$_ai_ref ;;
	esac
	_ai_dest=$(normalize_ref "$_ai_ref_nt")
	if _ai_src=$(source_for "$_ai_ref"); then
		:
	elif is_true "$SOURCES_ONLY"; then
		die "$1: no source for $_ai_ref in BOUND_IMAGES_SOURCES=${SOURCES:-(unset)}, and BOUND_IMAGES_SOURCES_ONLY is set: add a line '$_ai_ref <transport>:<location>' there"
	else
		_ai_src=docker://$_ai_ref_nt
	fi
	case $_ai_src in
	*"$US"* | *"$NL"*) die "$1: the source for $_ai_ref contains a control character" ;;
	esac
	if [ -s "$work/images" ]; then
		while IFS="$US" read -r _ai_d _ai_rest; do
			if [ "$_ai_d" = "$_ai_dest" ]; then
				say "$1: $_ai_dest is already bound by another entry"
				return 0
			fi
		done <"$work/images"
	fi
	printf '%s\n' "$_ai_dest$US$_ai_src$US$_ai_digest$US$u_tls$US$1" >>"$work/images"
}

# collect_images: fill $work/images from the deployment's bound-images.d.
collect_images() {
	: >"$work/images"
	check_sources
	_ci_dir=$(resolve_in_root "$deployment" "$BOUND_DIR") || die "cannot resolve $BOUND_DIR in $deployment (a symlink loop?)"
	[ -d "$_ci_dir" ] || return 0
	set +f
	set -- "$_ci_dir"/* "$_ci_dir"/.[!.]* "$_ci_dir"/..?*
	set -f
	for _ci_e in "$@"; do
		[ -e "$_ci_e" ] || [ -L "$_ci_e" ] || continue
		_ci_base=${_ci_e##*/}
		_ci_link=$BOUND_DIR/$_ci_base
		case $_ci_base in
		*[[:cntrl:]]*) die "$_ci_link: a name with control characters is not supported" ;;
		esac
		[ -L "$_ci_e" ] || die "$_ci_link is not a symlink: bootc requires each entry to be a symlink to a .image or .container file (e.g. ln -s /usr/share/containers/systemd/app.image $BOUND_DIR/app.image)"
		case $_ci_base in
		*.image) _ci_kind=image ;;
		*.container) _ci_kind=container ;;
		*) die "$_ci_link: invalid file extension: entries must end in .image or .container" ;;
		esac
		_ci_unit=$(resolve_in_root "$deployment" "$_ci_link") || die "$_ci_link: cannot resolve the link (a loop?)"
		[ -f "$_ci_unit" ] || die "$_ci_link points to ${_ci_unit#"$deployment"}, which is not a file in the deployment"
		[ -r "$_ci_unit" ] || die "$_ci_link: cannot read ${_ci_unit#"$deployment"}"
		add_image "$_ci_link" "$_ci_kind" "$_ci_unit"
	done
}

