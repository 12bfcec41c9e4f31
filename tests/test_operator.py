"""The operator's console end to end, on the embedded default and on Kafka + PostgreSQL: `allocator control`
publishes, `allocator serve` acts on it, `allocator project` records it, `allocator status` shows who and why."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from cli.main import main
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import TopicPartition, Topics
from schemas.codec import SingleObjectCodec
from schemas.events import Decision
from tests.conftest import DbSchema


def _console(capsys: pytest.CaptureFixture[str], log: list[str], db: list[str]) -> None:
    """halt -> the next decision is PAUSED by the operator; resume -> ACTIVE again; reset when armed -> no change."""

    def run(*argv: str) -> str:
        capsys.readouterr()
        assert main(list(argv)) == 0, argv
        return capsys.readouterr().out

    def status() -> dict[str, object]:
        result: dict[str, object] = json.loads(run("status", *db, "--json"))
        return result

    run("init", *log)
    sent = run("control", "halt", "--reason", "suspicious fills on venue B", "--operator", "alice", *log)
    assert "sent HALT" in sent
    run("serve", "--book", "ops", *log, "--max-cycles", "1", "--duration", "60")
    run("project", *log, *db, "--once")
    state = status()
    assert state["governor_state"] == "PAUSED"
    operator = state["governors"]["OPERATOR"]  # type: ignore[index]
    assert operator["new_state"] == "PAUSED" and operator["cause"] == "alice: suspicious fills on venue B"
    assert state["decisions"][0]["governor_state"] == "PAUSED"  # type: ignore[index]
    text = run("status", *db)
    assert "governor PAUSED" in text and "HALT" in text and "by alice: suspicious fills on venue B" in text

    run("control", "resume", "--reason", "venue B checked", "--operator", "bob", *log)
    run("control", "reset-kill-switch", "--reason", "nothing to reset", "--operator", "bob", *log)
    run("serve", "--book", "ops", *log, "--max-cycles", "2", "--duration", "60")
    run("project", *log, *db, "--once")
    state = status()
    assert state["governor_state"] == "ACTIVE"
    assert state["governors"]["OPERATOR"]["cause"] == "resumed by bob: venue B checked"  # type: ignore[index]
    assert "KILL_SWITCH" not in state["governors"]  # type: ignore[operator]  # armed: a reset changes nothing
    commands = [(c["command"], c["operator_id"], c["reason"]) for c in state["commands"]]  # type: ignore[attr-defined]
    assert commands == [
        ("RESET_KILL_SWITCH", "bob", "nothing to reset"),
        ("RESUME", "bob", "venue B checked"),
        ("HALT", "alice", "suspicious fills on venue B"),
    ]


def test_operator_console_on_the_embedded_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = ["--log", str(tmp_path / "log.sqlite"), "--topic-prefix", "ops"]
    _console(capsys, log, ["--database", f"sqlite:///{tmp_path / 'projection.sqlite'}"])


@pytest.mark.kafka
@pytest.mark.postgres
def test_operator_console_on_kafka_and_postgres(
    kafka_bootstrap: str, db_schema: DbSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    log = ["--kafka", kafka_bootstrap, "--topic-prefix", f"ops-{uuid.uuid4().hex[:8]}"]
    _console(capsys, log, ["--database", db_schema.url, "--schema", db_schema.name])


def test_control_refuses_a_command_without_who_or_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = ["--log", str(tmp_path / "log.sqlite")]
    assert main(["control", "halt", "--reason", "  ", "--operator", "alice", *log]) == 2
    assert "reason" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (["halt", "--reason", "x" * 4097, "--operator", "alice"], "reason: 4097 characters, at most 4096"),
        (["halt", "--reason", "drill", "--operator", "o" * 129], "operator_id: 129 characters, at most 128"),
        (
            ["set-limits", "--reason", "r", "--operator", "alice", *(f"--set=agent:a{i}=1" for i in range(65))],
            "limits: 65 keys, at most 64",
        ),
    ],
    ids=["reason", "operator", "limits"],
)
def test_control_refuses_a_command_the_allocator_would_dead_letter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: list[str], named: str
) -> None:
    """An outside probe: a HALT whose reason was over 4,096 characters printed "sent" and exited 0; the allocator
    made it a dead letter and the book stayed ACTIVE. The command line now holds a command to the bounds the fold
    does and refuses it, naming the field, with nothing written."""
    log = str(tmp_path / "log.sqlite")
    assert main(["init", "--log", log]) == 0
    capsys.readouterr()
    assert main(["control", *fields, "--log", log]) == 2
    captured = capsys.readouterr()
    assert named in captured.err and "sent" not in captured.out
    with EmbeddedEventLog(log) as reader:
        assert reader.end_offsets([Topics("allocator").control]) == {TopicPartition("allocator.control", 0): 0}


def test_status_says_when_there_is_no_projection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--database", f"sqlite:///{tmp_path / 'none.sqlite'}"]) == 1
    assert "has `allocator project` run?" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite").exists()  # reading created an empty file there


@pytest.mark.kafka
@pytest.mark.postgres
def test_status_reads_the_book_s_configuration_from_the_broker_the_environment_names(
    kafka_bootstrap: str,
    kafka_prefix: str,
    db_schema: DbSchema,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)  # no --kafka: as the README's commands run
    monkeypatch.setenv("ALLOCATOR_TOPIC_PREFIX", kafka_prefix)
    config = tmp_path / "book.json"
    config.write_text(json.dumps({"kill_switch_drawdown": 0.2, "scenario_count": 300}), encoding="utf-8")
    db = ["--database", db_schema.url, "--schema", db_schema.name]
    assert main(["init"]) == 0
    assert main(["control", "halt", "--reason", "check", "--operator", "alice"]) == 0
    assert main(["serve", "--config", str(config), "--max-cycles", "1", "--duration", "60"]) == 0
    assert main(["project", *db, "--once"]) == 0
    capsys.readouterr()
    assert main(["status", *db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kill_switch_drawdown"] == 0.2  # the log's, not the default 0.15
    # a broker without the book's topics: the defaults, and stderr says why
    monkeypatch.setenv("ALLOCATOR_TOPIC_PREFIX", f"nobook-{uuid.uuid4().hex[:8]}")
    assert main(["status", *db, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["kill_switch_drawdown"] == 0.15
    assert "the caps shown are the defaults'" in err and "does not exist" in err


@pytest.mark.kafka
def test_status_with_credentials_the_broker_refuses_is_an_error_not_the_defaults(
    kafka_bootstrap: str,
    kafka_admin_properties: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An outside probe: `status --kafka-config wrong.properties` exited 0 showing the default caps, as if the book
    had none of its own; credentials given on the command line name the log as much as --kafka does."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    wrong = {**kafka_admin_properties, "sasl.password": "not-" + kafka_admin_properties["sasl.password"][:8]}
    properties = tmp_path / "wrong.properties"
    properties.write_text("".join(f"{key}={value}\n" for key, value in wrong.items()), encoding="utf-8")
    db = ["--database", f"sqlite:///{tmp_path / 'p.sqlite'}"]
    assert main(["db", "upgrade", *db]) == 0
    capsys.readouterr()
    assert main(["status", *db, "--kafka-config", str(properties)]) == 2
    out, err = capsys.readouterr()
    assert "cannot read the configuration from the log" in err and out == ""
    assert kafka_admin_properties["sasl.password"] not in err


def test_status_takes_the_book_s_state_from_its_decisions_not_from_forged_governor_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Governor events are not signed: one appended by anyone who can write the log (OPERATOR PAUSED -> ACTIVE)
    made `status` show a paused book ACTIVE. The state is now the last decision's, and the claim is named."""
    import time

    from eventlog.embedded import EmbeddedEventLog
    from schemas.codec import SingleObjectCodec
    from schemas.events import Governor, GovernorEvent

    path = tmp_path / "log.sqlite"
    log, db = ["--log", str(path), "--topic-prefix", "ops"], ["--database", f"sqlite:///{tmp_path / 'p.sqlite'}"]
    for argv in (["init", *log], ["control", "halt", "--reason", "venue B", "--operator", "alice", *log],
                 ["serve", "--book", "ops", *log, "--max-cycles", "1", "--duration", "60"]):  # fmt: skip
        assert main(argv) == 0, argv
    forged = GovernorEvent("ops.ops-0000000001-g9", "ops", Governor.OPERATOR, "PAUSED", "ACTIVE",
                           "resumed by mallory", None, None, None, int(time.time() * 1000) + 1_000)  # fmt: skip
    with EmbeddedEventLog(path) as writer:
        writer.produce("ops.governor", SingleObjectCodec().encode(forged))
        writer.flush()
    assert main(["project", *log, *db, "--once"]) == 0
    capsys.readouterr()
    assert main(["status", *db, "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert (state["governor_state"], state["governor_events_claim"]) == ("PAUSED", "ACTIVE")
    assert main(["status", *db]) == 0
    text = capsys.readouterr().out
    assert "governor PAUSED" in text and "governor events add up to ACTIVE" in text and "not signed" in text


def _served_once(tmp_path: Path) -> tuple[Path, list[str], list[str], Decision]:
    """An embedded book served one cycle of the example proposals: (its log, `--log` and `--database` options for a
    projection beside it, its first decision)."""
    path = tmp_path / "log.sqlite"
    log, db = ["--log", str(path)], ["--database", f"sqlite:///{tmp_path / 'p.sqlite'}"]
    proposals = str(Path(__file__).parent.parent / "examples" / "proposals.json")
    serve = ["serve", *log, "--max-cycles", "1", "--duration", "60"]
    for argv in (["init", *log], ["propose", proposals, *log], serve):
        assert main(argv) == 0, argv
    with EmbeddedEventLog(path) as reader:
        reader.assign([Topics().decisions])
        [record] = reader.poll(max_records=10, timeout_s=1.0)
    first = SingleObjectCodec().decode(record.value or b"")
    assert isinstance(first, Decision)
    return path, log, db, first


def test_a_decision_forged_on_a_proposals_topic_neither_replaces_the_genuine_one_nor_locks_the_projection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe (an agent on a secured broker, on its own proposals topic): a forged HALTED decision for the
    next cycle took that cycle's row in the projection, and then `project` and `status` refused the projection for
    good ("holds decisions of ...proposals"), and a replay copied it again. It is now a dead letter of the topic."""
    import dataclasses

    from schemas.events import GovernorState

    path, log, db, genuine = _served_once(tmp_path)
    with EmbeddedEventLog(path) as writer:
        forged = dataclasses.replace(genuine, decision_id="allocator.main-0000000002", cycle=2,
                                     governor_state=GovernorState.HALTED, equity=1.0)  # fmt: skip
        writer.produce("allocator.proposals", SingleObjectCodec().encode(forged))
        writer.flush()
    assert main(["project", *log, *db, "--once"]) == 0
    assert main(["control", "halt", "--reason", "r", "--operator", "o", *log]) == 0  # input, so a cycle 2 is decided
    assert main(["serve", *log, "--max-cycles", "2", "--duration", "60"]) == 0
    assert main(["project", *log, *db, "--once"]) == 0
    capsys.readouterr()
    assert main(["status", *db, *log, "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert [(d["cycle"], d["equity"]) for d in state["decisions"]][:2] == [(2, genuine.equity), (1, genuine.equity)]
    assert state["governor_state"] == "PAUSED"  # the operator's halt, decided in the genuine cycle 2


def test_status_refuses_a_projection_of_another_book_s_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: `status --log beta.sqlite --database <alpha's projection>` printed book alpha's state next to
    book beta's configuration and chain, exit 0. Both logs use the default topics, so only the decision at each
    position tells them apart."""
    proposals = str(Path(__file__).parent.parent / "examples" / "proposals.json")
    for book in ("alpha", "beta"):
        log = ["--log", str(tmp_path / f"{book}.sqlite")]
        for argv in (["init", *log], ["propose", proposals, *log],
                     ["serve", "--book", book, *log, "--max-cycles", "1", "--duration", "60"]):  # fmt: skip
            assert main(argv) == 0, argv
    db = ["--database", f"sqlite:///{tmp_path / 'alpha-projection.sqlite'}"]
    assert main(["project", "--log", str(tmp_path / "alpha.sqlite"), *db, "--once"]) == 0
    capsys.readouterr()
    assert main(["status", "--log", str(tmp_path / "alpha.sqlite"), *db]) == 0
    assert "book alpha" in capsys.readouterr().out
    assert main(["status", "--log", str(tmp_path / "beta.sqlite"), *db]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "the projection has allocator.alpha-0000000001 at allocator.decisions[0]@0" in err
    assert "but the log has allocator.beta-0000000001 there" in err
    # another book's topics altogether
    other = ["--log", str(tmp_path / "gamma.sqlite"), "--topic-prefix", "gamma"]
    for argv in (["init", *other], ["propose", proposals, *other],
                 ["serve", "--book", "gamma", *other, "--max-cycles", "1", "--duration", "60"]):  # fmt: skip
        assert main(argv) == 0, argv
    capsys.readouterr()
    assert main(["status", *other, *db]) == 2
    assert "the projection was made from allocator.decisions, but the log's decisions are on gamma.decisions" in (
        capsys.readouterr().err
    )


def test_status_refuses_a_projection_of_another_log_of_a_book_of_the_same_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: two logs of a book named `main` have the same decision ids at the same positions, so a
    projection of one passed for the other's; and a projection ahead of the log it was checked against passed too."""
    import shutil

    examples = Path(__file__).parent.parent / "examples"
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    for log, proposals in ((one, examples / "proposals.json"), (two, examples / "proposals.json")):
        for argv in (["init", "--log", str(log)], ["propose", str(proposals), "--log", str(log)],
                     ["serve", "--log", str(log), "--max-cycles", "1", "--duration", "60"]):  # fmt: skip
            assert main(argv) == 0, argv
    early = tmp_path / "early.sqlite"
    shutil.copy(one, early)  # the log after its first decision
    for log in (one, two):
        assert main(["control", "halt", "--reason", "r", "--operator", "o", "--log", str(log)]) == 0
        assert main(["serve", "--log", str(log), "--max-cycles", "2", "--duration", "60"]) == 0
    db = ["--database", f"sqlite:///{tmp_path / 'one-projection.sqlite'}"]
    assert main(["project", "--log", str(one), *db, "--once"]) == 0
    capsys.readouterr()
    assert main(["status", "--log", str(one), *db]) == 0
    assert main(["status", "--log", str(two), *db]) == 2  # created_at differs: another decision under the same id
    assert "another log of a book of the same name" in capsys.readouterr().err
    assert main(["status", "--log", str(early), *db]) == 2
    assert "past the end of the log's decisions" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("statement", "said"),
    [
        (
            "UPDATE decisions SET governor_state = 'ACTIVE' WHERE cycle = 2",
            "has governor_state 'ACTIVE', the log's 'PAUSED'",
        ),
        ("UPDATE decisions SET equity = equity * 2 WHERE cycle = 2", "has equity"),
        ("INSERT INTO decisions", "where the log holds no decision"),
    ],
    ids=["governor", "equity", "a row of no record"],
)
def test_status_refuses_a_projection_changed_outside_the_projector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], statement: str, said: str
) -> None:
    """An outside probe with write access to the projection database: setting a PAUSED book's decision row to
    ACTIVE (and deleting the halt's event), or inserting a row for cycle 99 at offset -1, made `status
    --trusted-keys` show the book ACTIVE, exit 0, no word. Status checks what it shows of a decision against the
    log's record at the row's position."""
    import sqlite3

    path, projection = tmp_path / "log.sqlite", tmp_path / "p.sqlite"
    log, db = ["--log", str(path)], ["--database", f"sqlite:///{projection}"]
    proposals = str(Path(__file__).parent.parent / "examples" / "proposals.json")
    for argv in (["init", *log], ["propose", proposals, *log], ["serve", *log, "--max-cycles", "1", "--duration", "60"],
                 ["control", "halt", "--reason", "r", "--operator", "o", *log],
                 ["serve", *log, "--max-cycles", "2", "--duration", "60"],
                 ["project", *log, *db, "--once"]):  # fmt: skip
        assert main(argv) == 0, argv
    capsys.readouterr()
    assert main(["status", *log, *db]) == 0
    assert "governor PAUSED" in capsys.readouterr().out
    with sqlite3.connect(projection) as conn:
        if statement.startswith("INSERT"):  # a copy of the newest row, as cycle 99 at offset -1
            columns = [r[1] for r in conn.execute("PRAGMA table_info(decisions)")]
            picked = ", ".join({"cycle": "99", "log_offset": "-1", "decision_id": "decision_id || '-x'"}.get(c, c)
                               for c in columns)  # fmt: skip
            statement = f"INSERT INTO decisions SELECT {picked} FROM decisions WHERE cycle = 2"
        assert conn.execute(statement).rowcount == 1
    assert main(["status", *log, *db]) == 2
    err = capsys.readouterr().err
    assert said in err and "name the log and the projection of one book" in err, err


def test_status_says_when_the_projection_is_behind_its_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: with the projector stopped, `status --log` read three decisions from the log and showed the
    projection as of cycle 2, with no word that it was stale."""
    path = tmp_path / "log.sqlite"
    log, db = ["--log", str(path)], ["--database", f"sqlite:///{tmp_path / 'p.sqlite'}"]
    proposals = str(Path(__file__).parent.parent / "examples" / "proposals.json")
    for argv in (["init", *log], ["propose", proposals, *log], ["serve", *log, "--max-cycles", "1", "--duration", "60"],
                 ["project", *log, *db, "--once"], ["control", "halt", "--reason", "r", "--operator", "o", *log],
                 ["serve", *log, "--max-cycles", "2", "--duration", "60"]):  # fmt: skip
        assert main(argv) == 0, argv
    capsys.readouterr()
    assert main(["status", *log, *db]) == 0
    assert "the projection is behind its log, which holds decisions up to cycle 2" in capsys.readouterr().out
    assert main(["project", *log, *db, "--once"]) == 0
    capsys.readouterr()
    assert main(["status", *log, *db]) == 0
    assert "behind its log" not in capsys.readouterr().out


def test_a_decision_the_projector_dead_lettered_does_not_keep_the_projection_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: a forged decision appended to an unsigned book's log (equity NaN, cycle 2), which the
    projector dead-letters as not projectable, kept `status` saying "the projection is behind its log, which holds
    decisions up to cycle 2" however often the projector ran. Status now leaves out the decisions the projection
    dead-lettered (a genuine decision not yet projected is still said: the test above)."""
    import dataclasses
    import math

    path, log, db, first = _served_once(tmp_path)
    with EmbeddedEventLog(path) as writer:
        forged = dataclasses.replace(first, decision_id=f"{first.decision_id}-x", cycle=2, equity=math.nan)
        writer.produce(Topics().decisions, SingleObjectCodec().encode(forged), key=first.book_id.encode())
        writer.flush()
    assert main(["project", *log, *db, "--once"]) == 0
    capsys.readouterr()
    assert main(["status", *log, *db]) == 0
    out = capsys.readouterr().out
    assert "behind its log" not in out and "as of cycle 1" in out
