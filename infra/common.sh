# shellcheck shell=bash
# Helpers shared by infra/kafka.sh, infra/postgres.sh and infra/services.sh.
# Sourced, not run: it only defines variables and functions.

# Where downloaded things live. Outside the work tree on purpose: a fresh clone
# in another folder (as CI makes) finds the jars already there, so a warm start
# needs no network and no Maven run.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
ALLOCATOR_CACHE="${ALLOCATOR_CACHE:-$HOME/.cache/capital-allocator}"
# Runtime state (data, logs, pid files) of the services that infra/ starts.
ALLOCATOR_RUN="${ALLOCATOR_RUN:-$ALLOCATOR_CACHE/run}"
export ALLOCATOR_CACHE ALLOCATOR_RUN

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_ROOT="$(dirname "$INFRA_DIR")"

# Prefix every message with the script's name: services.sh runs the other two,
# and a reader of a CI log must see which one spoke.
_infra_name="$(basename "$0" .sh)"

say() { printf '%s: %s\n' "$_infra_name" "$*"; }
warn() { printf '%s: WARNING: %s\n' "$_infra_name" "$*" >&2; }
die() {
  printf '%s: ERROR: %s\n' "$_infra_name" "$*" >&2
  exit 1
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Microseconds since the epoch, for step timings. EPOCHREALTIME (bash >= 5) is
# "seconds.micros" with the locale's decimal separator, so drop either one.
now_us() {
  local t="${EPOCHREALTIME:-}"
  if [[ -z "$t" ]]; then
    t="$(date +%s.%6N)"
  fi
  t="${t/./}"
  printf '%s' "${t/,/}"
}

# elapsed START_US -> "12.3" (seconds with one decimal)
elapsed_s() {
  local d=$(($(now_us) - $1))
  printf '%d.%d' $((d / 1000000)) $((d % 1000000 / 100000))
}

# Install Debian packages when that is possible without asking anyone (root,
# apt-get present); otherwise fail with the command the user should run.
# usage: apt_install WHAT-FOR PACKAGE...
_apt_updated=0
apt_install() {
  local why="$1"
  shift
  if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
    die "$why is missing. Install it, e.g. as root: apt-get install -y $*"
  fi
  say "$why is missing: installing Debian package(s) $* ..."
  # A fresh machine may have empty package lists: update once per script run.
  if [[ "$_apt_updated" -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null ||
      die "apt-get update failed; cannot install $*"
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null ||
    die "apt-get install $* failed; install it by hand and re-run"
}

# True when something accepts TCP connections on 127.0.0.1:PORT. Uses bash's
# /dev/tcp so that it needs no extra tool; the subshell closes the socket.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Print the last N lines of a log file, or say why not.
show_tail() {
  local file="$1" lines="${2:-80}"
  if [[ -f "$file" ]]; then
    say "last $lines lines of $file:"
    tail -n "$lines" "$file"
  else
    say "no log file yet at $file"
  fi
}
