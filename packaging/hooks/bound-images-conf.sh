# shellcheck shell=sh
# bound-images-conf.sh: storage.conf editing, and the checks commit makes
# with podman before and after. Sourced by bound-images (never run), which
# sets STORAGE_CONF, STORAGE_CONF_BASE, STORE_ROOT, MARKER, work, NL and US
# first.
# ---------------------------------------------------------------------------
# storage.conf: additionalimagestores, edited in place as text so that
# everything else in the file stays byte for byte. Only the forms
# storage.conf is written in are understood (a [storage.options] table with
# an additionalimagestores array of strings); anything else is refused
# rather than guessed at.

# toml_strings TEXT: print the string elements of the TOML array at the
# start of TEXT, one per line. Exit 0 when the array is complete, 2 when
# TEXT ends inside it, 1 (with a message) when it is not an array of
# plain strings.
toml_strings() {
	_ts=$1
	_ts_state=start
	_ts_out=
	while [ -n "$_ts" ]; do
		_ts_c=${_ts%"${_ts#?}"}
		_ts=${_ts#?}
		case $_ts_state:$_ts_c in
		start:[[:space:]]) ;;
		start:\[) _ts_state=array ;;
		start:*) echo "additionalimagestores is not an array" >&2; return 1 ;;
		array:[[:space:],]) ;;
		array:\#) case $_ts in *"$NL"*) _ts=${_ts#*"$NL"} ;; *) _ts= ;; esac ;;
		array:\]) _ts_state=closed ;;
		array:\")
			_ts_s=
			while :; do
				case $_ts in
				'') return 2 ;;
				\"*) _ts=${_ts#?}; break ;;
				\\\\* | \\\"*) _ts=${_ts#?}; _ts_s=$_ts_s${_ts%"${_ts#?}"}; _ts=${_ts#?} ;;
				\\*) printf '%s\n' 'additionalimagestores: only the \\ and \" escapes are supported in strings' >&2; return 1 ;;
				"$NL"*) echo "additionalimagestores: a string runs past the end of a line" >&2; return 1 ;;
				*) _ts_s=$_ts_s${_ts%"${_ts#?}"}; _ts=${_ts#?} ;;
				esac
			done
			_ts_out=$_ts_out$_ts_s$NL
			;;
		array:\')
			case $_ts in
			*\'*) ;;
			*) return 2 ;;
			esac
			_ts_s=${_ts%%\'*}
			_ts=${_ts#*\'}
			case $_ts_s in
			*"$NL"*) echo "additionalimagestores: a string runs past the end of a line" >&2; return 1 ;;
			esac
			_ts_out=$_ts_out$_ts_s$NL
			;;
		array:*) echo "additionalimagestores holds something other than strings" >&2; return 1 ;;
		closed:[[:space:]]) ;;
		closed:\#) case $_ts in *"$NL"*) _ts=${_ts#*"$NL"} ;; *) _ts= ;; esac ;;
		closed:*) echo "unexpected text after the additionalimagestores array" >&2; return 1 ;;
		esac
	done
	[ "$_ts_state" = closed ] || return 2
	printf '%s' "$_ts_out"
}

# toml_quote STRING: STRING as a TOML basic string.
toml_quote() {
	_tq=$1
	_tq_out=
	while [ -n "$_tq" ]; do
		_tq_c=${_tq%"${_tq#?}"}
		_tq=${_tq#?}
		case $_tq_c in
		\\ | \") _tq_out=$_tq_out\\$_tq_c ;;
		*) _tq_out=$_tq_out$_tq_c ;;
		esac
	done
	printf '"%s"' "$_tq_out"
}

# conf_text: the configuration commit starts from, into $work/conf.in.
conf_text() {
	if [ -e "$STORAGE_CONF" ]; then
		cat -- "$STORAGE_CONF" >"$work/conf.in" || die "cannot read $STORAGE_CONF"
		conf_existed=1
	elif [ -n "$STORAGE_CONF_BASE" ] && [ -e "$STORAGE_CONF_BASE" ]; then
		cat -- "$STORAGE_CONF_BASE" >"$work/conf.in" || die "cannot read $STORAGE_CONF_BASE"
		conf_existed=0
	else
		: >"$work/conf.in"
		conf_existed=0
	fi
}

# The name of a [table] header line, blanks removed.
table_name() {
	_tn=${1#\[}
	_tn=${_tn#\[}
	_tn=${_tn%%]*}
	printf '%s' "$_tn" | tr -d ' \t'
}

# conf_scan: read $work/conf.in; set c_has_storage, c_driver, c_has_options
# and write the additionalimagestores entries to $work/ais.
conf_scan() {
	c_has_storage=0
	c_driver=
	c_has_options=0
	: >"$work/ais"
	_cs_table=
	_cs_capture=
	_cs_in=0
	_cs_no=0
	while IFS= read -r _cs_line || [ -n "$_cs_line" ]; do
		_cs_no=$((_cs_no + 1))
		if [ "$_cs_in" = 1 ]; then
			_cs_capture=$_cs_capture$NL$_cs_line
			_cs_rc=0
			toml_strings "$_cs_capture" >"$work/ais" || _cs_rc=$?
			case $_cs_rc in
			0) _cs_in=0 ;;
			2) ;;
			*) die "$STORAGE_CONF:$_cs_no: cannot edit this additionalimagestores (see above); write it as additionalimagestores = [\"/path\", ...] under [storage.options]" ;;
			esac
			continue
		fi
		_cs_t=${_cs_line#"${_cs_line%%[![:space:]]*}"}
		case $_cs_t in
		'' | \#*) continue ;;
		\[*)
			_cs_table=$(table_name "$_cs_t")
			case $_cs_table in
			storage) c_has_storage=1 ;;
			storage.options) c_has_options=1 ;;
			esac
			continue
			;;
		esac
		_cs_key=${_cs_t%%=*}
		_cs_key=${_cs_key%"${_cs_key##*[![:space:]]}"}
		case $_cs_table:$_cs_key in
		storage:driver)
			_cs_v=${_cs_t#*=}
			_cs_v=$(trim "$_cs_v")
			_cs_v=${_cs_v%%#*}
			_cs_v=$(trim "$_cs_v")
			case $_cs_v in
			\"*\" | \'*\') _cs_v=${_cs_v#?}; _cs_v=${_cs_v%?} ;;
			esac
			c_driver=$_cs_v
			;;
		storage.options:additionalimagestores)
			_cs_capture=${_cs_t#*=}
			_cs_rc=0
			toml_strings "$_cs_capture" >"$work/ais" || _cs_rc=$?
			case $_cs_rc in
			0) ;;
			2) _cs_in=1 ;;
			*) die "$STORAGE_CONF:$_cs_no: cannot edit this additionalimagestores (see above); write it as additionalimagestores = [\"/path\", ...] under [storage.options]" ;;
			esac
			;;
		*)
			case $_cs_t in
			*additionalimagestores*)
				die "$STORAGE_CONF:$_cs_no: additionalimagestores is set in a form this hook does not edit; move it to an 'additionalimagestores = [...]' line in the [storage.options] table" ;;
			esac
			;;
		esac
	done <"$work/conf.in"
	[ "$_cs_in" = 0 ] || die "$STORAGE_CONF: the additionalimagestores array is not closed"
}

# conf_render DRIVER LIST: print $work/conf.in with driver (only where none
# is set) and additionalimagestores (LIST, one path per line) in place.
conf_render() {
	_cr_driver=$1
	_cr_list=
	_cr_rest=$2
	while [ -n "$_cr_rest" ]; do
		_cr_e=${_cr_rest%%"$NL"*}
		_cr_rest=${_cr_rest#*"$NL"}
		_cr_list="$_cr_list${_cr_list:+, }$(toml_quote "$_cr_e")"
	done
	_cr_ais="additionalimagestores = [$_cr_list]"
	_cr_mark="$MARKER entries under $STORE_ROOT are managed by the bound-images hook; other entries are kept"
	_cr_need_driver=0
	[ -n "$c_driver" ] || _cr_need_driver=1
	_cr_table=
	_cr_first_header=1
	_cr_skip=0
	_cr_capture=
	while IFS= read -r _cr_line || [ -n "$_cr_line" ]; do
		if [ "$_cr_skip" = 1 ]; then
			_cr_capture=$_cr_capture$NL$_cr_line
			toml_strings "$_cr_capture" >/dev/null 2>&1 && _cr_skip=0
			continue
		fi
		_cr_t=${_cr_line#"${_cr_line%%[![:space:]]*}"}
		case $_cr_t in
		"$MARKER"*) continue ;;
		\[*)
			if [ "$_cr_first_header" = 1 ] && [ "$c_has_storage" = 0 ]; then
				printf '[storage]\ndriver = %s\n\n' "$(toml_quote "$_cr_driver")"
			fi
			_cr_first_header=0
			printf '%s\n' "$_cr_line"
			_cr_table=$(table_name "$_cr_t")
			case $_cr_table in
			storage)
				[ "$_cr_need_driver" = 1 ] && printf 'driver = %s\n' "$(toml_quote "$_cr_driver")"
				;;
			storage.options)
				printf '%s\n%s\n' "$_cr_mark" "$_cr_ais"
				;;
			esac
			continue
			;;
		esac
		_cr_key=${_cr_t%%=*}
		_cr_key=${_cr_key%"${_cr_key##*[![:space:]]}"}
		case $_cr_table:$_cr_key in
		storage:driver)
			# An empty driver= was replaced under the header.
			[ "$_cr_need_driver" = 1 ] && continue
			;;
		storage.options:additionalimagestores)
			toml_strings "${_cr_t#*=}" >/dev/null 2>&1 || {
				_cr_skip=1
				_cr_capture=${_cr_t#*=}
			}
			continue
			;;
		esac
		printf '%s\n' "$_cr_line"
	done <"$work/conf.in"
	if [ "$_cr_first_header" = 1 ] && [ "$c_has_storage" = 0 ]; then
		printf '[storage]\ndriver = %s\n' "$(toml_quote "$_cr_driver")"
	fi
	if [ "$c_has_options" = 0 ]; then
		printf '\n[storage.options]\n%s\n%s\n' "$_cr_mark" "$_cr_ais"
	fi
}

# ---------------------------------------------------------------------------
# Layers the primary store borrows. containers-storage reuses a layer it
# finds in an additional image store instead of copying it, so an image
# pulled (or a container created) while a bound-images store was configured
# can depend on that store's layers. Such a store stays configured, and on
# disk, until nothing uses it.

# json_values FILE KEY: the 64-hex values of "KEY":"..." in a
# containers-storage JSON file (compact JSON, as it writes them), sorted.
json_values() {
	[ -s "$1" ] || return 0
	# shellcheck disable=SC2020 # each of the five characters becomes a newline
	tr ',{}[]' '\n\n\n\n\n' <"$1" | while IFS= read -r _jv; do
		case $_jv in
		"\"$2\":\""*\")
			_jv=${_jv#*\":\"}
			_jv=${_jv%\"}
			[ "${#_jv}" -eq 64 ] && printf '%s\n' "$_jv"
			;;
		esac
	done | sort -u
}

# store_in_use STORE: true when an image, layer or container of the primary
# store needs a layer that only STORE has.
store_in_use() {
	primary_info
	_su_d=$p_driver
	json_values "$1/$_su_d-layers/layers.json" id >"$work/su.store"
	[ -s "$work/su.store" ] || return 1
	{
		json_values "$p_graphroot/$_su_d-layers/layers.json" id
		json_values "$p_runroot/$_su_d-layers/volatile-layers.json" id
	} | sort -u >"$work/su.own"
	{
		json_values "$p_graphroot/$_su_d-layers/layers.json" parent
		json_values "$p_runroot/$_su_d-layers/volatile-layers.json" parent
		json_values "$p_graphroot/$_su_d-images/images.json" layer
	} | sort -u | comm -23 - "$work/su.own" | comm -12 - "$work/su.store" >"$work/su.used"
	[ -s "$work/su.used" ]
}

# visible_readonly_names [CONF]: the names podman lists as read-only images,
# reading CONF instead of its usual configuration when given.
visible_readonly_names() {
	if [ -n "${1:-}" ]; then
		# shellcheck disable=SC2086 # PODMAN is a word list
		run env CONTAINERS_STORAGE_CONF="$1" $PODMAN images --filter readonly=true --format "{{range .Names}}{{.}}$NL{{end}}"
	else
		run $PODMAN images --filter readonly=true --format "{{range .Names}}{{.}}$NL{{end}}"
	fi
}

# check_visible NAMES: every image of $work/images is among NAMES.
check_visible() {
	while IFS="$US" read -r _cv_dest _cv_rest; do
		case "$NL$1$NL" in
		*"$NL$_cv_dest$NL"*) ;;
		*) printf '%s\n' "$_cv_dest"; return 1 ;;
		esac
	done <"$work/images"
	return 0
}

