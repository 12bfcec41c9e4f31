"""The embedded log is a SQLite file, and SQLite keeps whatever type a writer of the file puts in a column: a value
stored as text or a number, a timestamp as text or a real. An outside probe found each of these stopped `serve`,
`audit`, `project`, `status` and `control` with a traceback, and `serve` again on every restart. A key or value of
any type is now read as the bytes SQLite gives it, for the codec to judge (a dead letter), and a timestamp as the
integer SQLite makes of it; an integer column holding something else, or a number outside what the log writes (an
offset, a partition, a partition count, a group's offset, a producer's epoch), is an error naming it, never a
traceback or a log read short."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cli.main import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "proposals.json"
TOPIC = "allocator.proposals"


def _log(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "log.sqlite"
    log = ["--log", str(path)]
    assert main(["init", *log]) == 0
    assert main(["propose", str(EXAMPLES), *log]) == 0
    return path, log


def _append(path: Path, topic: str, value: object, timestamp: object = 1_700_000_000_000, key: object = None) -> None:
    """A record appended to `topic` by a writer of the file, with whatever SQLite types it chooses."""
    with sqlite3.connect(path) as db:
        (last,) = db.execute("SELECT coalesce(max(offset), -1) FROM records WHERE topic = ?", (topic,)).fetchone()
        db.execute(
            "INSERT INTO records (topic, partition, offset, key, value, timestamp_ms) VALUES (?, 0, ?, ?, ?, ?)",
            (topic, last + 1, key, value, timestamp),
        )


SERVE = ["serve", "--book", "main", "--max-cycles", "1", "--duration", "20"]


@pytest.mark.parametrize(
    ("value", "timestamp", "key"),
    [
        ("forged text", 1_700_000_000_000, None),
        (12345, 1_700_000_000_000, None),
        (1.5, 1_700_000_000_000, None),
        (b"\xc3\x01", "soon", None),
        (b"\xc3\x01", 1e30, None),
        (b"\xc3\x01", 1_700_000_000_000, 7),
    ],
    ids=["value text", "value integer", "value real", "timestamp text", "timestamp 1e30", "key integer"],
)
@pytest.mark.parametrize("topic", [TOPIC, "allocator.decisions"])
def test_a_record_of_any_sqlite_type_is_judged_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], topic: str, value: object, timestamp: object, key: object
) -> None:
    path, log = _log(tmp_path)
    if topic == "allocator.decisions":
        assert main([*SERVE, *log]) == 0  # a decision first, so the forged record follows the book's own
    _append(path, topic, value, timestamp, key)
    capsys.readouterr()
    cycles = "2" if topic == "allocator.decisions" else "1"
    assert main([*SERVE[:3], "--max-cycles", cycles, "--duration", "20", *log]) == 0
    for argv in (
        ["status", *log],
        ["audit", "--report", str(tmp_path / "audit.json"), *log],
        ["project", "--database", f"sqlite:///{tmp_path / 'p.sqlite'}", "--once", *log],
        ["control", "halt", "--reason", "r", "--operator", "ann", *log],
    ):
        main(argv)  # its exit code is its own business (the audit names the forged decision); no traceback
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "TypeError" not in out.err and "OverflowError" not in out.err, out.err
    if topic == TOPIC and not isinstance(value, bytes):  # the forged value: a dead letter naming what it is
        assert main(["tail", "deadletter", "--from-beginning", "--max", "5", "--timeout", "5", *log]) == 0
        assert "not Avro single-object encoding" in capsys.readouterr().out


CONTROL = ["control", "halt", "--reason", "r", "--operator", "ann"]


@pytest.mark.parametrize(
    ("statement", "named", "command"),
    [
        ("UPDATE topics SET partitions = 0 WHERE name = 'allocator.control'", "partition count is 0", CONTROL),
        ("UPDATE topics SET partitions = 'two' WHERE name = 'allocator.proposals'", "partition count is 'two'", SERVE),
        (f"UPDATE records SET offset = 'x' WHERE topic = '{TOPIC}' AND offset = 1", "proposals/0 is 'x'", SERVE),
        # A count the log never writes: 100,000,000 grew serve to 23 GB before the kernel stopped it.
        ("UPDATE topics SET partitions = 100000000 WHERE name = 'allocator.proposals'", "outside 1..1,000", SERVE),
        # 0.5 was read as partition 0 by the end offsets: the log looked cut short, and serve decided a cycle again.
        (f"UPDATE records SET partition = 0.5 WHERE topic = '{TOPIC}' AND offset = 1", "is 0.5, not an integer", SERVE),
        (f"UPDATE records SET partition = 'p' WHERE topic = '{TOPIC}' AND offset = 1", "is 'p', not an integer", SERVE),
        # The next offset after it would not be a 64-bit integer.
        (f"UPDATE records SET offset = {2**63 - 1} WHERE topic = '{TOPIC}' AND offset = 1", "outside 0..", SERVE),
        ("UPDATE producers SET epoch = 9223372036854775807", "epoch is 9223372036854775807, outside", SERVE),
        # A topic's row deleted: creating it again stopped on a UNIQUE constraint, or wrote over its records.
        ("DELETE FROM topics WHERE name = 'allocator.control'", "'allocator.control' is marked as stamped", SERVE),
        (f"DELETE FROM topics WHERE name = '{TOPIC}'", f"'{TOPIC}' holds records but has no row", SERVE),
    ],
    ids=[
        "no partitions",
        "partitions text",
        "offset text",
        "partitions huge",
        "partition real",
        "partition text",
        "offset max",
        "epoch max",
        "control row deleted",
        "proposals row deleted",
    ],
)
def test_an_integer_column_holding_something_else_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], statement: str, named: str, command: list[str]
) -> None:
    path, log = _log(tmp_path)
    if "producers" in statement:
        assert main([*SERVE, *log]) == 0  # the allocator's transactional id registers its epoch
    with sqlite3.connect(path) as db:
        assert db.execute(statement).rowcount >= 1
    capsys.readouterr()
    assert main([*command, *log]) != 0
    err = capsys.readouterr().err
    assert named in err and "changed outside this log" in err and "Traceback" not in err, err
