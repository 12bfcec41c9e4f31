"""A time in milliseconds outside the years 1-9999 (a writer's clock, a damaged log file) decodes as the number it
is: a proposal's `created_at` in its documented range [0, 2**62] is judged by the allocator, and a decision stamped
with such a log time is read back by the allocator that wrote it, by a restart and by the audit."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cli.main import main
from projections.status import _when
from schemas.codec import SingleObjectCodec
from schemas.events import Proposal, Side

FAR = 2**62
codec = SingleObjectCodec()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "proposals.json"


def proposal(created_at: int) -> Proposal:
    return Proposal("p", "a", "s", "m", Side.BUY, 0.5, 0.1, 0.9, 100.0, 10.0, 0.05, 0.01, "k", created_at)


@pytest.mark.parametrize("ms", [FAR, 253_402_300_800_000, -62_135_596_800_001, -1])
def test_a_time_outside_the_years_of_a_datetime_round_trips(ms: int) -> None:
    event = proposal(ms)
    assert codec.decode(codec.encode(event)) == event
    assert codec.decode_record(codec.encode(event))[1]["created_at"] == ms


def test_status_shows_a_far_time_raw() -> None:
    assert _when(FAR) == f"{FAR} ms since the epoch"
    assert _when(0) == "1970-01-01 00:00:00 UTC"


def test_a_decision_at_a_far_log_time_is_read_back_by_a_restart_and_the_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log.sqlite"
    log = ["--log", str(path)]
    assert main(["init", *log]) == 0
    assert main(["propose", str(EXAMPLES), *log]) == 0
    with sqlite3.connect(path) as db:  # whoever can write the file can stamp a record with any log time
        db.execute("UPDATE records SET timestamp_ms = ? WHERE topic = 'allocator.proposals' AND offset = 1", (FAR,))
    assert main(["serve", "--book", "main", "--max-cycles", "1", "--duration", "20", *log]) == 0
    capsys.readouterr()
    assert main(["serve", "--book", "main", "--max-cycles", "2", "--duration", "2", *log]) == 0
    out = capsys.readouterr()
    assert "rebuilt from the log: 1 decisions" in out.out and "undecodable" not in out.out + out.err
    assert main(["tail", "decisions", "--from-beginning", "--json", "--max", "1", "--timeout", "5", *log]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["record"]["decided_at"] == FAR and first["record"]["cycle"] == 1
    assert main(["audit", "--report", str(tmp_path / "audit.json"), *log]) == 0
