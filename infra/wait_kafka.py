"""Wait until a Kafka broker answers, and optionally until it can run transactions.

Used by infra/kafka.sh after it starts (or finds) a broker:

    .venv/bin/python infra/wait_kafka.py 127.0.0.1:9092 --config "$RUN/kafka/secrets/admin.properties" \
        --timeout 90 --log "$RUN/kafka/kafka.log" --check-transactions

--config names the client properties file (SASL_SSL login and CA; default $KAFKA_CONFIG_FILE), read
with the project's loader, so the password is never on this command line. A refused login fails at once.

Exit status: 0 when the broker is ready, 1 on timeout (with the reason and the
tail of the broker log, if --log was given), 2 on bad arguments, 3 when the broker
refused the login (wrong credentials, or a broker that lost its SCRAM users).

Why a transactions check: a broker that lists its topics can still fail
init_transactions() for a while, because the transaction coordinator must first
create and load __transaction_state. Tests that produce in transactions would
then fail or time out on their first call; waiting here keeps them simple.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

# Run as a script from infra/: the project's modules are one folder up (the venv may not have them installed).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eventlog.kafka_properties import (
    CONFIG_FILE_ENV,
    KafkaPropertiesError,
    client_config,
    load_client_properties,
)

# librdkafka logs every refused connection while the broker is still starting;
# level 0 silences that noise, and the last error is reported on timeout instead.
_QUIET: dict[str, Any] = {"log_level": 0}
LOG_TAIL_LINES = 80
LOGIN_REFUSED = "fatal: the broker refused the login"
EXIT_LOGIN_REFUSED = 3


class BrokerDiedError(Exception):
    """The broker process we were told to watch (--pid) is gone."""


def _check_alive(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise BrokerDiedError(f"broker process {pid} exited") from None
    except PermissionError:
        return  # exists, owned by someone else
    # The broker is a child of the shell that launched it, so a dead broker stays a
    # zombie (which kill(pid, 0) still reports as alive) until that shell exits.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        raise BrokerDiedError(f"broker process {pid} exited")


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except OSError as exc:
        return f"(cannot read {path}: {exc})\n"


class _LastError:
    """error_cb target: remembers the most recent client-level error, and whether a login was refused."""

    def __init__(self) -> None:
        self.message = ""
        self.refused = False

    def __call__(self, err: KafkaError) -> None:
        self.message = str(err)
        # A refused login (wrong password, unknown user, TLS trust) will not heal by waiting.
        self.refused = self.refused or err.code() == KafkaError._AUTHENTICATION


def wait_for_metadata(bootstrap: str, properties: Mapping[str, str], deadline: float, pid: int | None) -> str | None:
    """Return None once the broker serves metadata, else the last error seen."""
    last = _LastError()
    config: dict[str, Any] = {**client_config(bootstrap, properties), "error_cb": last, **_QUIET}
    admin = AdminClient(config)
    reason = "no answer yet"
    while True:
        _check_alive(pid)
        if last.refused:
            return f"{LOGIN_REFUSED}: {last.message}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return last.message or reason
        try:
            metadata = admin.list_topics(timeout=min(2.0, max(remaining, 0.1)))
        except KafkaException as exc:
            reason = str(exc.args[0] if exc.args else exc)
            admin.poll(0)  # serves error_cb: a refused login is reported there, not by list_topics
        else:
            if metadata.brokers:
                return None
            reason = "metadata answered with no brokers"
        time.sleep(0.25)


def wait_for_transactions(
    bootstrap: str, properties: Mapping[str, str], deadline: float, pid: int | None
) -> str | None:
    """Return None once init_transactions() succeeds, else the last error seen."""
    # One transactional.id per run: nothing else uses it, and a retry with the same
    # id simply fences the previous attempt's producer.
    transactional_id = f"wait-kafka-{uuid.uuid4()}"
    reason = "no attempt finished"
    while True:
        _check_alive(pid)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return reason
        last = _LastError()
        producer = Producer(
            {
                **client_config(bootstrap, properties),
                "transactional.id": transactional_id,
                "transaction.timeout.ms": 10_000,
                "error_cb": last,
                **_QUIET,
            }
        )
        try:
            producer.init_transactions(min(15.0, max(remaining, 0.5)))
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            reason = str(err)
            if isinstance(err, KafkaError) and err.fatal():
                # A fatal error will not go away by waiting (e.g. transactions are
                # not supported or not authorized): report it at once.
                return f"fatal: {reason}"
        else:
            # Finish one empty transaction too: proves the coordinator really works.
            try:
                producer.begin_transaction()
                producer.commit_transaction(min(10.0, max(deadline - time.monotonic(), 0.5)))
            except KafkaException as exc:
                reason = str(exc.args[0] if exc.args else exc)
            else:
                return None
        finally:
            del producer
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("bootstrap", help="bootstrap servers, e.g. 127.0.0.1:9092")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait in total (default 90)")
    parser.add_argument(
        "--config",
        help=f"client properties file (security settings; default ${CONFIG_FILE_ENV}, none when unset)",
    )
    parser.add_argument("--log", type=Path, help="broker log file whose tail is printed on failure")
    parser.add_argument(
        "--check-transactions",
        action="store_true",
        help="also wait until a transactional producer can init_transactions() and commit",
    )
    parser.add_argument(
        "--pid", type=int, help="broker process id: give up at once if it exits instead of waiting it out"
    )
    args = parser.parse_args(argv)

    config_file = args.config if args.config is not None else os.environ.get(CONFIG_FILE_ENV, "")
    try:
        properties = load_client_properties(config_file) if config_file else {}
    except KafkaPropertiesError as exc:
        print(f"wait_kafka: ERROR: {exc}", file=sys.stderr)
        return 2

    start = time.monotonic()
    deadline = start + args.timeout

    what = "answer metadata requests"
    try:
        problem = wait_for_metadata(args.bootstrap, properties, deadline, args.pid)
        if problem is None and args.check_transactions:
            what = "run a transaction (init_transactions + commit)"
            problem = wait_for_transactions(args.bootstrap, properties, deadline, args.pid)
    except BrokerDiedError as exc:
        problem = f"{exc} before it was ready"

    elapsed = time.monotonic() - start
    if problem is None:
        done = "and transactions work " if args.check_transactions else ""
        print(f"wait_kafka: broker at {args.bootstrap} is ready {done}({elapsed:.1f}s)")
        return 0

    print(
        f"wait_kafka: ERROR: broker at {args.bootstrap} did not {what} "
        f"(gave up after {elapsed:.1f}s of {args.timeout:g}s).\n"
        f"wait_kafka: last error: {problem}",
        file=sys.stderr,
    )
    if args.log is not None:
        print(f"wait_kafka: last {LOG_TAIL_LINES} lines of {args.log}:", file=sys.stderr)
        sys.stderr.write(_tail(args.log, LOG_TAIL_LINES))
    return EXIT_LOGIN_REFUSED if problem.startswith(LOGIN_REFUSED) else 1


if __name__ == "__main__":
    sys.exit(main())
