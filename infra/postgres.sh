#!/usr/bin/env bash
# Run the project's own PostgreSQL cluster for the test suite (not the
# distribution's "main" cluster, which may or may not exist or run).
#
#   infra/postgres.sh start    install the server if absent (root + apt), initdb once,
#                              start, create role+database "allocator", wait (idempotent)
#   infra/postgres.sh stop     pg_ctl stop -m fast of this project's cluster only
#   infra/postgres.sh status   exit 0 when the server answers on the port, 3 when not
#   infra/postgres.sh logs     last 80 lines of the server log
#
# Connect with: postgresql://allocator:allocator@127.0.0.1:54329/allocator
#
# Environment (all optional):
#   PGPORT_ALLOCATOR     TCP port on 127.0.0.1 (default 54329, away from the usual 5432)
#   ALLOCATOR_PG_RUN     cluster directory: data, socket, log (default, as root:
#                        /var/tmp/capital-allocator-pg-$PGPORT_ALLOCATOR, else $ALLOCATOR_RUN/postgres)
#   PG_BINDIR            PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PGPORT_ALLOCATOR="${PGPORT_ALLOCATOR:-54329}"
DB_NAME=allocator
DB_USER=allocator
DB_PASSWORD=allocator
APP_URL="postgresql://$DB_USER:$DB_PASSWORD@127.0.0.1:$PGPORT_ALLOCATOR/$DB_NAME"

# initdb and postgres refuse to run as root, so as root the cluster belongs to
# the "postgres" OS user. That user cannot enter root's $HOME (mode 700), where
# the cache lives, so the cluster lives in /var/tmp instead: reachable by
# postgres, outside any git work tree, and (unlike /tmp on some systems) not
# emptied at boot. Named after the port, so that two sets of services (two ALLOCATOR_RUN folders on
# two ports) never share a data directory. A non-root user simply runs the cluster as itself in its
# ALLOCATOR_RUN.
if is_root; then
  PG_OS_USER=postgres
  PG_RUN="${ALLOCATOR_PG_RUN:-/var/tmp/capital-allocator-pg-$PGPORT_ALLOCATOR}"
else
  PG_OS_USER="$(id -un)"
  PG_RUN="${ALLOCATOR_PG_RUN:-$ALLOCATOR_RUN/postgres}"
fi
DATA="$PG_RUN/data"
LOG="$PG_RUN/postgres.log"
# The unix socket lives next to the data: /var/run/postgresql may not exist
# (it is created by the Debian service scripts, which we do not use).
SOCKET_DIR="$PG_RUN"

# ---------------------------------------------------------------- prerequisites

find_bindir() {
  if [[ -n "${PG_BINDIR:-}" ]]; then
    [[ -x "$PG_BINDIR/initdb" ]] || die "PG_BINDIR=$PG_BINDIR has no initdb"
    return 0
  fi
  local newest
  newest="$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1 || true)"
  [[ -n "$newest" ]] || return 1
  PG_BINDIR="$(dirname "$newest")"
}

ensure_server_binaries() {
  if ! find_bindir; then
    # Debian's "postgresql" package pulls the distribution's current major
    # version (15 on bookworm) with initdb, pg_ctl, postgres and psql.
    apt_install "the PostgreSQL server (no /usr/lib/postgresql/*/bin/initdb)" postgresql
    find_bindir || die "still no /usr/lib/postgresql/*/bin/initdb after installing postgresql"
  fi
  if is_root && ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
    die "OS user '$PG_OS_USER' does not exist (the postgresql package creates it); install postgresql or run as a non-root user"
  fi
}

# Run a command as the cluster's OS user, from a directory that user can read
# (commands started from root's home would warn "could not change directory").
as_pg() {
  if is_root; then
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
  else
    (cd / && "$@")
  fi
}

# psql as the cluster superuser over the private unix socket (trust auth);
# the SQL comes on standard input.
superuser_psql() {
  as_pg "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PGPORT_ALLOCATOR" \
    -U "$PG_OS_USER" -d postgres
}

# -------------------------------------------------------------------- cluster

# Pid of our cluster's postmaster, if postmaster.pid names a live postgres
# process. pg_ctl status only asks whether *some* process has that pid, and
# after a crash or a machine restart the pid is often reused by something else.
postmaster_pid() {
  local pid comm
  [[ -f "$DATA/postmaster.pid" ]] || return 1
  pid="$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
  [[ "$comm" == postgres || "$comm" == postmaster ]] || return 1
  printf '%s' "$pid"
}

cluster_running() {
  postmaster_pid >/dev/null
}

# Lock files left by a postmaster that died without cleaning up (kill -9, OOM,
# machine stop). PostgreSQL removes them itself unless their pid now belongs to
# another process, in which case it refuses to start: remove them first.
clean_stale_locks() {
  local f
  for f in "$DATA/postmaster.pid" "$SOCKET_DIR/.s.PGSQL.$PGPORT_ALLOCATOR.lock"; do
    if [[ -f "$f" ]]; then
      say "removing stale lock file $f (its postmaster is not running)"
      rm -f "$f"
    fi
  done
}

app_connects() {
  PGCONNECT_TIMEOUT=3 "$PG_BINDIR/psql" -X -q -At "$APP_URL" -c 'select 1' >/dev/null 2>&1
}

ensure_run_dir() {
  mkdir -p "$PG_RUN"
  if is_root; then
    chown "$PG_OS_USER:" "$PG_RUN"
  fi
  # Private: the socket in here uses trust authentication (see ensure_initdb).
  chmod 700 "$PG_RUN"
}

ensure_initdb() {
  if [[ -f "$DATA/PG_VERSION" ]]; then
    local have want
    have="$(cat "$DATA/PG_VERSION")"
    want="$("$PG_BINDIR/postgres" --version | sed -n 's/^[^0-9]*\([0-9][0-9]*\).*/\1/p')"
    if [[ -n "$want" && "$have" != "$want" ]]; then
      die "$DATA holds a PostgreSQL $have cluster but the server binaries are $want ($PG_BINDIR).
  It is test data: remove $PG_RUN (after 'infra/postgres.sh stop') or set PG_BINDIR to a $have server."
    fi
    say "cluster: reusing $DATA (PostgreSQL $have)"
    return 0
  fi
  local t0
  t0="$(now_us)"
  rm -rf "$DATA"
  # trust on the unix socket: it sits in a mode-700 directory, so only the
  # cluster's OS user (and root) can reach it, and setup needs no password.
  # scram-sha-256 over TCP: the tests connect as allocator/allocator like an app would.
  # C.UTF-8 exists on every Debian; the caller's locale may not.
  if ! as_pg "$PG_BINDIR/initdb" -D "$DATA" -U "$PG_OS_USER" \
    --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >"$PG_RUN/initdb.log" 2>&1; then
    cat "$PG_RUN/initdb.log" >&2
    die "initdb failed for $DATA (see above)"
  fi
  # Our settings live in their own file, regenerated on each start.
  printf "\n# Added by infra/postgres.sh\ninclude = 'allocator-test.conf'\n" >>"$DATA/postgresql.conf"
  say "cluster: initialised $DATA in $(elapsed_s "$t0")s"
}

write_conf() {
  # Rewritten on every start so that a changed port takes effect.
  # fsync/synchronous_commit/full_page_writes off: this cluster only ever holds
  # throw-away test data, and a crash losing it is fine; it makes DDL-heavy
  # tests (a schema per test) several times faster. Never use these in production.
  cat >"$DATA/allocator-test.conf" <<EOF
# Generated by infra/postgres.sh on every start; edits here are lost.
listen_addresses = '127.0.0.1'
port = $PGPORT_ALLOCATOR
unix_socket_directories = '$SOCKET_DIR'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  if is_root; then
    chown "$PG_OS_USER:" "$DATA/allocator-test.conf"
  fi
}

ensure_role_and_db() {
  # Idempotent: create or re-assert the role's attributes and password, then
  # create the database only if missing (CREATE DATABASE cannot run inside a DO
  # block, hence \gexec). CREATEDB/CREATEROLE: tests make per-test schemas and
  # databases, and the runtime will want to create a read-only role.
  superuser_psql <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN CREATEDB CREATEROLE PASSWORD '$DB_PASSWORD';
  ELSE
    ALTER ROLE $DB_USER LOGIN CREATEDB CREATEROLE PASSWORD '$DB_PASSWORD';
  END IF;
END
\$\$;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME')\gexec
SQL
}

wait_app() {
  local i
  for ((i = 0; i < 60; i++)); do
    if app_connects; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}

# ---------------------------------------------------------------------- actions

cmd_start() {
  local t0
  t0="$(now_us)"
  ensure_server_binaries
  ensure_run_dir
  # Serialise concurrent starts on this cluster directory.
  exec 9>"$PG_RUN/start.lock"
  flock -w 120 9 || die "another 'postgres.sh start' holds $PG_RUN/start.lock for too long"

  if cluster_running; then
    say "cluster already running ($DATA, port $PGPORT_ALLOCATOR): reusing it"
  elif "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PGPORT_ALLOCATOR"; then
    # Another server (not this cluster) owns the port. Usable only if it already
    # has our role and database: we have no superuser access to it.
    if app_connects; then
      say "a PostgreSQL server not started by this script answers on port $PGPORT_ALLOCATOR and accepts $DB_USER: reusing it"
      return 0
    fi
    die "port $PGPORT_ALLOCATOR is taken by another server that does not accept $APP_URL; stop it or set PGPORT_ALLOCATOR"
  else
    ensure_initdb
    clean_stale_locks
    write_conf
    if [[ -f "$LOG" ]]; then
      mv -f "$LOG" "$LOG.1"
    fi
    # -w waits until the server accepts connections. 9>&-: the server must not
    # inherit (and so hold forever) the start lock.
    if ! as_pg "$PG_BINDIR/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null 9>&-; then
      show_tail "$LOG" 40 >&2
      die "pg_ctl could not start the cluster in $DATA (log above)"
    fi
    say "cluster started: $("$PG_BINDIR/postgres" --version), $DATA, port $PGPORT_ALLOCATOR, log $LOG"
  fi
  ensure_role_and_db
  wait_app || die "the server runs but $APP_URL does not accept 'select 1' (see $LOG)"
  say "ready: $APP_URL ($(elapsed_s "$t0")s)"
}

cmd_stop() {
  find_bindir || {
    say "not running (no PostgreSQL installed)"
    return 0
  }
  if ! cluster_running; then
    say "not running ($DATA)"
    return 0
  fi
  as_pg "$PG_BINDIR/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null ||
    die "pg_ctl stop failed for $DATA (see $LOG)"
  say "stopped ($DATA)"
}

cmd_status() {
  find_bindir || {
    say "not running (no PostgreSQL installed)"
    return 3
  }
  if cluster_running; then
    say "running: $DATA on 127.0.0.1:$PGPORT_ALLOCATOR (log $LOG)"
    return 0
  fi
  if "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PGPORT_ALLOCATOR"; then
    say "a server not started by this script answers on 127.0.0.1:$PGPORT_ALLOCATOR"
    return 0
  fi
  say "not running"
  return 3
}

cmd_logs() {
  show_tail "$LOG" 80
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
  exit 2
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
logs) cmd_logs ;;
*) usage ;;
esac
