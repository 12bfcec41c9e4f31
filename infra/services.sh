#!/usr/bin/env bash
# Start/stop every real service the test suite needs: PostgreSQL and Kafka.
#
#   infra/services.sh up      start both (PostgreSQL first: it is ready in about a second,
#                             Kafka takes longer), write $ALLOCATOR_RUN/services.env and
#                             print it; already running services are reused
#   infra/services.sh down    stop only what `up` started; a service that was already
#                             running before `up` is left alone
#   infra/services.sh env     print the export lines (source them: eval "$(infra/services.sh env)"):
#                             KAFKA_BOOTSTRAP_SERVERS, KAFKA_CONFIG_FILE (the admin's client properties:
#                             SASL_SSL, SCRAM-SHA-512 login, CA; a mode-600 file) and DATABASE_URL
#   infra/services.sh user NAME   create the SCRAM user NAME on the broker (or give it a new password),
#                             as the admin; prints the path of its client properties file (mode 600)
#   infra/services.sh status  status of both
#
# Typical use (CI): infra/services.sh up && eval "$(infra/services.sh env)" && pytest ...
# Ports and folders (KAFKA_PORT, KAFKA_CONTROLLER_PORT, PGPORT_ALLOCATOR, ALLOCATOR_RUN) may be set to
# run a second, independent set of services beside the default one.
# Each step prints its duration, so a cold (download, initdb, format) and a warm
# run can be told apart in a log.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KAFKA_PORT="${KAFKA_PORT:-9092}"
PGPORT_ALLOCATOR="${PGPORT_ALLOCATOR:-54329}"

ENV_FILE="$ALLOCATOR_RUN/services.env"
# Services that an `up` started (one name a line); `down` stops exactly these.
STARTED_FILE="$ALLOCATOR_RUN/services.started"
# Start order; `down` uses the reverse.
SERVICES=(postgres kafka)

env_lines() {
  "$INFRA_DIR/kafka.sh" env
  printf 'export DATABASE_URL=postgresql+psycopg://allocator:allocator@127.0.0.1:%s/allocator\n' "$PGPORT_ALLOCATOR"
}

was_started_by_up() {
  [[ -f "$STARTED_FILE" ]] && grep -qx -- "$1" "$STARTED_FILE"
}

cmd_up() {
  local t_all t svc
  t_all="$(now_us)"
  mkdir -p "$ALLOCATOR_RUN"
  for svc in "${SERVICES[@]}"; do
    t="$(now_us)"
    if "$INFRA_DIR/$svc.sh" status >/dev/null 2>&1; then
      say "$svc: already running before this 'up'; it will be reused (and 'down' stops it only if an earlier 'up' started it)"
    elif ! was_started_by_up "$svc"; then
      # Recorded before starting, so that `down` also cleans up after a start
      # that failed halfway (stopping a service that is not running is a no-op).
      printf '%s\n' "$svc" >>"$STARTED_FILE"
    fi
    if ! "$INFRA_DIR/$svc.sh" start; then
      die "$svc did not start ($(elapsed_s "$t")s); see 'infra/$svc.sh logs'. Stop what did start with 'infra/services.sh down'."
    fi
    say "$svc: ready in $(elapsed_s "$t")s"
  done
  env_lines >"$ENV_FILE"
  say "all services ready in $(elapsed_s "$t_all")s; environment (also in $ENV_FILE):"
  cat "$ENV_FILE"
}

cmd_down() {
  local t_all t i svc
  t_all="$(now_us)"
  if [[ ! -s "$STARTED_FILE" ]]; then
    say "nothing to stop: no service was started by 'infra/services.sh up'"
    return 0
  fi
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    svc="${SERVICES[i]}"
    if was_started_by_up "$svc"; then
      t="$(now_us)"
      "$INFRA_DIR/$svc.sh" stop
      grep -vx -- "$svc" "$STARTED_FILE" >"$STARTED_FILE.tmp" || true
      mv -f "$STARTED_FILE.tmp" "$STARTED_FILE"
      say "$svc: stopped in $(elapsed_s "$t")s"
    else
      say "$svc: not started by 'up', left as it is"
    fi
  done
  rm -f "$STARTED_FILE"
  say "down in $(elapsed_s "$t_all")s"
}

cmd_user() {
  local name="${1:-}" python
  [[ -n "$name" ]] || die "usage: infra/services.sh user NAME"
  python="${ALLOCATOR_PYTHON:-$REPO_ROOT/.venv/bin/python}"
  [[ -x "$python" ]] || die "no $python: run 'make venv' first (or set ALLOCATOR_PYTHON)"
  eval "$("$INFRA_DIR/kafka.sh" env)"
  "$python" "$INFRA_DIR/kafka_user.py" "$name"
}

cmd_status() {
  local svc rc=0
  for svc in "${SERVICES[@]}"; do
    "$INFRA_DIR/$svc.sh" status || rc=3
  done
  return "$rc"
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
  exit 2
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
env) env_lines ;;
user) cmd_user "${2:-}" ;;
status) cmd_status ;;
*) usage ;;
esac
