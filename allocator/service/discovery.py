"""Which book a log holds: the topic prefixes of an embedded log file, found from its topics alone.

A book's topics are `<prefix>.proposals`, `<prefix>.decisions` and the rest of `Topics`; a log holding one book
needs no `--topic-prefix`, one holding several is answered with the list to choose from.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from allocator.service.backends import LogSettings
from eventlog.embedded import foreign_tables, some_names, sqlite_not_a_log, sqlite_problem
from eventlog.port import Topics

ROLES = tuple(name.removeprefix("x.") for name in (*Topics("x").inputs, *Topics("x").outputs))
DEFAULT_PREFIX = "allocator"


class BookNotFound(LookupError):
    """The log, a prefix or a topic asked for is not there: the message says what is, and which flag to pass."""


def embedded_topics(path: Path) -> list[str]:
    """The topic names of an embedded log file, read without writing to it (a missing file is not created)."""
    if not path.is_file():
        raise BookNotFound(f"no event log at {path}: pass --log FILE (or --kafka HOST:PORT)")
    foreign = foreign_tables(path)
    if foreign:
        shown = some_names(foreign)
        raise BookNotFound(f"{path} is not an event log: it holds tables that are no event log's ({shown}: a "
                           "projection database?)")  # fmt: skip
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT name FROM topics").fetchall()
    except sqlite3.DatabaseError as exc:
        if sqlite_not_a_log(exc):
            raise BookNotFound(f"{path} is not an event log ({exc})") from exc
        raise BookNotFound(f"{path} cannot be read: {sqlite_problem(exc)}") from exc
    return sorted(str(name) for (name,) in rows)


def book_prefixes(topic_names: list[str]) -> dict[str, list[str]]:
    """The topics grouped by prefix: `<prefix>.<role>` for every role of `Topics` (an agent's own proposals topic
    is not a book's, whatever the agent's name)."""
    out: dict[str, list[str]] = {}
    names = set(topic_names)
    for name in topic_names:
        prefix, _, role = name.rpartition(".")
        if prefix in names:  # `<prefix>.proposals.<agent>`, an agent's own topic (an agent may be named `fills`)
            continue
        if prefix and role in ROLES:
            out.setdefault(prefix, []).append(name)
    return out


def resolve_prefix(settings: LogSettings, given: str | None) -> str:
    """The topic prefix to read: the one given, else on an embedded log the only book it holds (on Kafka the
    default, `allocator`). Raises BookNotFound naming the books there are and the flag to pass."""
    if settings.kafka_bootstrap is not None:
        return given or DEFAULT_PREFIX
    path = Path(settings.embedded_path)
    books = book_prefixes(embedded_topics(path))
    if given is not None:
        if given in books:
            return given
        found = f"it holds {_listed(books)}" if books else "it holds no book's topics"
        raise BookNotFound(f"no topics with prefix {given!r} in the event log {path}; {found}")
    if len(books) == 1:
        return next(iter(books))
    if not books:
        raise BookNotFound(f"the event log {path} holds no book's topics (PREFIX.decisions, ...)")
    raise BookNotFound(f"the event log {path} holds several books: {_listed(books)}; pass one with --topic-prefix")


def existing_topics(settings: LogSettings, names: list[str]) -> list[str]:
    """The topics among `names` that exist (on Kafka all of them: topics there are checked by the broker)."""
    if settings.kafka_bootstrap is not None:
        return names
    present = set(embedded_topics(Path(settings.embedded_path)))
    return [name for name in names if name in present]


def _listed(books: dict[str, list[str]]) -> str:
    return ", ".join(f"--topic-prefix {prefix}" for prefix in sorted(books))


def agent_proposal_topics(settings: LogSettings, topics: Topics) -> list[str]:
    """Every agent's own proposals topic of the book (`<prefix>.proposals.<agent>`) the log holds, so a reader of
    the whole book (the projector) reads them besides the shared one."""
    stem = f"{topics.proposals}."
    if settings.kafka_bootstrap is None:
        names = embedded_topics(Path(settings.embedded_path))
    else:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        from eventlog.port import LogError

        try:
            names = list(AdminClient(settings.kafka_client_config()).list_topics(timeout=30).topics)
        except KafkaException as exc:  # a broker away, or a login it refuses: said in one line, not a traceback
            raise LogError(f"list the broker's topics: {exc.args[0] if exc.args else exc} (is the broker "
                           "reachable, and the login in the Kafka configuration file right?)") from exc  # fmt: skip
    return sorted(name for name in names if name.startswith(stem) and "." not in name[len(stem) :])
