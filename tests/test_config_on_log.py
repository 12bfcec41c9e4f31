"""The configuration in force is on the log (docs/audit.md): a book's first decision records it, a restart takes it
from there, a different file takes effect on the next decision and says so, and SET_LIMITS still apply on top."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allocator.service.audit import audit_log
from allocator.service.loop import AllocatorService, group_of
from allocator.service.sequencer import NoConfigOnLog, canonical_config
from book.config import AllocatorConfig
from cli.main import main
from eventlog.embedded import EmbeddedEventLog
from schemas.events import Command, ControlCommand, Decision
from tests.test_service import TOPICS, T, codec, drain, produce, proposal, read

CONFIG = AllocatorConfig.from_mapping({"scenario_count": 300, "solver_time_limit_ms": 10_000, "initial_cash": 50_000.0})
OTHER = CONFIG.replace(position_cap=0.01)


def start(path: Path, config: AllocatorConfig | None, say: list[str] | None = None) -> AllocatorService:
    log = EmbeddedEventLog(path, group=group_of(TOPICS, "book1"))
    svc = AllocatorService(log, EmbeddedEventLog(path), codec, "book1", config, TOPICS,
                           say=(say.append if say is not None else lambda _: None))  # fmt: skip
    svc.start()
    return svc


def stop(svc: AllocatorService) -> None:
    svc.reader.close()
    svc.log.close()


def decide(path: Path, svc: AllocatorService, first: int, count: int = 6) -> list[Decision]:
    produce(path, TOPICS.proposals, [(codec.encode(proposal(first + i)), T + first + i) for i in range(count)])
    return drain(svc)


def decisions(path: Path) -> list[Decision]:
    return [d for d in read(path, TOPICS.decisions) if isinstance(d, Decision)]


def test_the_first_decision_records_the_configuration_and_a_restart_without_one_adopts_it(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    svc = start(db, CONFIG)
    decide(db, svc, 0)
    decide(db, svc, 10)
    stop(svc)
    first, second = decisions(db)
    assert first.config == canonical_config(CONFIG)
    assert json.loads(first.config) == CONFIG.to_mapping()
    assert second.config is None
    assert first.config_hash == CONFIG.config_hash

    said: list[str] = []
    again = start(db, None, said)  # no file: the log's configuration, initial cash included
    try:
        assert again.state.portfolio.config == CONFIG
        assert again.state.cycle == 2
        [third] = decide(db, again, 20)
    finally:
        stop(again)
    assert third.config is None and third.config_hash == CONFIG.config_hash
    assert not [line for line in said if "hash" in line]

    same = start(db, CONFIG)  # the same file: nothing recorded
    try:
        [fourth] = decide(db, same, 30)
    finally:
        stop(same)
    assert fourth.config is None

    with EmbeddedEventLog(db) as reader:
        report = audit_log(reader, codec, TOPICS)  # no configuration given: the log's
    assert [f.verdict for f in report.findings] == ["MATCH"] * 4


def test_a_restart_with_another_file_records_it_says_so_and_the_audit_follows(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    svc = start(db, CONFIG)
    decide(db, svc, 0)
    stop(svc)

    said: list[str] = []
    other = start(db, OTHER, said)
    try:
        [changed] = decide(db, other, 10)
        [after] = decide(db, other, 20)
    finally:
        stop(other)
    assert f"the log ran with hash {CONFIG.config_hash[:12]}, your file has {OTHER.config_hash[:12]}" in "\n".join(said)
    assert "the file's changes take effect now (position_cap;" in "\n".join(said)
    assert changed.config == canonical_config(OTHER) and changed.config_hash == OTHER.config_hash
    assert after.config is None and after.config_hash == OTHER.config_hash

    with EmbeddedEventLog(db) as reader:
        report = audit_log(reader, codec, TOPICS)
    assert [f.verdict for f in report.findings] == ["MATCH"] * 3

    # The CLI audits with the log's configuration; a file only cross-checks it.
    other_file = tmp_path / "other.json"
    other_file.write_text(json.dumps({"scenario_count": 300}), encoding="utf-8")
    code = main(["audit", "--log", str(db), "--topic-prefix", TOPICS.prefix, "--config", str(other_file),
                 "--report", str(tmp_path / "audit.json")])  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "audit.json").read_text(encoding="utf-8"))["matched"] == 3


def _tightened(db: Path) -> tuple[Decision, AllocatorConfig]:
    """A book started with CONFIG whose second decision folds an operator's SET_LIMITS position_cap 0.005."""
    svc = start(db, CONFIG)
    decide(db, svc, 0)
    command = ControlCommand("c1", "risk", Command.SET_LIMITS, "tighter", {"position_cap": 0.005}, T + 100)
    produce(db, TOPICS.control, [(codec.encode(command), T + 100)])
    [limited] = decide(db, svc, 10)
    stop(svc)
    return limited, CONFIG.replace(position_cap=0.005)


def _restart(db: Path, config: AllocatorConfig | None, in_force: AllocatorConfig, first: int,
             said: list[str] | None = None) -> Decision:  # fmt: skip
    """Start on `db` with `config` (None: the log's), check the configuration in force, decide one cycle, stop."""
    svc = start(db, config, said)
    try:
        assert svc.state.portfolio.config == in_force
        [decided] = decide(db, svc, first)
    finally:
        stop(svc)
    return decided


def test_set_limits_apply_on_top_of_the_recorded_configuration(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    limited, tighter = _tightened(db)
    assert limited.config is None and limited.config_hash == tighter.config_hash

    next_one = _restart(db, None, tighter, 20)  # the log's configuration, with the operator's limits on top
    assert next_one.config is None and next_one.config_hash == tighter.config_hash
    with EmbeddedEventLog(db) as reader:
        report = audit_log(reader, codec, TOPICS)
    assert [f.verdict for f in report.findings] == ["MATCH"] * 3


def test_a_restart_with_the_book_s_own_file_keeps_the_operators_limits(tmp_path: Path) -> None:
    """An outside probe: after a SET_LIMITS tightened position_cap to 0.005, `serve --config book.json` (the file the
    book started with) put 0.02 back, and a file that changed one other key dropped an agent an operator had added.
    The file's own changes take effect; every other key keeps what operators set (rules.md §7.7)."""
    db = tmp_path / "log.sqlite"
    _, tighter = _tightened(db)
    said: list[str] = []
    kept = _restart(db, CONFIG, tighter, 20, said)  # the book's own file
    assert kept.config is None and kept.config_hash == tighter.config_hash
    assert "the limits operators set since stay in force (position_cap)" in "\n".join(said)

    said.clear()
    edited = CONFIG.replace(cvar_limit=0.04)  # the operator's file changes another key
    merged = _restart(db, edited, tighter.replace(cvar_limit=0.04), 30, said)
    assert merged.config_hash == tighter.replace(cvar_limit=0.04).config_hash
    text = "\n".join(said)
    assert "the file's changes take effect now (cvar_limit;" in text and "stay in force (position_cap)" in text
    with EmbeddedEventLog(db) as reader:
        report = audit_log(reader, codec, TOPICS)
    assert [f.verdict for f in report.findings] == ["MATCH"] * 4


def test_an_empty_log_without_a_file_records_the_defaults(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    svc = start(db, None)
    decide(db, svc, 0)
    stop(svc)
    [first] = decisions(db)
    assert first.config == canonical_config(AllocatorConfig())


def test_a_log_without_a_recorded_configuration_needs_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Logs written before wire version 2 record none: serve and audit then need --config (exit 2 without)."""
    import dataclasses

    db = tmp_path / "log.sqlite"
    svc = start(db, CONFIG)
    decide(db, svc, 0)
    stop(svc)
    old_style = tmp_path / "old.sqlite"
    [first] = decisions(db)
    with EmbeddedEventLog(old_style) as log:
        log.create_topics([*TOPICS.inputs, *TOPICS.outputs])
    produce(old_style, TOPICS.proposals, [(codec.encode(proposal(i)), T + i) for i in range(6)])
    produce(old_style, TOPICS.decisions, [(codec.encode(dataclasses.replace(first, config=None)), T + 1)])
    with EmbeddedEventLog(old_style) as reader, pytest.raises(NoConfigOnLog):
        audit_log(reader, codec, TOPICS)
    for command in (["audit", "--report", str(tmp_path / "a.json")], ["serve", "--book", "book1", "--max-cycles", "1"]):
        code = main([*command, "--log", str(old_style), "--topic-prefix", TOPICS.prefix])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "--config" in err and "Traceback" not in err


def test_a_log_whose_first_decision_is_gone_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An embedded log whose first decision was deleted (anyone who can write the file can) holds no configuration
    either: serve named the next decision as "written before wire version 2". It now says the book's first
    decision is missing, and still needs --config (exit 2)."""
    import sqlite3

    db = tmp_path / "log.sqlite"
    svc = start(db, CONFIG)
    for first in (0, 10):
        decide(db, svc, first)
    stop(svc)
    second = decisions(db)[1].decision_id
    with sqlite3.connect(db) as connection:
        connection.execute('DELETE FROM records WHERE topic = ? AND "offset" = 0', (TOPICS.decisions,))
    code = main(["serve", "--book", "book1", "--log", str(db), "--topic-prefix", TOPICS.prefix, "--max-cycles", "3"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"no decision before {second} (cycle 2) is on the log" in err
    assert "written before wire version 2" not in err and "--config" in err and "Traceback" not in err


def _set_first_config(db: Path, text: str) -> None:
    """Rewrite the configuration the first decision records, in place in the embedded log, as anyone who can write
    the file could (the book does not sign)."""
    import dataclasses
    import sqlite3

    where = 'WHERE topic = ? AND "offset" = 0'
    with sqlite3.connect(db) as connection:
        (value,) = connection.execute(f"SELECT value FROM records {where}", (TOPICS.decisions,)).fetchone()
        first = codec.decode(value)
        assert isinstance(first, Decision)
        edited = dataclasses.replace(first, config=text)
        connection.execute(f"UPDATE records SET value = ? {where}", (codec.encode(edited), TOPICS.decisions))


@pytest.mark.parametrize(
    "text",
    [
        canonical_config(CONFIG).replace(f'"solver_revision":{CONFIG.solver_revision}', '"solver_revision":99'),
        canonical_config(CONFIG).replace('"solver_work_limit":40000', '"solver_work_limit":1000000000'),
        '{"position_cap": "lots"}',
    ],
    ids=["revision-99", "work-limit-out-of-range", "garbage"],
)
def test_an_unreadable_configuration_on_the_first_decision_is_a_finding_on_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """An outside probe: on a book that does not sign, a first decision whose recorded configuration cannot be read
    stopped the audit with exit 2 and no report, saying that decision 2 "records no configuration (written before
    wire version 2)": the wrong decision, and the wrong cause. The chain's verification refuses the record as
    UNDECODABLE, and the audit now reports it so at its offset (exit 1), as on a signed book; the decisions after it
    are named as not re-derived, and --config re-runs them."""
    db = tmp_path / "log.sqlite"
    svc = start(db, CONFIG)
    for first in (0, 10, 20):
        decide(db, svc, first)
    stop(svc)
    first_id = decisions(db)[0].decision_id
    assert text != canonical_config(CONFIG)
    _set_first_config(db, text)

    report = tmp_path / "audit.json"
    code = main(["audit", "--log", str(db), "--topic-prefix", TOPICS.prefix, "--report", str(report)])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "Traceback" not in out + err
    findings = json.loads(report.read_text(encoding="utf-8"))["findings"]
    assert [(f["offset"], f["verdict"]) for f in findings] == [
        (0, "UNDECODABLE"), (1, "CYCLE_GAP"), (1, "NOT_RE_DERIVED"), (2, "NOT_RE_DERIVED")
    ]  # fmt: skip
    assert findings[0]["decision_id"] == first_id
    assert "Decision.config is not a configuration" in findings[0]["problems"][0]
    assert f"{first_id} (cycle 1) at {TOPICS.decisions}/0/0 records a configuration that cannot be read" in err
    assert "written before wire version 2" not in err and "--config" in err

    given = tmp_path / "config.json"
    given.write_text(json.dumps(CONFIG.to_mapping()), encoding="utf-8")
    code = main(["audit", "--log", str(db), "--topic-prefix", TOPICS.prefix, "--report", str(report), "--config",
                 str(given)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1, err
    verdicts = [f["verdict"] for f in json.loads(report.read_text(encoding="utf-8"))["findings"]]
    assert verdicts[:2] == ["UNDECODABLE", "CYCLE_GAP"]
    assert "NOT_RE_DERIVED" not in verdicts and len(verdicts) == 4  # re-run (without the state the first one left)


def test_status_names_the_solver_revision_in_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: status showed only the configuration's hash, so which solver decides a book (it keeps the
    revision its log records, rules.md §4.8) could be read only from a decision's recorded configuration. It now
    says, and follows a SET_LIMITS of the revision."""
    log = ["--log", str(tmp_path / "log.sqlite")]
    db = ["--database", f"sqlite:///{tmp_path / 'projection.sqlite'}"]
    config = tmp_path / "book.json"
    config.write_text(json.dumps({"scenario_count": 300, "solver_revision": 5}), encoding="utf-8")
    examples = Path(__file__).resolve().parent.parent / "examples" / "proposals.json"
    assert main(["init", *log, "--config", str(config)]) == 0
    assert main(["propose", str(examples), *log]) == 0
    assert main(["serve", *log, "--config", str(config), "--max-cycles", "1", "--duration", "60"]) == 0
    assert main(["project", *log, *db, "--once"]) == 0
    capsys.readouterr()
    assert main(["status", *log, *db]) == 0
    assert "solver: revision 5, a work budget of 40,000 units a decision" in capsys.readouterr().out
    assert main(["control", "set-limits", "--set", "solver_revision=6", "--reason", "r", "--operator", "o", *log]) == 0
    assert main(["serve", *log, "--max-cycles", "2", "--duration", "60"]) == 0  # cycle 2 folds the command
    assert main(["project", *log, *db, "--once"]) == 0
    capsys.readouterr()
    assert main(["status", *log, *db, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["configuration"]["solver_revision"], shown["configuration"]["solver_work_limit"]) == (6, 40_000)


def test_status_cross_checks_a_file_against_the_configuration_in_force_set_limits_included(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status compared --config with the configuration the log last recorded, so after a SET_LIMITS it named one
    hash in its warning and another as the log's: it compares the one in force, the one it shows."""
    log = ["--log", str(tmp_path / "log.sqlite")]
    db = ["--database", f"sqlite:///{tmp_path / 'projection.sqlite'}"]
    config = tmp_path / "book.json"
    config.write_text(json.dumps({"scenario_count": 300}), encoding="utf-8")
    examples = Path(__file__).resolve().parent.parent / "examples" / "proposals.json"
    assert main(["init", *log, "--config", str(config)]) == 0
    assert main(["propose", str(examples), *log]) == 0
    assert main(["serve", *log, "--config", str(config), "--max-cycles", "1", "--duration", "60"]) == 0
    assert main(["control", "set-limits", "--set", "position_cap=0.01", "--reason", "r", "--operator", "o", *log]) == 0
    assert main(["serve", *log, "--max-cycles", "2", "--duration", "60"]) == 0
    assert main(["project", *log, *db, "--once"]) == 0
    in_force = AllocatorConfig.from_mapping({"scenario_count": 300, "position_cap": 0.01}).config_hash[:12]
    capsys.readouterr()
    assert main(["status", *log, *db, "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert f"the log ran with hash {in_force} (in force now, SET_LIMITS included)" in err
    assert f"configuration: the log's (hash {in_force})" in out
    (tmp_path / "now.json").write_text(json.dumps({"scenario_count": 300, "position_cap": 0.01}), encoding="utf-8")
    assert main(["status", *log, *db, "--config", str(tmp_path / "now.json")]) == 0
    assert "the log ran with hash" not in capsys.readouterr().err  # the file is the configuration in force
