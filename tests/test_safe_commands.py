"""Commands that cannot destroy what they were not asked to, and inputs too large or too deep to decide."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from projections.database import check_identifier, check_rebuildable_schema
from simulation.demo import MARKER, DemoError, claim_out

ROOT = Path(__file__).resolve().parent.parent
BASIC: dict[str, Any] = json.loads((ROOT / "examples" / "basic.json").read_text(encoding="utf-8"))


# --- replay and project -----------------------------------------------------------------------------------


def _init_log(tmp_path: Path) -> Path:
    log = tmp_path / "book.sqlite"
    assert main(["init", "--log", str(log)]) == 0
    return log


def test_replay_refuses_the_event_log_as_its_database_and_keeps_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _init_log(tmp_path)
    before = log.read_bytes()
    for command in ("replay", "project"):
        extra = ["--once"] if command == "project" else []
        assert main([command, "--log", str(log), "--database", f"sqlite:///{log}", *extra]) == 2
        assert "is the event log" in capsys.readouterr().err
        assert log.read_bytes() == before


def test_replay_never_deletes_a_file_that_is_not_a_projection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _init_log(tmp_path)
    precious = tmp_path / "notes.txt"
    precious.write_text("mine", encoding="utf-8")
    assert main(["replay", "--log", str(log), "--database", f"sqlite:///{precious}"]) == 2
    assert "is not an SQLite database; name another file for the projection" in capsys.readouterr().err
    assert precious.read_text(encoding="utf-8") == "mine"
    # A projection it wrote itself it may replace.
    target = tmp_path / "projection.sqlite"
    assert main(["replay", "--log", str(log), "--database", f"sqlite:///{target}"]) == 0
    assert main(["replay", "--log", str(log), "--database", f"sqlite:///{target}"]) == 0


def test_a_bad_config_leaves_the_projection_a_replay_would_replace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: `replay --config` with a missing file, invalid JSON or an unknown key deleted the projection
    first and then refused: every input is now checked before the old projection goes."""
    log = _init_log(tmp_path)
    target = tmp_path / "projection.sqlite"
    db = ["--database", f"sqlite:///{target}"]
    assert main(["replay", "--log", str(log), *db]) == 0
    before = target.read_bytes()
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "typo.json").write_text('{"position_capp": 0.02}', encoding="utf-8")
    for config, said in (("missing.json", "no such file"), ("bad.json", "bad.json"), ("typo.json", "position_capp")):
        capsys.readouterr()
        assert main(["replay", "--log", str(log), *db, "--config", str(tmp_path / config)]) == 2
        assert said in capsys.readouterr().err
        assert target.read_bytes() == before, config


def test_project_and_replay_write_only_into_a_projection_and_say_why_not_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: `project` added its tables to another event log and ended on a traceback for a text file;
    `replay` and `db upgrade` on a database they could not open, or an unreachable PostgreSQL, did too."""
    log = _init_log(tmp_path)
    other_log = tmp_path / "other.sqlite"
    assert main(["init", "--log", str(other_log)]) == 0
    text = tmp_path / "notes.txt"
    text.write_text("mine", encoding="utf-8")
    logged = other_log.read_bytes()
    assert main(["project", "--once", "--log", str(log), "--database", f"sqlite:///{other_log}"]) == 2
    assert "holds tables that are no projection's" in capsys.readouterr().err
    assert other_log.read_bytes() == logged
    assert main(["project", "--once", "--log", str(log), "--database", f"sqlite:///{text}"]) == 2
    assert "is not an SQLite database" in capsys.readouterr().err
    assert main(["project", "--once", "--log", str(log), "--database", f"sqlite:///{tmp_path}"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert text.read_text(encoding="utf-8") == "mine"
    nowhere = f"sqlite:///{tmp_path / 'no-such-folder' / 'p.sqlite'}"
    assert main(["replay", "--log", str(log), "--database", nowhere]) == 1
    err = capsys.readouterr().err
    assert "allocator replay: cannot create the projection database (unable to open database file)" in err
    assert "Traceback" not in err
    refused = "postgresql+psycopg://someone:secret@127.0.0.1:1/db"
    for command in (["replay", "--log", str(log)], ["db", "upgrade"]):
        capsys.readouterr()
        assert main([*command, "--database", refused]) == 1
        err = capsys.readouterr().err
        assert "cannot" in err and "Connection refused" in err and "Traceback" not in err and "secret" not in err


def test_no_command_turns_a_projection_into_an_event_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: `init --log projection.sqlite` added the log's tables to a projection, exit 0; serve would
    then have run a book in it."""
    projection = tmp_path / "projection.sqlite"
    assert main(["db", "upgrade", "--database", f"sqlite:///{projection}"]) == 0
    before = projection.read_bytes()
    for argv in (["init"], ["serve", "--duration", "1"], ["tail", "decisions"]):
        capsys.readouterr()
        assert main([*argv, "--log", str(projection)]) == 2
        err = capsys.readouterr().err
        assert "holds tables that are no event log's (alembic_version, allocations" in err, argv
        assert projection.read_bytes() == before


def test_project_refuses_a_projection_made_from_another_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: projecting log B into log A's projection said `stopped after 0 events`, exit 0 (its stored
    offsets were past B's end), or would have mixed two books' rows; only `status` noticed, later."""
    proposals = str(ROOT / "examples" / "proposals.json")
    logs = {name: tmp_path / f"{name}.sqlite" for name in ("one", "two", "short")}
    for log in logs.values():
        for argv in (["init", "--log", str(log)], ["propose", proposals, "--log", str(log)],
                     ["serve", "--log", str(log), "--max-cycles", "1", "--duration", "60"]):  # fmt: skip
            assert main(argv) == 0, argv
    for name in ("one", "two"):
        assert main(["control", "halt", "--reason", "r", "--operator", "o", "--log", str(logs[name])]) == 0
        assert main(["serve", "--log", str(logs[name]), "--max-cycles", "2", "--duration", "60"]) == 0
    db = ["--database", f"sqlite:///{tmp_path / 'one-projection.sqlite'}"]
    assert main(["project", "--once", "--log", str(logs["one"]), *db]) == 0
    projected = (tmp_path / "one-projection.sqlite").read_bytes()
    capsys.readouterr()
    # The same book's name and decision ids, another log: the newest decision's hash differs.
    assert main(["project", "--once", "--log", str(logs["two"]), *db]) == 2
    err = capsys.readouterr().err
    assert "not this log's projection: the projection's allocator.main-0000000002" in err
    assert "another log of a book of the same name" in err
    # A shorter log: the projection has read past its end.
    assert main(["project", "--once", "--log", str(logs["short"]), *db]) == 2
    assert "past this log's end" in capsys.readouterr().err
    assert (tmp_path / "one-projection.sqlite").read_bytes() == projected
    # Its own log still projects (nothing new: 0 events).
    assert main(["project", "--once", "--log", str(logs["one"]), *db]) == 0


@pytest.mark.parametrize("schema", ["public", "pg_catalog", "pg_toast", "information_schema", "ok\n", "Upper"])
def test_replay_refuses_reserved_or_malformed_schemas(
    schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _init_log(tmp_path)
    # A PostgreSQL URL (never connected to: the name is refused first); SQLite refuses any --schema.
    unused = "postgresql+psycopg://nobody@127.0.0.1:1/unused"
    assert main(["replay", "--log", str(log), "--database", unused, "--schema", schema]) == 2
    err = capsys.readouterr().err
    assert "schema" in err and "SQLite" not in err
    with pytest.raises(ValueError):
        check_rebuildable_schema(schema)


def test_identifiers_match_whole() -> None:
    assert check_identifier("role", "auditor") == "auditor"
    for bad in ("auditor\n", "auditor;drop", "", "a" * 64):
        with pytest.raises(ValueError):
            check_identifier("role", bad)


# --- the demo's output folder -----------------------------------------------------------------------------


def test_the_demo_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "allocator-log.sqlite").write_text("someone else's", encoding="utf-8")
    (tmp_path / "plot.png").write_text("someone else's", encoding="utf-8")
    with pytest.raises(DemoError, match="not empty"):
        claim_out(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["allocator-log.sqlite", "plot.png"]


def test_the_demo_removes_only_the_files_it_wrote(tmp_path: Path) -> None:
    out = tmp_path / "report"
    claim_out(out)
    (out / "equity.png").write_text("demo", encoding="utf-8")
    (out / MARKER).write_text("equity.png\n../outside.txt\n", encoding="utf-8")
    (tmp_path / "outside.txt").write_text("keep", encoding="utf-8")
    (out / "added-by-user.csv").write_text("keep", encoding="utf-8")
    claim_out(out)
    assert not (out / "equity.png").exists()
    assert (out / "added-by-user.csv").read_text(encoding="utf-8") == "keep"
    assert (tmp_path / "outside.txt").read_text(encoding="utf-8") == "keep"


# --- allocate: every malformed snapshot exits 2 naming the field ------------------------------------------


def _allocate(tmp_path: Path, snapshot: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "snapshot.json"
    path.write_text(snapshot if isinstance(snapshot, str) else json.dumps(snapshot), encoding="utf-8")
    code = main(["allocate", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _with(**changes: Any) -> dict[str, Any]:
    snapshot = copy.deepcopy(BASIC)
    snapshot.update(changes)
    return snapshot


@pytest.mark.parametrize(
    ("snapshot", "named"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (_with(equity=-50_000.0), "equity"),
        (_with(high_water_mark=90_000.0), "high_water_mark"),
        (_with(positions=[{**BASIC["positions"][0], "size": 1e308}]), "positions[0].size"),
        (_with(config={"solver_time_limit_ms": 1e300}), "solver_time_limit_ms"),
        (_with(config={"scenario_count": 1e9}), "scenario_count"),
        (_with(available=1e300), "available"),
        # A config that is not an object reached the configuration reader first: a traceback, exit 1.
        (_with(config=["position_cap"]), "config: must be an object"),
        (_with(config=5), "config: must be an object"),
        (_with(config=True), "config: must be an object"),
        (_with(config="abc"), "config: must be an object"),
        (
            json.dumps(_with(proposals=[{**BASIC["proposals"][0], "proposal_id": "\ud800"}])),
            "proposals.0.proposal_id: not valid Unicode text",
        ),
    ],
)
def test_a_malformed_snapshot_exits_2_naming_the_field(
    snapshot: Any, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _allocate(tmp_path, snapshot, capsys)
    assert code == 2 and out == ""
    assert named in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("field", "value"),
    [("expected_profit", 1e300), ("strategy_tag", "x" * 10_000_000), ("price", 1e-300), ("requested_size", 1e300)],
)
def test_a_proposal_beyond_its_bounds_is_rejected_naming_the_field(
    field: str, value: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proposal = {**BASIC["proposals"][0], field: value}
    if field == "requested_size":
        proposal["min_size"] = 1.0
    code, out, _ = _allocate(tmp_path, _with(proposals=[proposal]), capsys)
    assert code == 0
    [allocation] = json.loads(out)["allocations"]
    assert allocation["status"] == "REJECTED"
    assert allocation["reasons"] == ["INVALID_FIELD"] and field in allocation["details"][0]
    assert len(out) < 10_000  # the rejection quotes the value cut short


def test_an_overlong_proposal_id_is_rejected_under_a_bounded_unique_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proposals = [{**BASIC["proposals"][0], "proposal_id": "p" * 5_000 + tail} for tail in ("a", "b")]
    code, out, _ = _allocate(tmp_path, _with(proposals=proposals), capsys)
    assert code == 0
    ids = [a["proposal_id"] for a in json.loads(out)["allocations"]]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(len(i) <= 128 for i in ids)
