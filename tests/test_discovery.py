"""Nothing else to know: the reading commands find an embedded log's one book themselves, list the books when
there are several, and answer a missing log, prefix or topic with a message and exit 2, never a traceback. The
demo's report shows the commands that audit and replay its logs, and they work as shown."""

from __future__ import annotations

import html
import shlex
from pathlib import Path

import pytest

from cli.main import main
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import Topics
from tests.test_config_on_log import CONFIG, decide, start, stop
from tests.test_service import TOPICS


def one_book(path: Path) -> None:
    svc = start(path, CONFIG)
    decide(path, svc, 0)
    decide(path, svc, 10)
    stop(svc)


def test_one_book_needs_no_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "log.sqlite"
    one_book(db)
    assert main(["audit", "--log", str(db), "--report", str(tmp_path / "a.json")]) == 0
    assert "2 decisions: 2 matched" in capsys.readouterr().out
    projection = f"sqlite:///{tmp_path / 'p.sqlite'}"
    assert main(["replay", "--log", str(db), "--database", projection]) == 0
    assert main(["project", "--log", str(db), "--database", f"sqlite:///{tmp_path / 'q.sqlite'}", "--once"]) == 0
    capsys.readouterr()
    assert main(["status", "--log", str(db), "--database", projection]) == 0
    out = capsys.readouterr().out
    assert f"{CONFIG.position_cap * CONFIG.initial_cash:,.0f}" in out or "cap" in out


def test_several_books_are_listed_with_the_flag_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "log.sqlite"
    one_book(db)
    with EmbeddedEventLog(db) as log:
        log.create_topics([*Topics("other").inputs, *Topics("other").outputs])
    for command in (["audit"], ["replay", "--database", f"sqlite:///{tmp_path / 'p.sqlite'}"], ["status"],
                    ["project", "--once", "--database", f"sqlite:///{tmp_path / 'q.sqlite'}"]):  # fmt: skip
        assert main([*command, "--log", str(db)]) == 2
        err = capsys.readouterr().err
        assert "several books" in err and f"--topic-prefix {TOPICS.prefix}" in err and "--topic-prefix other" in err
        assert "Traceback" not in err
    assert main(["audit", "--log", str(db), "--topic-prefix", TOPICS.prefix, "--report", str(tmp_path / "a.json")]) == 0


def test_a_missing_log_prefix_or_topic_is_a_message_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "log.sqlite"
    one_book(db)
    missing = tmp_path / "nowhere.sqlite"
    cases = [
        (["audit", "--log", str(missing)], "no event log at"),
        (["replay", "--log", str(missing), "--database", f"sqlite:///{tmp_path / 'p.sqlite'}"], "no event log at"),
        (["audit", "--log", str(db), "--topic-prefix", "nope"], f"it holds --topic-prefix {TOPICS.prefix}"),
        (["status", "--log", str(db), "--topic-prefix", "nope"], "no topics with prefix 'nope'"),
        (["project", "--log", str(db), "--topic-prefix", "nope", "--once"], "no topics with prefix 'nope'"),
    ]
    for argv, says in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, (argv, err)
    assert not missing.exists(), "a reading command created the log it was asked to read"


def test_the_demo_report_shows_commands_that_audit_and_replay_its_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "demo-report"
    assert main(["demo", "--out", str(report), "--steps", "30", "--scenario-count", "300"]) == 0
    summary = (report / "summary.txt").read_text(encoding="utf-8")
    commands = [line.strip() for line in summary.splitlines() if line.strip().startswith("allocator ")]
    assert [c.split()[1] for c in commands] == ["audit", "replay", "replay"]
    page = (report / "index.html").read_text(encoding="utf-8")
    for command in commands:
        assert html.escape(command) in page
    capsys.readouterr()
    for command in commands:  # exactly as shown: no other flag
        assert main(shlex.split(command)[1:]) == 0, command
    out = capsys.readouterr().out
    assert "0 mismatches" in out
