# shellcheck shell=sh
# Shared by the built-in bootc-prestage hooks (bound-images, compat-check).
# Sourced, never run. Installed next to the programs
# (/usr/libexec/bootc-prestage/hook-lib.sh), which source it as
# "${0%/*}/hook-lib.sh": the prepare step runs the staged deployment's copy
# of a program, and it must use that deployment's copy of this file too.
#
# POSIX sh plus coreutils only (the hooks run inside bootc images, without
# Node.js, Python, awk or sed). Functions that must return a value print it;
# callers use $(...), so helper variables never leak into the caller. Names
# starting with '_' are scratch variables of one function.

# The program's name in messages ("bound-images: ...").
HOOK_NAME=${HOOK_NAME:-${0##*/}}

# Exit status the daemon reads as "skipped: nothing to do".
# shellcheck disable=SC2034 # used by the programs that source this file
EXIT_SKIPPED=77

_HL_NL='
'
_HL_CR=$(printf '\r')

# Globbing stays off: every expansion below is data, never a pattern. The
# few places that list a directory turn it on for one line.
set -f

say() {
	printf '%s: %s\n' "$HOOK_NAME" "$*"
}

warn() {
	printf '%s: warning: %s\n' "$HOOK_NAME" "$*" >&2
}

# Print an error that tells the operator what to do, then exit 1.
die() {
	printf '%s: error: %s\n' "$HOOK_NAME" "$*" >&2
	exit 1
}

# One sd_notify-style line (PROGRESS=n, STATUS=text, EXTEND_TIMEOUT_USEC=n)
# on the daemon's notify fd. Without the daemon (run by hand) the variable
# is unset and this does nothing; a closed fd is not an error either.
notify() {
	case ${BOOTC_PRESTAGE_NOTIFY_FD:-} in
	'' | *[!0-9]*) return 0 ;;
	esac
	# A status is one line: newlines would become separate (ignored) lines.
	_n_line=$*
	case $_n_line in
	*"$_HL_NL"* | *"$_HL_CR"*) _n_line=$(printf '%s' "$_n_line" | tr '\n\r' '  ') ;;
	esac
	# shellcheck disable=SC2039,SC3021 # fd in a variable: POSIX expands the word after >&
	{ printf '%s\n' "$_n_line" >&"$BOOTC_PRESTAGE_NOTIFY_FD"; } 2>/dev/null || :
}

# True for 1, yes, true, on (any case), as systemd reads booleans.
is_true() {
	case $1 in
	1 | [yY] | [yY][eE][sS] | [tT][rR][uU][eE] | [oO][nN]) return 0 ;;
	*) return 1 ;;
	esac
}

# Whitespace trimmed from both ends.
trim() {
	_t=$1
	_t=${_t#"${_t%%[![:space:]]*}"}
	_t=${_t%"${_t##*[![:space:]]}"}
	printf '%s' "$_t"
}

# A path with its trailing slashes removed ("/" stays "/").
strip_slashes() {
	_s=$1
	while :; do
		case $_s in
		/) break ;;
		*/) _s=${_s%/} ;;
		*) break ;;
		esac
	done
	printf '%s' "$_s"
}

# resolve_in_root ROOT PATH: print the host path that PATH names when ROOT
# is the root directory, following symlinks the way openat2's
# RESOLVE_IN_ROOT does (and bootc reads bound-images.d): an absolute link
# target starts again at ROOT, and '..' never climbs above ROOT. The last
# component need not exist. Fails after 40 links (a loop).
resolve_in_root() {
	_r_root=$(strip_slashes "$1")
	[ "$_r_root" = / ] && _r_root=
	_r_rest=$2
	_r_cur=
	_r_links=0
	while [ -n "$_r_rest" ]; do
		while :; do
			case $_r_rest in
			/*) _r_rest=${_r_rest#/} ;;
			*) break ;;
			esac
		done
		[ -n "$_r_rest" ] || break
		_r_comp=${_r_rest%%/*}
		if [ "$_r_comp" = "$_r_rest" ]; then
			_r_rest=
		else
			_r_rest=${_r_rest#*/}
		fi
		case $_r_comp in
		.) ;;
		..) _r_cur=${_r_cur%/*} ;;
		*)
			if [ -L "$_r_root$_r_cur/$_r_comp" ]; then
				_r_links=$((_r_links + 1))
				[ "$_r_links" -le 40 ] || return 1
				# The trailing '.' keeps a target's own trailing newlines.
				_r_target=$(readlink -- "$_r_root$_r_cur/$_r_comp" && echo .) || return 1
				_r_target=${_r_target%?.}
				case $_r_target in
				/*) _r_cur= ;;
				esac
				if [ -n "$_r_rest" ]; then
					_r_rest=$_r_target/$_r_rest
				else
					_r_rest=$_r_target
				fi
			else
				_r_cur=$_r_cur/$_r_comp
			fi
			;;
		esac
	done
	if [ -z "$_r_root$_r_cur" ]; then
		printf '/\n'
	else
		printf '%s\n' "$_r_root$_r_cur"
	fi
}

# atomic_write DEST: replace DEST with stdin so that a reader, or a crash at
# any instant, sees either the old file or the new one, never a mix: write a
# temporary file in the same directory, flush it, rename it over DEST, flush
# the directory. An existing DEST's mode, owner and SELinux label carry
# over; a new file is 0644. The temporary name is fixed, so a crash leaves
# at most one stray file, which the next call reuses.
atomic_write() {
	_a_dest=$1
	_a_dir=$(dirname -- "$_a_dest")
	_a_tmp=$_a_dir/.${_a_dest##*/}.bootc-prestage-tmp
	mkdir -p -- "$_a_dir" || return 1
	rm -f -- "$_a_tmp" || return 1
	cat >"$_a_tmp" || { rm -f -- "$_a_tmp"; return 1; }
	if [ -e "$_a_dest" ]; then
		if ! chmod --reference="$_a_dest" -- "$_a_tmp" || ! chown --reference="$_a_dest" -- "$_a_tmp"; then
			rm -f -- "$_a_tmp"
			return 1
		fi
		# Only where SELinux is on; elsewhere chcon fails and labels do not matter.
		if [ -e /sys/fs/selinux/enforce ]; then
			chcon --reference="$_a_dest" -- "$_a_tmp" 2>/dev/null || :
		fi
	else
		chmod 0644 -- "$_a_tmp" || { rm -f -- "$_a_tmp"; return 1; }
	fi
	sync -- "$_a_tmp" &&
		mv -f -- "$_a_tmp" "$_a_dest" &&
		sync -- "$_a_dir"
}

# remove_tree DIR: remove a directory tree so that a crash at any instant
# leaves either the whole tree or none of it under its name: rename it to a
# hidden '.trash-' sibling first (one atomic step), then delete that.
# Leftover trash from an earlier crash goes too. Mounts below DIR (a
# containers-storage overlay home, say) are unmounted first, or the
# removal would fail with EBUSY half-way.
remove_tree() {
	_rt_dir=$(strip_slashes "$1")
	_rt_trash=$(dirname -- "$_rt_dir")/.trash-${_rt_dir##*/}
	if [ -e "$_rt_dir" ] || [ -L "$_rt_dir" ]; then
		unmount_below "$_rt_dir" || return 1
		if [ -e "$_rt_trash" ]; then
			unmount_below "$_rt_trash" || return 1
			rm -rf -- "$_rt_trash" || return 1
		fi
		mv -f -- "$_rt_dir" "$_rt_trash" || return 1
		sync -- "$(dirname -- "$_rt_dir")" 2>/dev/null || :
	fi
	if [ -e "$_rt_trash" ]; then
		unmount_below "$_rt_trash" || return 1
		rm -rf -- "$_rt_trash" || return 1
	fi
	return 0
}

# unmount_below DIR: unmount DIR and every mount below it, deepest first.
# findmnt -r escapes blanks and backslashes in targets as \xNN, so DIR is
# compared in that form.
unmount_below() {
	_u_dir=$(strip_slashes "$1")
	command -v findmnt >/dev/null 2>&1 || return 0
	_u_esc=$(printf '%s' "$_u_dir" | escape_findmnt)
	_u_list=$(findmnt -rn -o TARGET 2>/dev/null | while IFS= read -r _u_t; do
		case $_u_t in
		"$_u_esc" | "$_u_esc"/*) printf '%s\n' "$_u_t" ;;
		esac
	done | sort -r) || return 1
	[ -n "$_u_list" ] || return 0
	printf '%s\n' "$_u_list" | while IFS= read -r _u_t; do
		# Undo findmnt's escapes for umount: printf's %b reads \xNN... only
		# in some shells, so the few characters findmnt escapes are mapped.
		_u_path=$(printf '%s' "$_u_t" | unescape_findmnt)
		umount -- "$_u_path" || umount -l -- "$_u_path" || exit 1
	done
}

# findmnt's raw-output escapes (\x20 space, \x09 tab, \x0a newline, \x5c
# backslash) in both directions, for the characters a path may realistically hold.
escape_findmnt() {
	_e_in=$(cat; echo .)
	_e_in=${_e_in%.}
	_e_out=
	while [ -n "$_e_in" ]; do
		_e_c=${_e_in%"${_e_in#?}"}
		_e_in=${_e_in#?}
		case $_e_c in
		' ') _e_out="$_e_out\\x20" ;;
		'	') _e_out="$_e_out\\x09" ;;
		\\) _e_out="$_e_out\\x5c" ;;
		*) _e_out=$_e_out$_e_c ;;
		esac
	done
	printf '%s' "$_e_out"
}

unescape_findmnt() {
	_e_in=$(cat; echo .)
	_e_in=${_e_in%.}
	_e_out=
	while [ -n "$_e_in" ]; do
		case $_e_in in
		'\x20'*) _e_out="$_e_out " _e_in=${_e_in#????} ;;
		'\x09'*) _e_out="$_e_out	" _e_in=${_e_in#????} ;;
		'\x5c'*) _e_out="$_e_out\\" _e_in=${_e_in#????} ;;
		*) _e_out=$_e_out${_e_in%"${_e_in#?}"} _e_in=${_e_in#?} ;;
		esac
	done
	printf '%s' "$_e_out"
}

# os_release_value FILE KEY: print KEY's value from an os-release(5) file,
# unquoted as a shell would ("..." with \ escapes, '...', or bare), without
# running the file. Prints nothing when the key is absent.
os_release_value() {
	_o_val=
	_o_found=1
	while IFS= read -r _o_line || [ -n "$_o_line" ]; do
		_o_line=$(trim "$_o_line")
		case $_o_line in
		"$2="*) ;;
		*) continue ;;
		esac
		_o_raw=${_o_line#"$2="}
		_o_val=
		while [ -n "$_o_raw" ]; do
			case $_o_raw in
			\"*)
				_o_raw=${_o_raw#?}
				while [ -n "$_o_raw" ]; do
					case $_o_raw in
					\"*) _o_raw=${_o_raw#?}; break ;;
					\\[\\\"\$\`]*) _o_raw=${_o_raw#?}; _o_val=$_o_val${_o_raw%"${_o_raw#?}"}; _o_raw=${_o_raw#?} ;;
					*) _o_val=$_o_val${_o_raw%"${_o_raw#?}"}; _o_raw=${_o_raw#?} ;;
					esac
				done
				;;
			\'*)
				_o_raw=${_o_raw#?}
				_o_val=$_o_val${_o_raw%%\'*}
				case $_o_raw in
				*\'*) _o_raw=${_o_raw#*\'} ;;
				*) _o_raw= ;;
				esac
				;;
			\\?*) _o_raw=${_o_raw#?}; _o_val=$_o_val${_o_raw%"${_o_raw#?}"}; _o_raw=${_o_raw#?} ;;
			[[:space:]]* | \#*) break ;;
			*) _o_val=$_o_val${_o_raw%"${_o_raw#?}"}; _o_raw=${_o_raw#?} ;;
			esac
		done
		_o_found=0
	done <"$1"
	[ "$_o_found" = 0 ] && printf '%s' "$_o_val"
	return 0
}
