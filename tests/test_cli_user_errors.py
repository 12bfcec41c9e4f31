"""A user's mistake on the command line (a bad number, a path that cannot be read or written) is a usage error
naming the flag or the file, exit 2, before anything is sent or created: never a traceback, never a command
that runs for ever."""

from __future__ import annotations

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
        (["init", "--replication-factor", "0"], "--replication-factor"),
        (["status", "--decisions", "-3"], "--decisions"),
        (["allocate", "x.json", "--indent", "-5"], "--indent"),
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
        assert f"allocator audit: {report}: " in capsys.readouterr().err


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
    assert main(["tail", "governor", "--max", "1", "--timeout", "1", *log]) == 2
    assert "allocator init" in capsys.readouterr().err


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
    assert "the input holds no proposals; nothing sent" in capsys.readouterr().err
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
