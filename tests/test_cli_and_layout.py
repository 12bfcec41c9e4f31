"""The console script and the files a user runs first: `allocator --help`, the demo, docker-compose.yml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli.main import build_parser, main, subcommands
from eventlog.kafka_properties import client_config

ROOT = Path(__file__).resolve().parent.parent


def _subcommands() -> set[str]:
    return set(subcommands(build_parser()))


def test_help_lists_the_subcommands() -> None:
    result = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, check=True)
    for name in _subcommands():
        assert name in result.stdout
    assert {"demo", "db", "schemas"} <= _subcommands()


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_db_upgrade_without_a_database_says_what_is_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["db", "upgrade"]) == 2
    assert "DATABASE_URL" in capsys.readouterr().err


def test_db_upgrade_says_which_revision_it_reached(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It said "at head" whatever happened: on a new database, and after `--revision base` had changed nothing."""
    from projections.migrate import current_revision, newest_revision

    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    newest = newest_revision()
    assert main(["db", "upgrade", "--database", url, "--revision", "0003"]) == 0
    assert capsys.readouterr().out.strip() == "projection schema is at 0003; was empty"
    assert main(["db", "upgrade", "--database", url]) == 0
    assert capsys.readouterr().out.strip() == f"projection schema is at {newest} (the newest); was 0003"
    assert main(["db", "upgrade", "--database", url]) == 0
    assert capsys.readouterr().out.strip() == f"projection schema is at {newest} (the newest); already there"
    # Going back is refused by name, and changes nothing.
    assert main(["db", "upgrade", "--database", url, "--revision", "0003"]) == 2
    err = capsys.readouterr().err
    assert f"is at {newest}, past 0003: db upgrade never goes back" in err
    assert current_revision(url) == newest
    # A database a newer release migrated: named, not a traceback.
    import sqlite3

    with sqlite3.connect(tmp_path / "p.sqlite") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    assert main(["db", "upgrade", "--database", url]) == 2
    assert "is at 9999, a revision this release does not know" in capsys.readouterr().err


def test_db_upgrade_names_a_revision_that_does_not_exist_and_a_database_it_cannot_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both ended on an Alembic or SQLAlchemy traceback."""
    from projections.migrate import newest_revision

    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    for revision in ("zzz", "base"):
        assert main(["db", "upgrade", "--database", url, "--revision", revision]) == 2
        err = capsys.readouterr().err
        assert f"--revision {revision!r}: no such migration (the newest is {newest_revision()}" in err
        assert "Traceback" not in err
    assert not (tmp_path / "p.sqlite").exists()
    log = tmp_path / "log.sqlite"
    assert main(["init", "--log", str(log)]) == 0
    before = log.read_bytes()
    capsys.readouterr()
    assert main(["db", "upgrade", "--database", f"sqlite:///{log}"]) == 2  # it added 13 tables to the event log
    assert "holds tables that are no projection's" in capsys.readouterr().err and log.read_bytes() == before
    assert main(["db", "upgrade", "--database", f"sqlite:///{tmp_path / 'no-such-folder' / 'p.sqlite'}"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "allocator db upgrade: cannot migrate the projection database (unable to open database file); nothing changed"
    )


def _check_report(out: str, report: Path, *, governors: bool = True) -> None:
    assert "final equity" in out and "allocator" in out and "naive" in out
    assert "restart: the state rebuilt from the allocator's log matches the live one" in out
    assert "audit: " in out and " 0 mismatches" in out
    page = (report / "index.html").read_text(encoding="utf-8")
    for png in ("equity.png", "exposure.png", "outcomes.png", "decision_times.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"src='{png}'" in page
    for run in ("allocator", "naive"):
        for table in ("cycles", "decisions", "allocations", "governor_events", "control_commands"):
            assert (report / f"{run}-{table}.csv").stat().st_size > 0
    if governors:  # 40 steps place every scenario's trigger inside the session
        assert "KILL_SWITCH" in page and "FAILURE_RATE" in page and "SOLVER_TIMEOUT" in page


def test_demo_runs_with_no_services(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report"
    assert main(["demo", "--out", str(report), "--steps", "40", "--scenario-count", "300"]) == 0
    _check_report(capsys.readouterr().out, report)
    assert (report / "allocator-log.sqlite").exists() and (report / "naive-projection.sqlite").exists()


def test_demo_refuses_an_unknown_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--scenario", "meteor"]) == 2
    assert "--scenario 'meteor'" in capsys.readouterr().err


@pytest.mark.kafka
@pytest.mark.postgres
def test_demo_runs_on_kafka_and_postgres(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report"
    argv = ["demo", "--out", str(report), "--steps", "30", "--scenario-count", "300"]
    assert main([*argv, "--kafka", kafka_bootstrap, "--database", database_url]) == 0
    out = capsys.readouterr().out
    _check_report(out, report, governors=False)
    assert "Kafka" in out and "schema demo_allocator" in out
    assert not (report / "allocator-log.sqlite").exists()


def test_compose_file_runs_commands_that_exist() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert {"kafka", "postgres", "init", "migrate", "serve", "project"} <= set(compose["services"])
    kafka_env = compose["services"]["kafka"]["environment"]
    assert kafka_env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert kafka_env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        assert service["command"][0] in _subcommands(), f"compose service {name} runs an unknown command"
        for dependency in service.get("depends_on", {}):
            assert dependency in compose["services"]


# What only a deployment sets: the port its orchestrator probes.
DEPLOYMENT_ONLY = frozenset({"metrics_port", "metrics_host"})


def test_compose_commands_parse_and_use_the_readme_s_flags() -> None:
    """Compose cannot run here (no Docker): its commands go through the real parser instead, and every option one
    sets away from its default is set alike by the README's Kafka walkthrough (tests/test_readme.py runs that)."""
    import re
    import shlex

    from tests.readme import Command, kafka_block

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    parser = build_parser()
    block = kafka_block()
    readme = {c.name: parser.parse_args(c.argv) for c in reversed(block.commands)}  # the first of each name
    checked = []
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        command = Command(" ".join(service["command"]), tuple(service["command"]))
        try:
            used = parser.parse_args(command.argv)
        except SystemExit:
            pytest.fail(f"compose service {name}: `allocator {command.line}` does not parse")
        assert command.name in readme, f"compose service {name} runs `{command.name}`, which the README does not"
        defaults, ours = vars(parser.parse_args(command.name.split())), vars(readme[command.name])
        for option, value in vars(used).items():
            if option in DEPLOYMENT_ONLY or value == defaults.get(option):
                continue
            assert ours.get(option) == value, f"compose service {name}: {option}={value!r}, README {ours.get(option)!r}"
        where = ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CONFIG_FILE", "DATABASE_URL")
        needs = {key for key in service.get("environment", {}) if key in where}
        assert needs <= set(block.exports), f"compose service {name} sets {needs - set(block.exports)}"
        checked.append(command.name)
    assert sorted(checked) == ["db upgrade", "init", "project", "serve"]
    # The README's one-off commands in the compose network: a service with the image, and a command that parses.
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    one_offs = re.findall(r"`docker compose run --rm (\S+) ([^`]+)`", text)
    assert {service for service, _ in one_offs} == {"serve", "project"}
    for service, args in one_offs:
        assert "build" in compose["services"][service]
        parser.parse_args(shlex.split(args))


def test_every_command_of_the_readme_s_walkthroughs_parses() -> None:
    from tests.readme import embedded_block, kafka_block

    parser = build_parser()
    for block in (embedded_block(), kafka_block()):
        assert block.commands
        for command in block.commands:
            try:
                parser.parse_args(command.argv)
            except SystemExit:
                pytest.fail(f"the README's `{command.line}` does not parse")


def test_compose_kafka_is_secured_like_the_test_broker() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    kafka_env = compose["services"]["kafka"]["environment"]
    protocols = dict(pair.split(":") for pair in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert "PLAINTEXT" not in protocols.values() and "SASL_PLAINTEXT" not in protocols.values()
    client_listeners = [name for name in protocols if name not in kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"]]
    assert client_listeners and all(protocols[name] == "SASL_SSL" for name in client_listeners)
    secured = (ROOT / "infra" / "kafka-secrets.sh").read_text(encoding="utf-8")
    for line in (
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        "super.users=User:admin;User:broker",
        "sasl.enabled.mechanisms=$SCRAM_MECHANISM",
    ):
        assert line in secured
    # Every allocator container that reaches Kafka logs in with the file, and no secret is in the compose file.
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            assert env.get("KAFKA_CONFIG_FILE"), f"compose service {name} reaches Kafka without a login"
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8").lower()
    assert "sasl.password" not in text and "jaas" not in text


def test_the_schema_reference_page_is_generated_from_the_schemas() -> None:
    from schemas.docs import schemas_markdown

    page = (ROOT / "docs" / "schemas.md").read_text(encoding="utf-8")
    assert page == schemas_markdown(), "docs/schemas.md is stale: allocator schemas --markdown > docs/schemas.md"


def test_init_creates_the_books_topics_on_the_embedded_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eventlog.embedded import EmbeddedEventLog

    path = tmp_path / "log.sqlite"
    assert main(["init", "--log", str(path), "--topic-prefix", "b"]) == 0
    with EmbeddedEventLog(path) as log:
        ends = log.end_offsets([f"b.{role}" for role in ("proposals", "fills", "pnl", "control", "decisions")])
    assert len(ends) == 5


def test_init_prints_each_topic_created_then_existing_with_the_input_partitions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eventlog.embedded import EmbeddedEventLog
    from eventlog.port import TopicPartition, Topics

    path, topics = tmp_path / "log.sqlite", Topics("b")
    assert main(["init", "--log", str(path), "--topic-prefix", "b", "--partitions", "3"]) == 0
    names = [*topics.inputs, *topics.outputs]
    assert capsys.readouterr().out.splitlines() == [f"created {name}" for name in names]
    assert main(["init", "--log", str(path), "--topic-prefix", "b", "--partitions", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"exists  {name}" for name in names]
    with EmbeddedEventLog(path) as log:
        ends = log.end_offsets(names)
    assert set(ends) == {TopicPartition(name, p) for name in topics.inputs for p in range(3)} | {
        TopicPartition(name, 0) for name in topics.outputs
    }


def test_allocator_topic_prefix_is_every_command_s_default_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from eventlog.embedded import EmbeddedEventLog
    from eventlog.port import Topics

    path = str(tmp_path / "log.sqlite")
    monkeypatch.setenv("ALLOCATOR_TOPIC_PREFIX", "fromenv")
    assert main(["init", "--log", path]) == 0
    assert main(["init", "--log", path, "--topic-prefix", "fromflag"]) == 0  # the flag wins
    with EmbeddedEventLog(path) as log:
        assert set(log.end_offsets([*Topics("fromenv").inputs, *Topics("fromflag").inputs]))
    parser = build_parser()
    for argv in (
        ["serve"],
        ["audit"],
        ["status"],
        ["project"],
        ["control", "halt", "--reason", "r", "--operator", "o"],
        ["acl", "apply"],
        ["tail", "governor"],
    ):
        assert parser.parse_known_args(argv)[0].topic_prefix == "fromenv", argv
    # a reading command on an embedded log of several books takes it as the book to read
    assert main(["audit", "--log", path, "--report", str(tmp_path / "a.json")]) == 0
    monkeypatch.delenv("ALLOCATOR_TOPIC_PREFIX")
    assert main(["audit", "--log", path, "--report", str(tmp_path / "a.json")]) == 2
    assert "several books" in capsys.readouterr().err


def test_init_reports_a_topic_it_cannot_create_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eventlog.embedded import EmbeddedEventLog

    path = tmp_path / "log.sqlite"
    with EmbeddedEventLog(path) as log:
        log.create_topics(["b.fills"], partitions=2)
    assert main(["init", "--log", str(path), "--topic-prefix", "b"]) == 1
    out, err = capsys.readouterr()
    assert "failed  b.fills: topic 'b.fills' already exists with 2 partitions, not 1" in err
    assert "created b.proposals" in out and "created b.deadletter" in out


@pytest.mark.kafka
def test_init_on_kafka_prints_each_topic_created_then_existing(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import uuid

    from confluent_kafka.admin import AdminClient

    from eventlog.kafka import KafkaEventLog
    from eventlog.port import TopicPartition, Topics

    prefix = f"test.init.{uuid.uuid4().hex[:10]}"
    topics = Topics(prefix)
    names = [*topics.inputs, *topics.outputs]
    args = ["init", "--kafka", kafka_bootstrap, "--topic-prefix", prefix, "--partitions", "2"]
    try:
        assert main(args) == 0
        assert capsys.readouterr().out.splitlines() == [f"created {name}" for name in names]
        assert main(args) == 0
        assert capsys.readouterr().out.splitlines() == [f"exists  {name}" for name in names]
        with KafkaEventLog(kafka_bootstrap) as log:
            ends = log.end_offsets(names)
        assert set(ends) == {TopicPartition(name, p) for name in topics.inputs for p in range(2)} | {
            TopicPartition(name, 0) for name in topics.outputs
        }
    finally:
        admin = AdminClient(client_config(kafka_bootstrap))
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result(timeout=60)


def test_the_image_copies_every_package_it_installs() -> None:
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for top in {p.split(".")[0] for p in packages}:
        assert f"COPY {top} ./{top}" in dockerfile, f"the Dockerfile does not copy {top}/"


def test_allocator_schemas_lists_every_released_version(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main
    from schemas.versions import all_versions

    assert main(["schemas"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for record, versions in all_versions().items():
        for v in versions:
            current = "yes" if v is versions[-1] else "no"
            assert any(line.split() == [record, str(v.version), v.fingerprint.hex(), current] for line in lines), (
                record,
                v.version,
            )


def test_every_subcommand_says_what_it_does_in_its_help() -> None:
    """An outside probe: `allocator audit --help` (and init, project, replay, schemas, keys new, the db commands)
    listed options and no word on what the command does."""
    import argparse

    from cli.main import build_parser

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if not sub.description:
                        missing.append(f"{path} {name}")
                    missing.extend(walk(sub, f"{path} {name}"))
        return missing

    assert walk(build_parser(), "allocator") == []


def test_serve_and_project_count_in_the_right_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`stopped after 1 decisions` read as a slip in the one line an operator sees when a service ends."""
    log = ["--log", str(tmp_path / "log.sqlite")]
    examples = Path(__file__).resolve().parent.parent / "examples" / "proposals.json"
    assert main(["init", *log]) == 0 and main(["propose", str(examples), *log]) == 0
    capsys.readouterr()
    assert main(["serve", *log, "--max-cycles", "1", "--duration", "60"]) == 0
    assert "allocator serve: stopped after 1 decision (cycle 1)" in capsys.readouterr().out
    database = ["--database", f"sqlite:///{tmp_path / 'projection.sqlite'}"]
    assert main(["db", "upgrade", *database]) == 0
    capsys.readouterr()
    assert main(["project", *log, *database, "--once"]) == 0
    out = capsys.readouterr().out
    assert "allocator project: stopped after" in out and " 1 batches" not in out and " 1 events" not in out, out


@pytest.mark.parametrize("prefix", ["h2a.proposals", "desk.control.b", "decisions", "a.governor", "x.fills.y"])
def test_a_prefix_that_could_name_another_books_topics_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prefix: str
) -> None:
    """An outside probe: a book under prefix `h2a.proposals` has its control topic at `h2a.proposals.control`, the
    own proposals topic of book h2a's agent `control`, which its grant lets write there: as that agent it halted
    the second book. Neither init nor acl apply said anything."""
    log = tmp_path / "log.sqlite"
    assert main(["init", "--log", str(log), "--topic-prefix", prefix]) == 2
    err = capsys.readouterr().err
    part = next(p for p in prefix.split(".") if p in ("proposals", "control", "decisions", "governor", "fills"))
    assert f"topic prefix {prefix!r}: its part {part!r}" in err and "nothing created" in err, err
    assert not log.exists() or "decisions" not in log.read_bytes().decode("latin-1")
    acl = ["acl", "apply", "--book", "main", "--topic-prefix", prefix, "--agent", "control", "--dry-run"]
    assert main(acl) == 2
    assert f"its part {part!r}" in capsys.readouterr().err
    # a prefix that only contains such a word is fine
    assert main(["init", "--log", str(log), "--topic-prefix", "h2a.proposalsx"]) == 0
    assert main([*acl[:5], "h2a.controls", *acl[6:]]) == 0


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "ImportError from KeyboardInterrupt", "ImportError"])
def test_ctrl_c_while_the_command_loads_says_interrupted_not_a_traceback(
    how: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: Ctrl-C in the first ~0.7 s of a command printed a KeyboardInterrupt traceback from inside an
    import (numpy, the solver); inside a compiled extension's start it comes out as `ImportError: initialization
    failed`, caused by the interrupt (highspy). The entry point loads the command where both are caught; any other
    failure to load is still raised. (Deterministic: the load is made to fail as each would, rather than timed.)"""
    import types

    from cli import entry

    def load(name: str) -> object:
        if how == "KeyboardInterrupt":
            raise KeyboardInterrupt
        if how == "ImportError":
            raise ImportError("a missing module")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    loading = types.ModuleType("cli.main")
    loading.__getattr__ = load  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "cli.main", loading)
    if how == "ImportError":
        with pytest.raises(ImportError, match="a missing module"):
            entry.main()
        return
    assert entry.main() == 130
    assert capsys.readouterr().err == "interrupted\n"
