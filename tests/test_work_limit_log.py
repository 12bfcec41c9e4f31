"""A log of work-limited decisions written by an earlier solver still audits: every decision re-derives exactly.

tests/golden/work_limit/log.sqlite was written by tests/golden/make_work_limit_log.py on the solver of its
commit (solver revision 1): eight decisions of 70-89 proposals over 2,000 scenarios, each stopped by the default
work budget (MIP_WORK_LIMIT). rules.md §10.2 asks every later release to re-derive each of them from the log alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from allocator.service.audit import audit_log
from allocator.service.sequencer import read_decisions
from book.config import AllocatorConfig
from cli.main import main
from eventlog.embedded import EmbeddedEventLog
from schemas.codec import SingleObjectCodec
from schemas.events import SolverPath
from tests.golden.common import read_all, records_digest
from tests.golden.make_work_limit_log import CONFIG_VALUES, FACTS_NAME, HERE, LOG_NAME, PREFIX, SEED, TOPICS, run


def _facts() -> dict[str, Any]:
    facts: dict[str, Any] = json.loads((HERE / FACTS_NAME).read_text(encoding="utf-8"))
    return facts


@pytest.fixture
def work_limit_log(tmp_path: Path) -> Path:
    """A private copy: opening an embedded log writes to it, and the committed file must never change."""
    target = tmp_path / LOG_NAME
    shutil.copyfile(HERE / LOG_NAME, target)
    return target


def test_the_committed_work_limit_log_is_the_one_written(work_limit_log: Path) -> None:
    with EmbeddedEventLog(work_limit_log) as log:
        records = read_all(log, (*TOPICS.inputs, *TOPICS.outputs))
    facts = _facts()
    assert len(records) == facts["records"]
    assert records_digest(records) == facts["records_sha256"]
    assert {d["solver_path"] for d in facts["decisions"]} == {"MIP_WORK_LIMIT"}
    assert min(d["allocations"] for d in facts["decisions"]) >= 60


def test_allocator_audit_re_derives_every_work_limited_decision(
    work_limit_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "audit.json"
    code = main(["audit", "--log", str(work_limit_log), "--topic-prefix", PREFIX, "--report", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(report_path.read_text(encoding="utf-8"))
    facts = _facts()
    assert report["decisions"] == len(facts["decisions"]) > 0
    assert report["mismatches"] == 0 and report["errors"] == 0
    assert [(f["decision_id"], f["solver_path"], f["verdict"]) for f in report["findings"]] == [
        (d["decision_id"], "MIP_WORK_LIMIT", "MATCH") for d in facts["decisions"]
    ]


@pytest.mark.parametrize("revision", [2, 3, 4, 5, 6])
def test_a_log_written_by_a_later_revision_audits_too(tmp_path: Path, revision: int) -> None:
    """The same session written by revisions 2 to 5 and by today's solver (revision 6, recorded on the log): every
    decision re-derives. The wall-clock safety net is set far out: at its default (1 s) a machine loaded by other work
    tripped it once while writing the session (a `MIP_TIME_LIMIT` decision, audited as CONSTRAINTS_HELD), which is
    the one outcome the clock may shape, not what this test is about."""
    path = tmp_path / f"revision-{revision}.sqlite"
    config = AllocatorConfig.from_mapping(CONFIG_VALUES).replace(
        solver_revision=revision, solver_time_limit_ms=600_000.0
    )
    assert AllocatorConfig.from_mapping(CONFIG_VALUES).solver_revision == 6
    run(path, config, SEED, lambda _: None)
    with EmbeddedEventLog(path) as reader:
        decisions = [d for _, d in read_decisions(reader, SingleObjectCodec(), TOPICS)]
        report = audit_log(reader, SingleObjectCodec(), TOPICS)
    assert decisions[0].config is not None and json.loads(decisions[0].config)["solver_revision"] == revision
    assert [f.verdict for f in report.findings] == ["MATCH"] * len(decisions)
    assert {d.solver_path for d in decisions} == {SolverPath.MIP_WORK_LIMIT}
