#!/usr/bin/env bash
# Run one real Apache Kafka broker (KRaft, broker+controller in one JVM) for the
# test suite, without Docker: the broker's jars come from Maven Central through
# infra/pom.xml, the JVM is the machine's Java 17+.
#
#   infra/kafka.sh start    fetch jars if needed, make the CA, keystore and passwords once, format
#                           storage once, start, wait until the broker answers and can run
#                           transactions (idempotent)
#   infra/kafka.sh stop     stop the broker this script started (pid file); never another one
#   infra/kafka.sh status   exit 0 when a broker answers on the port, 3 when none does
#   infra/kafka.sh logs     last 80 lines of the broker log
#   infra/kafka.sh env      the export lines a client needs (bootstrap servers, properties file)
#
# Secured like production: the only client listener is SASL_SSL (SCRAM-SHA-512 over TLS), the
# StandardAuthorizer denies whatever no ACL allows, and only two principals are super users:
# "admin" (provisioning: topics, users, ACLs) and "broker" (the broker itself). Secrets live in
# $ALLOCATOR_RUN/kafka/secrets (mode 700, files 600), made at the first start, never in git:
#   ca.pem                the test CA's certificate (clients: ssl.ca.location)
#   admin.properties      the admin's librdkafka client properties (KAFKA_CONFIG_FILE)
#   admin.password, broker.password, tls.password, ca.p12, broker.p12, truststore.p12
#
# Environment (all optional):
#   KAFKA_VERSION            broker version (default 4.4.0)
#   KAFKA_PORT               client (SASL_SSL) port on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT    KRaft controller port on 127.0.0.1 (default 9093; TLS, broker certificate only)
#   KAFKA_WAIT_TIMEOUT       seconds to wait for readiness (default 90)
#   ALLOCATOR_CACHE          download cache (default ~/.cache/capital-allocator)
#   ALLOCATOR_RUN            runtime state (default $ALLOCATOR_CACHE/run)
#   ALLOCATOR_PYTHON         python with confluent_kafka (default <repo>/.venv/bin/python)
set -euo pipefail
# Everything this script writes (secrets, server.properties with passwords, data, logs) is private.
umask 077

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source-path=SCRIPTDIR source=kafka-secrets.sh
source "$INFRA_DIR/kafka-secrets.sh"

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_WAIT_TIMEOUT="${KAFKA_WAIT_TIMEOUT:-90}"

KAFKA_HOME="$ALLOCATOR_CACHE/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
# Written only after a complete copy; holds a hash of the pom so that a changed
# pom (say, a log4j bump) refreshes the jars instead of reusing stale ones.
LIBS_MARKER="$KAFKA_HOME/libs.complete"

RUN="$ALLOCATOR_RUN/kafka"
DATA="$RUN/data"
PROPS="$RUN/server.properties"
LOG="$RUN/kafka.log"
PIDFILE="$RUN/kafka.pid"
# What the data dir was formatted for; see ensure_formatted.
FORMAT_STAMP="$RUN/format.stamp"
SECRETS="$RUN/secrets"
CLIENT_PROPS="$SECRETS/admin.properties"
# Set to 1 by ensure_formatted when this run formatted the storage.
FORMATTED_NOW=0

BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

# ---------------------------------------------------------------- prerequisites

# Major version of a java binary: "17" for 17.0.15, "8" for 1.8.0_402.
java_major() {
  local line ver
  line="$("$1" -version 2>&1 | head -n 1)" || return 1
  ver="$(sed -n 's/.*version "\([^"]*\)".*/\1/p' <<<"$line")"
  [[ -n "$ver" ]] || return 1
  if [[ "$ver" == 1.* ]]; then
    ver="${ver#1.}"
  fi
  printf '%s' "${ver%%[.+-]*}"
}

# Sets JAVA to a Java 17+ binary. Kafka 4.x brokers need Java 17. Looks at
# JAVA_HOME, then PATH, then every JDK under /usr/lib/jvm (lowest 17+ first:
# 17 and 21 are what Kafka is tested on most).
find_java() {
  local candidate major best="" best_major=999
  for candidate in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)"; do
    [[ -n "$candidate" && -x "$candidate" ]] || continue
    major="$(java_major "$candidate" || true)"
    if [[ -n "$major" && "$major" -ge 17 ]]; then
      JAVA="$candidate"
      return 0
    fi
  done
  for candidate in /usr/lib/jvm/*/bin/java; do
    [[ -x "$candidate" ]] || continue
    major="$(java_major "$candidate" || true)"
    if [[ -n "$major" && "$major" -ge 17 && "$major" -lt "$best_major" ]]; then
      best="$candidate"
      best_major="$major"
    fi
  done
  if [[ -n "$best" ]]; then
    JAVA="$best"
    return 0
  fi
  return 1
}

ensure_java() {
  if ! find_java; then
    local have="none"
    if command -v java >/dev/null 2>&1; then
      have="$(java -version 2>&1 | head -n 1)"
    fi
    # Debian's default JRE is 17 on bookworm (21 on trixie): both run Kafka 4.
    apt_install "Java 17 or newer (found: $have; Kafka $KAFKA_VERSION needs 17+)" default-jre-headless
    find_java || die "still no Java 17+ after installing default-jre-headless; install a JDK 17+ and/or set JAVA_HOME"
  fi
  # Maven and Kafka must use the same, suitable JVM.
  JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$JAVA")")")"
  export JAVA_HOME
}

ensure_mvn() {
  if ! command -v mvn >/dev/null 2>&1; then
    apt_install "Maven (mvn, used to fetch the Kafka jars from Maven Central)" maven
    command -v mvn >/dev/null 2>&1 || die "mvn still not on PATH after installing maven"
  fi
}

# Sets PYTHON to an interpreter that has confluent_kafka (for wait_kafka.py).
ensure_python() {
  local candidate
  for candidate in "${ALLOCATOR_PYTHON:-}" "$REPO_ROOT/.venv/bin/python" "$(command -v python3 || true)"; do
    [[ -n "$candidate" && -x "$candidate" ]] || continue
    if "$candidate" -c 'import confluent_kafka' >/dev/null 2>&1; then
      PYTHON="$candidate"
      return 0
    fi
  done
  die "no Python with confluent_kafka found (needed to check that the broker is ready).
  Create the project venv first:  python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'
  or point ALLOCATOR_PYTHON at an interpreter that can 'import confluent_kafka'."
}

# ------------------------------------------------------------------------- jars

pom_hash() {
  sha256sum "$INFRA_DIR/pom.xml" | cut -d' ' -f1
}

libs_complete() {
  [[ -f "$LIBS_MARKER" && "$(cat "$LIBS_MARKER")" == "$KAFKA_VERSION $(pom_hash)" ]] &&
    compgen -G "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null
}

ensure_jars() {
  if libs_complete; then
    say "Kafka $KAFKA_VERSION jars: cached in $LIBS"
    return 0
  fi
  ensure_mvn
  mkdir -p "$KAFKA_HOME"
  # Two clones starting at once share the cache: let one download, the other wait.
  exec 8>"$KAFKA_HOME/download.lock"
  flock -w 600 8 || die "timed out waiting for another download of the Kafka jars ($KAFKA_HOME/download.lock)"
  if libs_complete; then
    exec 8>&-
    say "Kafka $KAFKA_VERSION jars: cached in $LIBS (downloaded by another run)"
    return 0
  fi
  local t0 tmp mvn_log
  t0="$(now_us)"
  tmp="$KAFKA_HOME/libs.tmp"
  mvn_log="$KAFKA_HOME/mvn.log"
  rm -rf "$tmp"
  say "Kafka $KAFKA_VERSION jars: downloading from Maven Central (mvn, log in $mvn_log) ..."
  # Local Maven repo inside the cache: self-contained, and removing the cache
  # really means a cold start. Copy to a temp dir and rename, so an interrupted
  # copy never looks complete.
  if ! (cd "$INFRA_DIR" && mvn -q -B -Dstyle.color=never \
    -f "$INFRA_DIR/pom.xml" \
    -Dmaven.repo.local="$ALLOCATOR_CACHE/m2" \
    -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DoutputDirectory="$tmp") >"$mvn_log" 2>&1 </dev/null; then
    tail -n 40 "$mvn_log" >&2 || true
    die "mvn could not fetch Kafka $KAFKA_VERSION (see above and $mvn_log). Is Maven Central reachable?"
  fi
  [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] ||
    die "mvn finished but $tmp has no kafka_2.13-$KAFKA_VERSION.jar (see $mvn_log)"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  printf '%s %s\n' "$KAFKA_VERSION" "$(pom_hash)" >"$LIBS_MARKER"
  exec 8>&-
  say "Kafka $KAFKA_VERSION jars: $(find "$LIBS" -name '*.jar' | wc -l) jars fetched in $(elapsed_s "$t0")s"
}

# ----------------------------------------------------------------- broker state

# Pid from the pid file if that process is alive AND is our broker (a pid can be
# reused by an unrelated process after a reboot or a crash).
our_pid() {
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  # A zombie (dead child not yet reaped) is not a running broker.
  [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)" != "Z" ]] || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmdline" == *"kafka.Kafka $PROPS"* ]] || return 1
  printf '%s' "$pid"
}

clean_stale_pidfile() {
  if [[ -f "$PIDFILE" ]] && ! our_pid >/dev/null; then
    say "removing stale pid file $PIDFILE (process $(cat "$PIDFILE" 2>/dev/null || echo '?') is not running)"
    rm -f "$PIDFILE"
  fi
}

# The secrets folder: TLS files and SCRAM passwords (made once), the admin's client properties (each start).
ensure_secrets() {
  ensure_secrets_dir "$SECRETS"
  ensure_tls "$SECRETS" "ip:127.0.0.1,dns:localhost" "$JAVA_HOME/bin/keytool"
  ensure_scram_passwords "$SECRETS"
  write_admin_client_properties "$CLIENT_PROPS" "$SECRETS" "$SECRETS/ca.pem"
}

write_properties() {
  mkdir -p "$RUN"
  # Rewritten on every start so that a changed port takes effect. Only the settings a single-node test
  # broker needs; the rest stays at Kafka's defaults. Mode 600 (umask): it holds the store passwords.
  {
    cat <<EOF
# Generated by infra/kafka.sh on every start; edits here are lost.
process.roles=broker,controller
node.id=1
listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT
# No PLAINTEXT anywhere: clients get SASL_SSL only, the controller listener TLS with client certificates.
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL
controller.listener.names=CONTROLLER
# Dynamic quorum of one voter; storage is formatted with --standalone.
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
log.dirs=$DATA

# One node: every internal topic must be satisfiable with one replica, or the
# group and transaction coordinators never become available.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Consumers in tests join a group once; do not make them wait 3 s for others.
group.initial.rebalance.delay.ms=0
num.partitions=1
# A test broker has one client at a time: a few coordinator partitions make the first consumer group and
# the first transaction ready in well under a second instead of waiting for 50 partitions' leaders.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
# Tests create their topics explicitly (AdminClient); a typo must fail, not
# silently create a new topic.
auto.create.topics.enable=false

EOF
    broker_security_properties "$SECRETS" SASL_SSL
  } >"$PROPS.tmp"
  chmod 600 "$PROPS.tmp"
  mv -f "$PROPS.tmp" "$PROPS"
}

# Format the data dir once. Re-formats (wiping test data) only when it was
# formatted for another Kafka version, controller port or security setup, or a
# SCRAM password is new: a KRaft dynamic quorum stores the controller's endpoint
# in its log, the SCRAM credentials live there too, and storage formatted by a
# newer Kafka cannot be read by an older one.
ensure_formatted() {
  local want="kafka=$KAFKA_VERSION controller=127.0.0.1:$KAFKA_CONTROLLER_PORT security=sasl_ssl-scram512-v1"
  if [[ -f "$DATA/meta.properties" ]]; then
    if [[ "$SECRETS_CREATED" -eq 0 && -f "$FORMAT_STAMP" && "$(cat "$FORMAT_STAMP")" == "$want" ]]; then
      say "storage: reusing $DATA"
      return 0
    fi
    if [[ "$SECRETS_CREATED" -ne 0 ]]; then
      say "storage: new SCRAM passwords in $SECRETS: wiping $DATA (test data only) to format it with them"
    else
      say "storage: $DATA was formatted for '$(cat "$FORMAT_STAMP" 2>/dev/null || echo unknown)', now '$want': wiping it (test data only)"
    fi
    rm -rf "$DATA"
  fi
  local cluster_id out args="$SECRETS/format.args"
  cluster_id="$("$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)" ||
    die "kafka.tools.StorageTool random-uuid failed (java: $JAVA)"
  # The admin's and the broker's SCRAM credentials must exist before the broker starts (nobody could log
  # in to create them): `format --add-scram` writes them into the metadata log. The arguments go through
  # an @file (mode 600, removed right after) so that no password is ever on a command line.
  write_format_args "$args" "$SECRETS" "$cluster_id" "$PROPS"
  if ! out="$("$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool "@$args" 2>&1)"; then
    rm -f "$args"
    printf '%s\n' "$out" | hide_scram_records >&2
    die "formatting Kafka storage in $DATA failed (see above)"
  fi
  rm -f "$args"
  printf '%s\n' "$want" >"$FORMAT_STAMP"
  FORMATTED_NOW=1
  say "storage: formatted $DATA (cluster id $cluster_id, SCRAM users admin and broker)"
}

launch() {
  # Keep the previous run's log for post-mortems, but only one generation.
  if [[ -f "$LOG" ]]; then
    mv -f "$LOG" "$LOG.1"
  fi
  rm -f "$PIDFILE"
  # setsid: own session, so the broker is not killed with this script's process
  # group (Ctrl-C, CI step end). nohup: ignore SIGHUP from a closing terminal.
  # The inner bash writes its own pid and then execs java, so the pid file holds
  # the JVM's pid whether or not setsid had to fork. 8>&- 9>&-: the broker must
  # not inherit (and so hold forever) the download and start locks.
  # shellcheck disable=SC2016 # $$, $1 and $@ belong to the inner bash
  setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' kafka-launcher "$PIDFILE" \
    "$JAVA" -Xms256m -Xmx512m \
    -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$INFRA_DIR/log4j2.properties" \
    -Dkafka.logs.dir="$RUN" \
    -cp "$LIBS/*" kafka.Kafka "$PROPS" \
    </dev/null >"$LOG" 2>&1 8>&- 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "$PIDFILE" ]] && break
    sleep 0.1
  done
  [[ -s "$PIDFILE" ]] || die "the broker did not start (no pid file $PIDFILE); see $LOG"
}

# wait_ready [PID]: with the pid of our broker, give up as soon as it dies and
# show its log; without (a broker we did not start), there is no log of ours.
wait_ready() {
  local ours=()
  if [[ $# -gt 0 ]]; then
    ours=(--pid "$1" --log "$LOG")
  fi
  [[ -s "$CLIENT_PROPS" ]] || die "no client properties $CLIENT_PROPS: the broker's secrets were never made here"
  "$PYTHON" "$INFRA_DIR/wait_kafka.py" "$BOOTSTRAP" --config "$CLIENT_PROPS" --timeout "$KAFKA_WAIT_TIMEOUT" \
    --check-transactions "${ours[@]}"
}

# ---------------------------------------------------------------------- actions

cmd_start() {
  local t0 pid
  t0="$(now_us)"
  mkdir -p "$RUN"
  chmod 700 "$RUN" # server.properties and the secrets folder in it hold passwords
  # Serialise concurrent starts (two clones, two terminals) on this run dir.
  exec 9>"$RUN/start.lock"
  flock -w 300 9 || die "another 'kafka.sh start' holds $RUN/start.lock for too long"

  ensure_python
  if pid="$(our_pid)"; then
    say "broker already running (pid $pid, $BOOTSTRAP): reusing it"
    wait_ready "$pid"
    return 0
  fi
  clean_stale_pidfile
  if port_open "$KAFKA_PORT"; then
    # Not ours, but if it is a working broker the tests can use it as well.
    say "something already listens on $BOOTSTRAP (not started by this script): checking it is a Kafka broker ..."
    KAFKA_WAIT_TIMEOUT=15 wait_ready ||
      die "port $KAFKA_PORT is taken by something that is not a working Kafka broker; free it or set KAFKA_PORT"
    say "reusing the broker already running on $BOOTSTRAP"
    return 0
  fi
  if port_open "$KAFKA_CONTROLLER_PORT"; then
    die "controller port 127.0.0.1:$KAFKA_CONTROLLER_PORT is taken; free it or set KAFKA_CONTROLLER_PORT"
  fi

  ensure_java
  say "java: $JAVA ($(java_major "$JAVA"))"
  ensure_jars
  ensure_secrets
  write_properties
  ensure_formatted
  launch
  pid="$(cat "$PIDFILE")"
  say "broker starting (Kafka $KAFKA_VERSION, pid $pid, $BOOTSTRAP, log $LOG) ..."
  local rc=0
  wait_ready "$pid" || rc=$?
  if [[ "$rc" -eq 3 && "$FORMATTED_NOW" -eq 0 ]]; then
    # The broker refused our own admin login on storage of an earlier run: its SCRAM users are gone
    # (a SCRAM user deleted at any time makes Kafka 4.4 lose them all on a restart replaying the log;
    # see revoke_scram_user in eventlog/kafka_scram.py) or it was formatted with other passwords.
    # Test data only: format it anew with the current passwords, once.
    warn "the broker refused the admin login on the reused storage: formatting $DATA anew (test data only)"
    cmd_stop
    rm -f "$FORMAT_STAMP"
    ensure_formatted
    launch
    pid="$(cat "$PIDFILE")"
    say "broker starting again (pid $pid) ..."
    rc=0
    wait_ready "$pid" || rc=$?
  fi
  if [[ "$rc" -ne 0 ]]; then
    if our_pid >/dev/null; then
      die "Kafka broker (pid $pid) did not become ready; it is left running for inspection: infra/kafka.sh logs, then infra/kafka.sh stop"
    fi
    rm -f "$PIDFILE"
    die "Kafka broker exited during startup (log above, full log in $LOG). Its state is in $RUN: remove that folder to start from scratch."
  fi
  say "broker started in $(elapsed_s "$t0")s"
}

cmd_stop() {
  local pid i
  if ! pid="$(our_pid)"; then
    clean_stale_pidfile
    if port_open "$KAFKA_PORT"; then
      say "no broker started by this script; the one answering on $BOOTSTRAP is left alone"
    else
      say "not running"
    fi
    return 0
  fi
  say "stopping broker (pid $pid) ..."
  kill -TERM "$pid" 2>/dev/null || true
  # A clean shutdown of one KRaft node takes a few seconds; give it 30.
  for ((i = 0; i < 300; i++)); do
    our_pid >/dev/null || break
    sleep 0.1
  done
  if our_pid >/dev/null; then
    warn "broker (pid $pid) still alive after 30 s: sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      our_pid >/dev/null || break
      sleep 0.1
    done
  fi
  our_pid >/dev/null && die "could not stop broker pid $pid"
  rm -f "$PIDFILE"
  say "stopped"
}

cmd_status() {
  local pid
  if pid="$(our_pid)"; then
    if port_open "$KAFKA_PORT"; then
      say "running: pid $pid, $BOOTSTRAP (Kafka $KAFKA_VERSION, data $DATA, log $LOG)"
    else
      say "starting or stuck: pid $pid is alive but $BOOTSTRAP does not accept connections yet (log $LOG)"
    fi
    return 0
  fi
  if port_open "$KAFKA_PORT"; then
    say "something not started by this script listens on $BOOTSTRAP"
    return 0
  fi
  say "not running"
  return 3
}

cmd_logs() {
  show_tail "$LOG" 80
}

# What a client needs; the properties file is written by 'start'.
cmd_env() {
  printf 'export KAFKA_BOOTSTRAP_SERVERS=%s\n' "$BOOTSTRAP"
  printf 'export KAFKA_CONFIG_FILE=%s\n' "$CLIENT_PROPS"
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
env) cmd_env ;;
*) usage ;;
esac
