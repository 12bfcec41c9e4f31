"""A user's mistake on the command line (a bad number, a path that cannot be read or written) is a usage error
naming the flag or the file, exit 2, before anything is sent or created: never a traceback, never a command
that runs for ever."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["tail", "decisions", "--timeout", "nan"], "--timeout"),  # followed the topic for ever
        (["tail", "decisions", "--timeout", "inf"], "--timeout"),
        (["tail", "decisions", "--timeout", "-5"], "--timeout"),
        (["tail", "decisions", "--max", "-1"], "--max"),
        (["serve", "--duration", "nan"], "--duration"),  # served for ever
        (["serve", "--duration", "-1"], "--duration"),
        (["serve", "--max-cycles", "0"], "--max-cycles"),
        (["serve", "--metrics-port", "99999"], "--metrics-port"),  # an OverflowError traceback from bind()
        (["project", "--metrics-port", "-1"], "--metrics-port"),
        (["init", "--partitions", "0"], "--partitions"),  # created half the topics, then failed
        (["init", "--partitions", "1000000"], "--partitions"),  # accepted; `serve --duration 3` then ran 127 s
        (["init", "--replication-factor", "0"], "--replication-factor"),
        (["status", "--decisions", "-3"], "--decisions"),
        (["allocate", "x.json", "--indent", "-5"], "--indent"),
        (["allocate", "x.json", "--indent", "100000000"], "--indent"),  # a MemoryError printing the decision
        (["replay", "--batch-size", "0"], "--batch-size"),  # a ValueError traceback from the log's poll
        (["control", "halt", "--reason", "r", "--operator", "o", "--topic-prefix", "a b"], "--topic-prefix"),
        (["status", "--topic-prefix", "x/y"], "--topic-prefix"),
    ],
)
def test_a_bad_number_is_a_usage_error_naming_the_flag(
    argv: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.sqlite"
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--log", str(log)] if argv[0] != "allocate" else argv)
    assert exit_.value.code == 2
    assert f"argument {named}" in capsys.readouterr().err
    assert not log.exists()  # nothing created


def test_a_config_that_is_a_folder_or_not_text_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = ["--log", str(tmp_path / "log.sqlite")]
    assert main(["init", *log]) == 0
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    for config, why in ((tmp_path, "cannot read it"), (binary, "not UTF-8")):
        capsys.readouterr()
        assert main(["serve", "--book", "main", "--config", str(config), "--max-cycles", "1", *log]) == 2
        err = capsys.readouterr().err
        assert f"{config}: {why}" in err and "Traceback" not in err


def test_an_audit_report_that_cannot_be_written_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = ["--log", str(tmp_path / "log.sqlite")]
    assert main(["init", *log]) == 0
    for report in (tmp_path / "missing" / "audit.json", tmp_path):
        capsys.readouterr()
        assert main(["audit", "--report", str(report), *log]) == 2
        assert f"allocator audit: --report {report}: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["tail", "governor", "--max", "1", "--timeout", "1"],
        ["propose", "-"],
        ["fill", "-"],
        ["control", "halt", "--reason", "r", "--operator", "o"],
    ],
)
def test_a_command_on_a_log_file_that_is_not_there_names_it_and_creates_nothing(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import json

    fill = {"fill_id": "f", "decision_id": "d", "proposal_id": "p", "market_id": "m", "side": "BUY",
            "requested_size": 1, "filled_size": 1, "price": 0.5, "fee": 0, "status": "FILLED"}  # fmt: skip
    examples = Path(__file__).resolve().parent.parent / "examples" / "proposals.json"
    stdin = json.dumps(fill) if argv[0] == "fill" else examples.read_text(encoding="utf-8")
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    log = tmp_path / "typo.sqlite"
    assert main([*argv, "--log", str(log)]) == 2
    assert f"no event log at {log}: create the book with `allocator init" in capsys.readouterr().err
    assert not log.exists()


def test_tail_of_a_topic_that_is_not_there_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = ["--log", str(tmp_path / "log.sqlite")]
    assert main(["init", *log, "--topic-prefix", "other"]) == 0
    assert main(["tail", "governor", "--max", "1", "--timeout", "1", *log, "--topic-prefix", "allocator"]) == 2
    assert "no topics with prefix 'allocator'" in capsys.readouterr().err
    assert main(["tail", "governor", "--max", "1", "--timeout", "1", *log]) == 0  # the log's only book


@pytest.mark.parametrize("command", [["init"], ["serve", "--max-cycles", "1"]])
def test_a_log_in_a_missing_folder_or_a_folder_as_the_log_is_named(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    missing = tmp_path / "no-such-folder" / "book.sqlite"
    for log, why in ((missing, f"the folder {missing.parent} does not exist"), (tmp_path, "is a folder")):
        capsys.readouterr()
        assert main([*command, "--log", str(log)]) == 2
        err = capsys.readouterr().err
        assert f"--log {log}: {why}" in err and "sqlite" not in err.replace(str(log), "")
    assert not missing.parent.exists()


def test_text_that_is_not_unicode_is_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`propose` sent a file's first proposal, then died on the second's "\\ud800" (no encoder takes a lone
    surrogate) with a traceback; `control --reason` of bytes that are not UTF-8 did the same. Both now exit 2 naming
    the field, with nothing on the log."""
    import io
    import json

    from eventlog.embedded import EmbeddedEventLog

    log = tmp_path / "log.sqlite"
    assert main(["init", "--log", str(log)]) == 0
    good = json.loads((Path(__file__).resolve().parent.parent / "examples" / "proposals.json").read_text())[0]
    text = json.dumps(good) + "\n" + json.dumps({**good, "proposal_id": "p-\ud800"}) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["propose", "-", "--log", str(log)]) == 2
    err = capsys.readouterr().err
    assert "line 2: proposal_id: not valid Unicode text" in err and "nothing sent" in err
    not_utf8 = b"\xff".decode("utf-8", "surrogateescape")  # what Python makes of such an argument
    argv = ["control", "halt", "--operator", "alice", "--log", str(log)]
    assert main([*argv, "--reason", f"why {not_utf8}"]) == 2
    assert "reason: not valid Unicode text" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["propose", "-", "--log", str(log)]) == 2
    assert "standard input holds no proposals; nothing sent" in capsys.readouterr().err
    with EmbeddedEventLog(log) as reader:
        assert sum(reader.end_offsets(["allocator.proposals", "allocator.control"]).values()) == 0


def test_input_nested_past_what_the_json_reader_takes_is_refused_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    log = tmp_path / "log.sqlite"
    assert main(["init", "--log", str(log)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("[" * 5_000 + "]" * 5_000))
    assert main(["propose", "-", "--log", str(log)]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "nothing sent" in err


def _huge(digits: int) -> str:
    return "1" + "0" * (digits - 1)


@pytest.mark.parametrize("digits", [400, 5_000], ids=["past-a-float", "past-python-int-parsing"])
def test_a_number_too_large_for_any_field_is_refused_naming_the_file(
    digits: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: an integer of 400 digits (no float holds it) in a snapshot, a proposal or a configuration
    file gave an OverflowError traceback, one of 5,000 digits Python's own ValueError. Every input file now refuses
    an integer of more than 300 digits, naming the file; nothing is sent or created."""
    import json

    log = tmp_path / "log.sqlite"
    snapshot = json.loads((Path(__file__).parent.parent / "examples" / "basic.json").read_text(encoding="utf-8"))
    big_snapshot = tmp_path / "snapshot.json"
    big_snapshot.write_text(json.dumps(snapshot).replace('"equity": 100000.0', f'"equity": {_huge(digits)}', 1))
    assert f'"equity": {_huge(digits)}' in big_snapshot.read_text()
    config = tmp_path / "config.json"
    config.write_text(f'{{"initial_cash": {_huge(digits)}}}', encoding="utf-8")
    proposals = tmp_path / "proposals.json"
    proposals.write_text(
        '{"proposal_id": "p1", "agent_id": "a", "market_id": "m", "side": "BUY", "requested_size": '
        f'{_huge(digits)}, "min_size": 1, "expected_edge": 0.1, "confidence": 0.5, "price": 0.5}}',
        encoding="utf-8",
    )
    cases = [
        (["allocate", str(big_snapshot)], big_snapshot),
        (["init", "--log", str(log), "--config", str(config)], config),
        (["propose", str(proposals), "--log", str(log)], None),
    ]
    for argv, named in cases:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"a number of {digits} digits, at most 300" in err and "Traceback" not in err
        if named is not None:
            assert str(named) in err
    assert not log.exists()  # nothing created, nothing sent


def test_a_snapshot_that_never_ends_is_refused_unread(capsys: pytest.CaptureFixture[str]) -> None:
    """`allocate /dev/zero` read until memory ran out (the file system reports no size for a device): input is now
    read only up to its limit."""
    assert main(["allocate", "/dev/zero"]) == 2
    assert "/dev/zero: larger than 64 MiB" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("notaurl", "--database: not a SQLAlchemy database URL"),
        ("mysql://someone:secret@host/db", "--database: mysql://someone:***@host/db: this release cannot open it"),
    ],
)
def test_a_database_url_that_cannot_be_opened_is_a_usage_error(
    url: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--database notaurl` gave SQLAlchemy's ArgumentError traceback, a URL with no driver installed a
    ModuleNotFoundError: each command that opens a database now refuses the URL up front, without its password."""
    for command in (["status"], ["replay"], ["db", "upgrade"]):
        capsys.readouterr()
        assert main([*command, "--database", url]) == 2
        err = capsys.readouterr().err
        assert named in err and "secret" not in err and "Traceback" not in err


def test_init_takes_at_most_1000_partitions_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: `init --partitions 1000000` was accepted, and `serve --duration 3` then ran 127 s (every
    decision records its position in each input partition, every cycle reads them all). 1,000 is the bound."""
    log = tmp_path / "log.sqlite"
    with pytest.raises(SystemExit) as exit_:
        main(["init", "--log", str(log), "--partitions", "1001"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --partitions: '1001': at most 1000 (every decision records its position in each input" in err
    assert "Traceback" not in err and not log.exists()
    assert main(["init", "--log", str(log), "--partitions", "1000"]) == 0
    assert main(["tail", "governor", "--max", "1", "--timeout", "0", "--log", str(log)]) == 0  # a usable log


def _no_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_an_sqlite_url_that_names_no_file_is_a_usage_error_naming_it(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: `project` and `replay` on `sqlite://` or `sqlite:///` (what `sqlite:///$UNSET_VAR` becomes)
    migrated one in-memory database and wrote through another: a traceback ending in "no such table", exit 1;
    `db upgrade` exited 0 saying "projection schema is at None; already there". Each now refuses the URL."""
    _no_database_url(monkeypatch)
    monkeypatch.chdir(tmp_path)
    log = ["--log", str(tmp_path / "log.sqlite")]
    assert main(["init", *log]) == 0
    why = "an in-memory database" if url.endswith(":memory:") else "names no file (an unset variable"
    for command in (["project", "--once", *log], ["replay", *log], ["status", *log], ["db", "upgrade"]):
        capsys.readouterr()
        assert main([*command, "--database", url]) == 2, command
        err = capsys.readouterr().err
        assert err.startswith(f"allocator {command[0]}: --database: {url}: {why}"), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["replay", *log]) == 2
    assert f"allocator replay: $DATABASE_URL: {url}: " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.sqlite"]  # no projection made anywhere


def test_schema_with_an_sqlite_projection_is_refused_and_the_projection_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: README's `allocator replay --schema replay_check` on the embedded default ignored --schema,
    said "... schema replay_check", and wiped and rebuilt the default projection file, under the projector writing
    it. SQLite has no schemas: replay, project, status and db upgrade now refuse --schema with an SQLite database,
    named by --database, $DATABASE_URL or the default, and touch nothing."""
    _no_database_url(monkeypatch)
    monkeypatch.chdir(tmp_path)
    log = _decided_log(tmp_path)
    assert main(["project", "--once", *log]) == 0  # the default projection, allocator-projections.sqlite
    default = tmp_path / "allocator-projections.sqlite"
    projected = default.read_bytes()
    other = tmp_path / "other.sqlite"
    for command, database in (
        (["replay", *log], "the default database sqlite:///allocator-projections.sqlite"),
        (["project", "--once", *log], "the default database sqlite:///allocator-projections.sqlite"),
        (["status", *log], "the default database sqlite:///allocator-projections.sqlite"),
        (["replay", *log, "--database", f"sqlite:///{other}"], f"--database sqlite:///{other}"),
        (["db", "upgrade", "--database", f"sqlite:///{other}"], f"--database sqlite:///{other}"),
        (["db", "grant-reader", "auditor", "--database", f"sqlite:///{other}"], f"--database sqlite:///{other}"),
    ):
        capsys.readouterr()
        assert main([*command, "--schema", "replay_check"]) == 2, command
        captured = capsys.readouterr()
        assert captured.err.startswith(f"allocator {command[0]}: --schema replay_check: {database} is an SQLite file, "
                                       "which has no schemas (--schema is for PostgreSQL)"), captured.err  # fmt: skip
        assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
        assert "replayed" not in captured.out
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{other}")
    assert main(["replay", *log, "--schema", "replay_check"]) == 2
    assert f"--schema replay_check: $DATABASE_URL sqlite:///{other} is an SQLite file" in capsys.readouterr().err
    assert default.read_bytes() == projected and not other.exists()


def test_a_projector_that_loses_the_race_for_a_new_projection_exits_3_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: two `project` started at once on one new SQLite projection; the loser sometimes ended on
    a 52-line traceback (sqlite3 IntegrityError, UNIQUE constraint failed: consumed_offsets...): both had found no
    stored offset, and the second insert of the first offsets conflicted. The race, made deterministic: a rival
    projector projects the whole log right after this one read its (empty) stored offsets."""
    from eventlog.embedded import EmbeddedEventLog
    from projections.database import engine_for
    from projections.projector import Projector
    from schemas.codec import make_codec

    _no_database_url(monkeypatch)
    log = _decided_log(tmp_path)
    url = f"sqlite:///{tmp_path / 'projection.sqlite'}"
    start = Projector.start
    rivals: list[int] = []

    def start_then_a_rival_projects(self: Projector) -> None:
        start(self)
        if not rivals:  # once: the rival's own start comes through here too
            rivals.append(1)
            engine = engine_for(url)
            with EmbeddedEventLog(log[1]) as rival_log:
                rival = Projector(rival_log, engine, make_codec(None), self.topics, say=lambda _: None)
                rival.start()
                rival.catch_up(rival_log.end_offsets(self.topics))
            engine.dispose()
            assert rival.stats.records > 0

    monkeypatch.setattr(Projector, "start", start_then_a_rival_projects)
    capsys.readouterr()
    assert main(["project", "--once", *log, "--database", url]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("allocator project: allocator.")
    assert "expected no stored offset" in err and "another projector stored " in err and "; rolled back" in err


def test_a_key_given_twice_is_refused_in_every_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: `{"position_cap": 0.5, "position_cap": 0.01}` configured the last silently, as did a
    proposal's repeated field: which one a reader or another JSON library takes is not the file's to leave open."""
    log = tmp_path / "log.sqlite"
    config = tmp_path / "config.json"
    config.write_text('{"position_cap": 0.5, "position_cap": 0.01}', encoding="utf-8")
    proposals = tmp_path / "proposals.json"
    proposals.write_text('{"proposal_id": "p1", "proposal_id": "p2"}', encoding="utf-8")
    for argv, key in (
        (["init", "--log", str(log), "--config", str(config)], "position_cap"),
        (["propose", str(proposals), "--log", str(log)], "proposal_id"),
    ):
        capsys.readouterr()
        assert main(argv) == 2
        assert f"key '{key}' given twice in one object" in capsys.readouterr().err
    assert not log.exists()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('{"proposal_id": "p1"}\n\n{"proposal_id": "p2", "proposal_id": "p3"}\n', 3),  # JSON lines
        ('[\n  {"proposal_id": "p1"},\n  {"proposal_id": "p2",\n   "proposal_id": "p3"}\n]', 3),  # an array
        ('\n\n{"proposal_id": "p1",\n "proposal_id": "p2"}', 3),  # one object over several lines
        ('{"proposal_id": "p1"}\n{"requested_size": 1' + "0" * 400 + "}\n", 2),
        ('[{"proposal_id": "p1"},\n {"requested_size": 1' + "0" * 400 + "}]", 2),
    ],
)
def test_what_the_strict_reading_refuses_names_its_line(
    text: str, line: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A repeated key or an over-long integer in `propose`/`fill` input named the file only; in a file of many
    records the user had to search for it. Each shape of input now names the line its record starts on."""
    records = tmp_path / "records.json"
    records.write_text(text, encoding="utf-8")
    log = tmp_path / "log.sqlite"
    for command in ("propose", "fill"):
        capsys.readouterr()
        assert main([command, str(records), "--log", str(log)]) == 2
        err = capsys.readouterr().err
        assert f"allocator {command}: line {line}: " in err and "Traceback" not in err
        assert "given twice in one object" in err or "a number of 401 digits, at most 300" in err
    assert not log.exists()


@pytest.mark.parametrize(
    ("after", "line"),
    [("\n[P]\n", 3), ("\n\n  P\n", 4), (" garbage", 2), ("\n]", 3)],
    ids=["a second array", "an object on a line", "text", "a bracket"],
)
def test_nothing_after_a_json_array_is_dropped(
    after: str, line: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: `[P1]` then `[P2]` on the next line sent P1 and said "1 proposal sent"; whatever followed
    the first array (more records, text) was ignored. It is now refused, naming its line, and nothing is sent."""
    one = json.loads((Path(__file__).resolve().parent.parent / "examples" / "proposals.json").read_text())[0]
    records = tmp_path / "records.json"
    records.write_text("\n" + json.dumps([one]) + after.replace("P", json.dumps(one)), encoding="utf-8")
    log = tmp_path / "log.sqlite"
    for command in ("propose", "fill"):
        capsys.readouterr()
        assert main([command, str(records), "--log", str(log)]) == 2
        err = capsys.readouterr().err
        assert f"allocator {command}: line {line}: more after the JSON array that starts on line 2" in err, err
    assert not log.exists()


def test_an_array_of_many_records_names_the_line_of_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each item's line is counted on from the item before it (counting from the start every time made a 50 MB
    array run for more than 10 minutes): the line named is still the item's own, wherever it is."""
    items = [f'{{"proposal_id": "p{i}"}}' for i in range(3_000)]
    items[2_500] = '{"proposal_id": "p1",\n "proposal_id": "p2"}'
    records = tmp_path / "records.json"
    records.write_text("[\n" + ",\n".join(items) + "\n]", encoding="utf-8")
    assert main(["propose", str(records), "--log", str(tmp_path / "log.sqlite")]) == 2
    assert "allocator propose: line 2502: key 'proposal_id' given twice" in capsys.readouterr().err


def test_propose_refuses_a_null_price(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: `"price": null` was sent ("1 proposal sent", exit 0) and rejected by the next decision
    ("price: null needs caller-supplied scenario returns"), which a book never has. It is refused before sending."""
    one = json.loads((Path(__file__).resolve().parent.parent / "examples" / "proposals.json").read_text())[0]
    records = tmp_path / "records.json"
    records.write_text(json.dumps({**one, "price": None}), encoding="utf-8")
    log = str(tmp_path / "log.sqlite")
    assert main(["init", "--log", log]) == 0
    capsys.readouterr()
    assert main(["propose", str(records), "--log", log]) == 2
    err = capsys.readouterr().err
    assert "line 1: price: must be a number" in err and "nothing sent" in err, err


def test_text_from_the_log_reaches_a_terminal_without_its_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: an operator id holding ESC [2A ESC [2K, folded into a governor event, was printed as it is
    by `allocator tail governor`: on a terminal it moved the cursor up and erased lines, such as a kill-switch trip
    printed before it. serve, tail, audit and control print such text with each control character a `?`."""
    log = ["--log", str(tmp_path / "log.sqlite")]
    examples = Path(__file__).resolve().parent.parent / "examples" / "proposals.json"
    assert main(["init", *log]) == 0 and main(["propose", str(examples), *log]) == 0
    who, why = "\x1b[2Amallory\x9b2K", "r\x1b[2K\nforged line\x07"
    assert main(["control", "halt", "--operator", who, "--reason", why, "--unchecked", *log]) == 0
    assert main(["serve", *log, "--max-cycles", "1", "--duration", "60"]) == 0
    for what in ("governor", "decisions", "deadletter"):
        assert main(["tail", what, *log, "--from-beginning", "--timeout", "1"]) == 0
    assert main(["audit", *log, "--report", str(tmp_path / "report.json")]) == 0
    out, err = capsys.readouterr()
    assert "?[2Amallory?2K: r?[2K?forged line?" in out, out
    for text in (out, err):
        assert not any((ord(c) < 32 and c not in "\n\t") or 127 <= ord(c) <= 159 for c in text), repr(text)


@pytest.mark.parametrize("command", [["init"], ["serve", "--max-cycles", "1"], ["tail", "governor"], ["audit"]])
def test_an_empty_log_path_is_named_where_it_came_from(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: ALLOCATOR_LOG set but empty made every command say `--log .: is a folder`, naming a flag
    never given, and `--log ""` quietly used (and `init` created) ./allocator-log.sqlite."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("ALLOCATOR_LOG", "")
    assert main(command) == 2
    assert "ALLOCATOR_LOG is empty: give the event log file's path" in capsys.readouterr().err
    monkeypatch.delenv("ALLOCATOR_LOG")
    assert main([*command, "--log", ""]) == 2
    assert "--log is empty: give the event log file's path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_schema_name_postgresql_cannot_take_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`status`, `project` and `db upgrade` with `--schema Bad-Name` ended on a ValueError traceback (replay alone
    refused it in one line)."""
    for command in (["status"], ["project", "--once"], ["db", "upgrade"]):
        capsys.readouterr()
        assert main([*command, "--schema", "Bad-Name", "--database", "sqlite:///never.sqlite"]) == 2
        err = capsys.readouterr().err
        assert "--schema: schema name 'Bad-Name' must be" in err and "Traceback" not in err
    assert not Path("never.sqlite").exists()


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("command", "named"),
    [
        (["project", "--once", "--database", "sqlite:///{tmp}/p.sqlite"], "list the broker's topics"),
        (["serve", "--book", "main", "--duration", "5"], "create topic"),
    ],
    ids=["project", "serve"],
)
def test_a_login_the_broker_refuses_is_one_line_not_a_traceback(
    kafka_bootstrap: str,
    kafka_admin_properties: dict[str, str],
    kafka_prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    named: str,
) -> None:
    """An outside probe on the secured broker: `project` with a wrong password ended on a KafkaException traceback
    from listing the topics, `serve` on a TimeoutError from creating them. Each now fails in one line, exit 1."""
    wrong = tmp_path / "wrong.properties"
    wrong.write_text(
        "".join(f"{k}={'wrong' if k == 'sasl.password' else v}\n" for k, v in kafka_admin_properties.items()),
        encoding="utf-8",
    )
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command]
    log = ["--kafka", kafka_bootstrap, "--kafka-config", str(wrong), "--topic-prefix", kafka_prefix]
    assert main([*argv, *log]) == 1
    err = capsys.readouterr().err
    assert named in err and "reachable, and the login" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("count", ["0", "999999"])
def test_demo_checks_its_scenario_count_before_running(count: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: `demo --scenario-count 0` ended on a ConfigError traceback, exit 1."""
    assert main(["demo", "--scenario-count", count, "--steps", "20", "--out", "never-made"]) == 2
    err = capsys.readouterr().err
    assert f"allocator demo: --scenario-count {count}: scenario_count: must be in [1, 20000], got {count}" in err
    assert not Path("never-made").exists()


def _decided_log(tmp_path: Path) -> list[str]:
    """An embedded log whose book decided the example proposals once; returns its --log flags."""
    log = ["--log", str(tmp_path / "log.sqlite")]
    examples = Path(__file__).resolve().parent.parent / "examples" / "proposals.json"
    for argv in (
        ["init", *log],
        ["propose", str(examples), *log],
        ["serve", *log, "--max-cycles", "1", "--duration", "60"],
    ):
        assert main(argv) == 0, argv
    return log


def test_audit_checks_its_report_path_before_re_deriving_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: a report path in a missing folder, a folder, or '' was found only after every decision had
    been re-derived (a long audit's work lost), and /dev/full ended on an OSError traceback."""
    log = _decided_log(tmp_path)
    for report, said in (("", "--report: an empty file name"), (str(tmp_path), "a folder; name a file in it"),
                         (str(tmp_path / "none" / "r.json"), f"no folder {tmp_path / 'none'}")):  # fmt: skip
        capsys.readouterr()
        assert main(["audit", *log, "--report", report]) == 2
        err = capsys.readouterr().err
        assert said in err and "audited" not in err  # refused before the first re-derivation
    if Path("/dev/full").exists():
        assert main(["audit", *log, "--report", "/dev/full"]) == 1
        err = capsys.readouterr().err
        assert "the report was not written to /dev/full: No space left on device" in err and "Traceback" not in err


def test_audit_refuses_an_empty_head_and_writes_progress_a_line_at_a_time_into_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--head ''` was taken as no head at all (while `--head zz` was refused); progress written to a file was one
    line of carriage returns."""
    log = _decided_log(tmp_path)
    report = ["--report", str(tmp_path / "r.json")]
    capsys.readouterr()
    assert main(["audit", *log, *report, "--head", ""]) == 2
    assert "--head '': a decision hash is 64 hex characters" in capsys.readouterr().err
    assert main(["audit", *log, *report]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "audited 1/1 decisions" in err and "(1 worker)" in err


def test_an_interrupted_audit_ends_its_progress_line_and_says_the_report_is_an_earlier_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import allocator.service.audit as audit

    log = _decided_log(tmp_path)
    report = tmp_path / "r.json"
    assert main(["audit", *log, "--report", str(report)]) == 0
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)

    def interrupted(*_args: object, **kwargs: object) -> None:
        progress = _args[4]
        assert callable(progress)
        progress(10, 300)
        raise KeyboardInterrupt

    monkeypatch.setattr(audit, "audit_log", interrupted)
    capsys.readouterr()
    assert main(["audit", *log, "--report", str(report)]) == 130
    err = capsys.readouterr().err
    assert "re-derived/s\n" in err and "re-derived/sinterrupted" not in err
    assert f"no report written; {report} is an earlier run's" in err and err.rstrip().endswith("interrupted")


def test_a_file_that_is_not_a_log_is_named_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --log examples/basic.json` printed SQLAlchemy's message with its 'Background on this error' link."""
    examples = Path(__file__).resolve().parent.parent / "examples" / "basic.json"
    assert main(["serve", "--log", str(examples), "--max-cycles", "1", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{examples} is not an event log (file is not a database)" in err
    assert "sqlalche.me" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_every_command_given_a_file_that_is_no_log_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: a text file as --log was exit 2 for audit, project, status and replay, but exit 1 ("the log
    failed") for init, serve, propose, control and tail; naming the wrong file is the caller's to fix."""
    text = str(Path(__file__).resolve().parent.parent / "README.md")
    proposals = str(Path(__file__).resolve().parent.parent / "examples" / "proposals.json")
    for argv in (["init"], ["serve", "--duration", "1"], ["propose", proposals], ["tail", "decisions"],
                 ["control", "halt", "--reason", "r", "--operator", "o"], ["audit"], ["status"]):  # fmt: skip
        capsys.readouterr()
        assert main([*argv, "--log", text]) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and "README.md" in err, argv


def test_serve_with_duration_0_stops_after_starting(tmp_path: Path) -> None:
    """An outside probe: `--duration 0` was taken as no duration, and serve ran until killed."""
    log = str(tmp_path / "log.sqlite")
    assert main(["init", "--log", log]) == 0
    assert main(["serve", "--log", log, "--duration", "0"]) == 0


def test_a_read_only_log_is_said_without_the_sql_statement(tmp_path: Path) -> None:
    """A read-only log made `propose` and `serve` print the whole INSERT statement and its parameters (a memory
    address among them): the message is now what SQLite said, and what it means for a log file."""
    import sqlite3

    from sqlalchemy import create_engine, text

    from eventlog.embedded import sqlite_problem

    path = tmp_path / "log.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE records (value BLOB)")
    engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(Exception) as raised, engine.begin() as conn:
        conn.execute(text("INSERT INTO records (value) VALUES (:v)"), {"v": b"x" * 64})
    said = sqlite_problem(raised.value)
    assert said.startswith("attempt to write a readonly database (the file, or its folder, is read-only")
    assert "INSERT" not in said and "0x" not in said


def test_demo_refuses_calm_with_a_stress_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    """`--scenario calm --scenario election-shock` dropped `calm` without a word."""
    assert main(["demo", "--scenario", "calm", "--scenario", "election-shock", "--out", "never-made"]) == 2
    assert "--scenario calm (no stress) cannot go with election-shock" in capsys.readouterr().err
    assert not Path("never-made").exists()


def test_a_trusted_key_file_that_is_no_key_says_what_a_key_file_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--trusted-keys examples/basic.json` answered 'not hex'."""
    examples = Path(__file__).resolve().parent.parent / "examples" / "basic.json"
    log = [*_decided_log(tmp_path), "--report", str(tmp_path / "r.json")]
    capsys.readouterr()
    assert main(["audit", *log, "--trusted-keys", str(examples)]) == 2
    assert f"{examples}: not a public key (a PEM public key, or 64 hex characters of the raw key)" in (
        capsys.readouterr().err
    )
    short = tmp_path / "short.pub"
    short.write_text("ab" * 31, encoding="ascii")
    assert main(["audit", *log, "--trusted-keys", str(short)]) == 2
    assert "an Ed25519 public key is 32 bytes (64 hex characters), got 31 bytes" in capsys.readouterr().err


def test_writers_and_tail_find_the_only_book_of_an_embedded_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: on the demo's log (prefix `demo`) `tail`, `control` and `propose` said "topic
    'allocator.decisions' does not exist ... create it first (allocator init)", and following that advice made the
    log hold two books, so `audit` and `status` then refused it. They now find the only book as the readers do, and
    name the books of a log that holds several."""
    proposals = str(Path(__file__).parent.parent / "examples" / "proposals.json")
    log = ["--log", str(tmp_path / "log.sqlite")]
    assert main(["init", *log, "--topic-prefix", "desk"]) == 0
    for argv in (["propose", proposals, *log], ["control", "halt", "--reason", "r", "--operator", "o", *log],
                 ["tail", "governor", "--from-beginning", "--timeout", "0.1", *log]):  # fmt: skip
        capsys.readouterr()
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    assert main(["serve", *log, "--topic-prefix", "desk", "--max-cycles", "1", "--duration", "60"]) == 0
    capsys.readouterr()
    assert main(["tail", "decisions", "--from-beginning", "--timeout", "0.1", *log]) == 0
    assert "decision desk.main-0000000001" in capsys.readouterr().out
    assert main(["init", *log, "--topic-prefix", "other"]) == 0
    for argv in (["propose", proposals, *log], ["control", "resume", "--reason", "r", "--operator", "o", *log],
                 ["tail", "decisions", *log]):  # fmt: skip
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert "holds several books: --topic-prefix desk, --topic-prefix other" in capsys.readouterr().err


def test_status_with_no_decisions_listed_still_shows_the_book(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: `status --decisions 0` printed only "no decisions in the projection yet", with no governor,
    equity or exposure, though the projection held decisions."""
    proposals = str(Path(__file__).parent.parent / "examples" / "proposals.json")
    log = ["--log", str(tmp_path / "log.sqlite")]
    db = ["--database", f"sqlite:///{tmp_path / 'p.sqlite'}"]
    serve = ["serve", *log, "--max-cycles", "1", "--duration", "60"]
    for argv in (["init", *log], ["propose", proposals, *log], serve, ["project", "--once", *log, *db]):
        assert main(argv) == 0, argv
    capsys.readouterr()
    assert main(["status", *log, *db, "--decisions", "0"]) == 0
    out = capsys.readouterr().out
    assert "book main: governor ACTIVE" in out and "equity 100,000.00" in out
    assert "no decisions in the projection yet" not in out
    listed = out.split("last decisions")[1].split("operator commands")[0]
    assert listed.count("\n") == 2  # the header line only


def test_demo_seed_and_dask_address_are_checked_as_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: `demo --seed -1` and `audit --dask 127.0.0.1` (no port) ended on ValueError tracebacks."""
    with pytest.raises(SystemExit) as info:
        main(["demo", "--seed", "-1"])
    assert info.value.code == 2 and "--seed: '-1': at least 0" in capsys.readouterr().err
    pytest.importorskip("distributed")
    log = str(tmp_path / "log.sqlite")
    assert main(["init", "--log", log]) == 0
    capsys.readouterr()
    assert main(["audit", "--log", log, "--dask", "127.0.0.1"]) == 2
    err = capsys.readouterr().err
    assert "--dask 127.0.0.1: not a scheduler address" in err and "Traceback" not in err


def test_control_refuses_a_book_other_than_the_one_the_log_decides_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: `control halt --book other` on book main's log (no operator keys) said "for book
    allocator.other" and halted main: a book without a keyring takes any command on its control topic. The command
    line now refuses a book the log's decisions do not name."""
    proposals = str(Path(__file__).parent.parent / "examples" / "proposals.json")
    log = ["--log", str(tmp_path / "log.sqlite")]
    for argv in (
        ["init", *log],
        ["propose", proposals, *log],
        ["serve", *log, "--max-cycles", "1", "--duration", "60"],
    ):
        assert main(argv) == 0, argv
    capsys.readouterr()
    assert main(["control", "halt", "--book", "other", "--reason", "r", "--operator", "o", *log]) == 2
    assert "--book other: the decisions on this log are book main's" in capsys.readouterr().err
    from eventlog.embedded import EmbeddedEventLog

    with EmbeddedEventLog(tmp_path / "log.sqlite") as reader:
        assert sum(reader.end_offsets(["allocator.control"]).values()) == 0  # nothing was written
    assert main(["control", "halt", "--book", "main", "--reason", "r", "--operator", "o", *log]) == 0
    assert "for book allocator.main unsigned" in capsys.readouterr().out
    # An outside probe: `--book MAIN` passed the check (book ids are one spelling, lower case) but the command named
    # allocator.MAIN, and a book with operator keys refused it as another book's; `--book ''` printed a traceback.
    assert main(["control", "halt", "--book", "MAIN", "--reason", "r", "--operator", "o", *log]) == 0
    assert "for book allocator.main unsigned" in capsys.readouterr().out
    assert main(["control", "halt", "--book", "", "--reason", "r", "--operator", "o", *log]) == 2
    assert "allocator control: --book: book id '': must be 1-64 characters" in capsys.readouterr().err
    # A forged decision appended under another book's name chose the default book, and the HALT went to it: the
    # first and the newest decision now disagree, so the book must be named.
    import dataclasses

    from schemas.codec import SingleObjectCodec
    from schemas.events import Decision

    codec = SingleObjectCodec()
    with EmbeddedEventLog(tmp_path / "log.sqlite") as writer:
        writer.assign(["allocator.decisions"])
        [record] = writer.poll(max_records=1, timeout_s=1.0)
        genuine = codec.decode(record.value or b"")
        assert isinstance(genuine, Decision)
        writer.produce("allocator.decisions", codec.encode(dataclasses.replace(genuine, book_id="beta", cycle=9)))
        writer.flush()
    assert main(["control", "halt", "--reason", "r", "--operator", "o", *log]) == 2
    assert "the decisions on this log name books main and beta: pass --book" in capsys.readouterr().err
    assert main(["control", "halt", "--book", "main", "--reason", "r", "--operator", "o", *log]) == 0


def test_propose_names_an_empty_file_and_counts_one_proposal_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outside probes: an empty file was "the input holds no proposals", and one proposal was "1 proposals sent"."""
    log = str(tmp_path / "log.sqlite")
    assert main(["init", "--log", log]) == 0
    empty = tmp_path / "empty.json"
    empty.write_text("\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["propose", str(empty), "--log", log]) == 2
    assert f"{empty} holds no proposals; nothing sent" in capsys.readouterr().err
    one = json.loads((Path(__file__).resolve().parent.parent / "examples" / "proposals.json").read_text())[0]
    single = tmp_path / "one.json"
    single.write_text(json.dumps(one), encoding="utf-8")
    assert main(["propose", str(single), "--log", log]) == 0
    assert "\n1 proposal sent to allocator.proposals" in capsys.readouterr().out


def test_a_second_key_in_a_folder_is_said_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: `keys new --out DIR` twice added a second key silently; `serve --signing-key DIR` then failed
    ("a folder must hold exactly one *.key file")."""
    assert main(["keys", "new", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""
    assert main(["keys", "new", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"{tmp_path} now holds 2 private keys" in err and "--signing-key and --key must name the file" in err


def test_audit_report_never_replaces_a_file_that_is_not_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: `audit --log book.sqlite --report book.sqlite` replaced the event log it audited with the
    JSON report, exit 0."""
    log = tmp_path / "book.sqlite"
    assert main(["init", "--log", str(log)]) == 0
    notes = tmp_path / "notes.txt"
    notes.write_text("mine", encoding="utf-8")
    before = log.read_bytes()
    for target, why in ((log, "an SQLite database"), (notes, "not an audit report")):
        capsys.readouterr()
        assert main(["audit", "--log", str(log), "--report", str(target)]) == 2
        assert f"--report {target}: {why}" in capsys.readouterr().err
    assert log.read_bytes() == before and notes.read_text(encoding="utf-8") == "mine"


def test_serve_runs_the_book_of_an_embedded_log_whatever_its_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: `serve` without --topic-prefix on a log made with `--topic-prefix p2` created empty
    `allocator.*` topics beside p2's, decided nothing and exited 0; every command that finds the book then refused
    the log ("holds several books")."""
    proposals = str(Path(__file__).parent.parent / "examples" / "proposals.json")
    log = ["--log", str(tmp_path / "log.sqlite")]
    assert main(["init", *log, "--topic-prefix", "p2"]) == 0
    assert main(["propose", proposals, *log]) == 0
    capsys.readouterr()
    assert main(["serve", "--book", "desk", *log, "--max-cycles", "1", "--duration", "60"]) == 0
    assert "book desk (topics p2.*)" in capsys.readouterr().out
    assert main(["tail", "decisions", "--from-beginning", "--timeout", "0.1", *log]) == 0
    assert "decision p2.desk-0000000001" in capsys.readouterr().out
    assert main(["init", *log, "--topic-prefix", "p3"]) == 0
    capsys.readouterr()
    assert main(["serve", *log, "--max-cycles", "1", "--duration", "1"]) == 2
    assert "holds several books: --topic-prefix p2, --topic-prefix p3; pass one" in capsys.readouterr().err


def test_fill_refuses_what_the_fold_would_refuse_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: `fill` sent a fill at price 7 with fee -1 ("1 fill sent", exit 0); the allocator then
    dead-lettered it. Like `propose`, it now checks the fold's bounds first: exit 2, the line named, nothing sent."""
    import io

    from eventlog.embedded import EmbeddedEventLog

    log = str(tmp_path / "log.sqlite")
    assert main(["init", "--log", log]) == 0
    good = {"fill_id": "f1", "decision_id": "d", "agent_id": "a", "proposal_id": "p", "market_id": "m", "side": "BUY",
            "requested_size": 10, "filled_size": 10, "price": 0.5, "fee": 0, "status": "FILLED"}  # fmt: skip
    text = json.dumps(good) + "\n" + json.dumps({**good, "fill_id": "f2", "price": 7}) + "\n"
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["fill", "-", "--log", log]) == 2
    err = capsys.readouterr().err
    assert "line 2: Fill.price: 7.0 is not a price in [1e-06, 0.999999]" in err and "nothing sent" in err
    with EmbeddedEventLog(log) as reader:
        assert sum(reader.end_offsets(["allocator.fills"]).values()) == 0
    # An outside probe: a time of 2**63 or more gave a traceback after the records before it were sent (exit 1).
    for bad, said in (({"time": 2**63}, "time: must be milliseconds since the epoch (an integer in [0, 2**62])"),
                      ({"time": -1}, "time: must be milliseconds"),
                      ({"status": "FAILED", "filled_size": 5}, "filled_size: 5 on a FAILED report")):  # fmt: skip
        monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(good) + "\n" + json.dumps({**good, **bad}) + "\n"))
        assert main(["fill", "-", "--log", log]) == 2
        err = capsys.readouterr().err
        assert f"line 2: {said}" in err and "nothing sent" in err and "Traceback" not in err
        with EmbeddedEventLog(log) as reader:
            assert sum(reader.end_offsets(["allocator.fills"]).values()) == 0


def test_serve_refuses_a_log_that_does_not_exist_instead_of_starting_a_new_book(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: `serve --log typo.sqlite` created the file and ran an empty book with fresh cash, deciding
    nothing, while the real book's proposals waited; every other command but init refused a missing log."""
    typo = tmp_path / "typo.sqlite"
    assert main(["serve", "--log", str(typo), "--duration", "0"]) == 2
    assert f"no event log at {typo}: create the book with `allocator init --log {typo}`" in capsys.readouterr().err
    assert not typo.exists()


def test_serve_warns_that_an_empty_agents_list_rejects_every_proposal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: `"agents": []` was accepted without comment, though it makes every proposal REJECTED
    UNKNOWN_AGENT (null is what accepts any agent)."""
    config = tmp_path / "book.json"
    config.write_text(json.dumps({"agents": [], "scenario_count": 300}), encoding="utf-8")
    log = ["--log", str(tmp_path / "log.sqlite")]
    assert main(["init", *log]) == 0
    capsys.readouterr()
    assert main(["serve", *log, "--config", str(config), "--duration", "0"]) == 0
    assert "agents is an empty list: every proposal will be REJECTED UNKNOWN_AGENT" in capsys.readouterr().err


def _commands_sent(log: Path) -> int:
    """How many records the book's control topic holds: what `control` sent."""
    from eventlog.embedded import EmbeddedEventLog

    with EmbeddedEventLog(log) as reader:
        return sum(reader.end_offsets(["allocator.control"]).values())


@pytest.mark.parametrize(
    ("pairs", "named"),
    [
        (["solver_revision=7"], "solver_revision: must be in [1, 6], got 7"),
        (["solver_revision=5.5"], "solver_revision: must be a whole number, got 5.5"),
        (["position_cap=-1"], "position_cap: must be in (0, 1], got -1.0"),
        (["position_cap=0.01", "scenario_count=0"], "scenario_count: must be in [1, 20000], got 0"),
        (["no_such_key=1"], "unknown configuration key(s): no_such_key"),
        (["operator_keys=1"], "operator_keys: set by the configuration only, never by SET_LIMITS"),
        (["max_undecided_proposals=10"], "max_undecided_proposals: set by the configuration only"),
        (["agent:bad id=1"], "agent:bad id: 'bad id' is not an agent id"),
        (["agent:x=2"], "agent:x: 1 adds the agent, 0 removes it; got 2.0"),
        (["min_window_s=5", "opportunity_window_s=4"], "min_window_s: must not exceed opportunity_window_s"),
    ],
)
def test_control_refuses_a_set_limits_no_configuration_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pairs: list[str], named: str
) -> None:
    """An outside probe: `control set-limits --set solver_revision=7` (or 5.5, position_cap=-1, an unknown or
    configuration-only key, a bad `agent:` key) printed "sent" and exited 0, and the book refused it with a governor
    event only `status` showed. A key or value the book refuses whatever its configuration is now a usage error
    naming the key with the book's own rule, and nothing is sent, even on a log with no decision yet; `--unchecked`
    sends it, and the book judges it."""
    path = tmp_path / "log.sqlite"
    log = ["--log", str(path)]
    assert main(["init", *log]) == 0
    capsys.readouterr()
    argv = ["control", "set-limits", *(f"--set={pair}" for pair in pairs), "--reason", "r", "--operator", "o", *log]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert f"allocator control: --set: {named}" in err
    assert "the book refuses this under any configuration, nothing sent" in err and "sent" not in out
    assert _commands_sent(path) == 0
    assert main([*argv, "--unchecked"]) == 0
    out = capsys.readouterr().out
    assert "sent SET_LIMITS" in out and "nor its limits against the configuration's rules: --unchecked" in out
    assert _commands_sent(path) == 1


@pytest.mark.parametrize("cycles", [1, 3])
@pytest.mark.parametrize("trust", ["read as written", "verified", "unsigned book"])
def test_control_judges_a_rule_between_keys_by_the_configuration_the_log_last_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trust: str, cycles: int
) -> None:
    """`min_window_s=20` is a valid value, but not on a book whose opportunity window is 10 s, and `agent:gamma=1`
    not on a book that accepts every agent: `control` judges them by the configuration the log last recorded (the
    last decision that records one: after cycle 1 the newest decision records none, and the check did nothing) and
    refuses them, nothing sent (saying so when the decisions were read unverified); where the decisions that verify
    may not be the book's newest (an unsigned book under --trusted-keys) it warns and sends, as it does for the
    operator keys. A set-limits that fits that configuration is sent; `--unchecked` sends any."""
    from allocator.service.keys import new_key_pair
    from tests.test_chain import configurations_recorded, serve_cycles

    new_key_pair(tmp_path / "alloc")
    config = tmp_path / "book.json"
    config.write_text(json.dumps({"scenario_count": 300, "opportunity_window_s": 10}), encoding="utf-8")
    path = tmp_path / "log.sqlite"
    log = ["--log", str(path)]
    signing = [] if trust == "unsigned book" else ["--signing-key", str(tmp_path / "alloc")]
    assert main(["init", *log, "--config", str(config)]) == 0
    serve_cycles(path, range(1, cycles + 1), {1: config}, signing)
    assert configurations_recorded(path) == [(1, True), *((cycle, False) for cycle in range(2, cycles + 1))]
    capsys.readouterr()
    trusted = [] if trust == "read as written" else ["--trusted-keys", str(tmp_path / "alloc")]
    control = ["control", "set-limits", "--reason", "r", "--operator", "o", *log, *trusted]
    recorded = (", under book main's configuration as the log last recorded it, in the decision of cycle 1 (a "
                "SET_LIMITS folded since may have changed it)")  # fmt: skip
    for bad, named in (
        ("min_window_s=20", "min_window_s: must not exceed opportunity_window_s"),
        ("agent:gamma=1", "agent:gamma: the book accepts every agent (agents is null)"),
    ):
        code = main([*control, "--set", bad])
        out, err = capsys.readouterr()
        assert f"--set: {named}" in err and recorded in err, err
        if trust == "unsigned book":
            assert code == 0 and "sent SET_LIMITS" in out
            assert "allocator control: warning: --set: " in err
            assert (
                "the book would refuse the command; sent anyway, since the log's newest decisions could not be " in err
            )
        else:
            assert code == 2 and "the book would refuse the command, nothing sent" in err and "sent" not in out
            assert ("read from the log's decisions unverified" in err) == (trust == "read as written")
            assert "--unchecked" in err
    refused = 2 if trust == "unsigned book" else 0
    assert _commands_sent(path) == refused
    assert main([*control, "--set", "min_window_s=5"]) == 0  # within the recorded window
    assert "allocator control: warning: --set" not in capsys.readouterr().err
    assert main([*control, "--set", "min_window_s=20", "--unchecked"]) == 0
    assert _commands_sent(path) == refused + 2


def test_init_with_a_configuration_says_it_records_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: `init --config FILE` validated the file and created its agents' topics, and a `serve` without
    --config then decided under the defaults, nothing said. init now says the book adopts a configuration only when
    `serve --config` runs; without --config it says nothing of one."""
    import json

    log = tmp_path / "log.sqlite"
    config = tmp_path / "book.json"
    config.write_text(json.dumps({"agents": ["alpha"], "position_cap": 0.01}), encoding="utf-8")
    assert main(["init", "--log", str(log), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "allocator.proposals.alpha" in out
    assert f"`allocator serve --config {config}` first runs (without --config, the defaults)" in out
    assert main(["init", "--log", str(tmp_path / "other.sqlite")]) == 0
    assert "serve --config" not in capsys.readouterr().out
