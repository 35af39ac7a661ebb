# Sourced by test.sh: installs a Debian package that holds a program the
# test command needs when the program is missing, as internal/debian's
# Ensure does for the Go tests: under the same lock (so that no install of
# theirs runs meanwhile), waiting for dpkg's lock, without recommended
# packages, and with apt-get update and one more try when the first fails.
# Unlike Ensure it writes no policy-rc.d: it is for packages that have no
# service to start.

# ensure PROGRAM PKG...: installs PKG... unless PROGRAM is on PATH.
ensure() {
	local program=$1
	shift
	command -v "$program" >/dev/null && return 0
	if [ "$(id -u)" != 0 ]; then
		echo "$program is not installed (Debian package $*) and installing it needs root" >&2
		return 1
	fi
	echo "installing $* (for $program)"
	(
		flock 9
		command -v "$program" >/dev/null && exit 0
		aptget() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }
		aptget install -y --no-install-recommends "$@" ||
			{ aptget update && aptget install -y --no-install-recommends "$@"; }
	) 9>"${TMPDIR:-/tmp}/dovewarden-apt.lock"
	if ! command -v "$program" >/dev/null; then
		echo "$* installed, but $program is not on PATH" >&2
		return 1
	fi
}
