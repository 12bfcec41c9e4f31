"""The audit in parallel (docs/audit.md): one sequential fold emits each decision's request, the re-solves run on
a process pool or a Dask cluster, and the report is the same whatever the engine and the worker count. A re-run
that raises is reported, never dropped; a worker that dies is retried."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allocator.service.audit import AuditTask, Rederived, audit_log, rederive
from allocator.service.audit_engines import AuditEngine, DaskEngine, ProcessPoolEngine, SequentialEngine
from cli.main import main
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import Record
from schemas.codec import SingleObjectCodec
from schemas.events import Decision
from tests.test_config_on_log import CONFIG, decide, start, stop
from tests.test_service import TOPICS

ROOT = Path(__file__).resolve().parent.parent
codec = SingleObjectCodec()
FAILING_CYCLE = 3
MARKER = "ALLOCATOR_TEST_DIE_ONCE"


def flaky_rederive(task: AuditTask) -> Rederived:
    """The audit's work, with one decision that raises on the worker."""
    if task.recorded.cycle == FAILING_CYCLE:
        raise RuntimeError("injected failure")
    return rederive(task)


def dying_rederive(task: AuditTask) -> Rederived:
    """The audit's work, with a worker process that dies the first time it meets one decision."""
    marker = Path(os.environ[MARKER])
    if task.recorded.cycle == FAILING_CYCLE and not marker.exists():
        marker.write_text("died", encoding="utf-8")
        os._exit(1)
    return rederive(task)


@pytest.fixture(scope="module")
def tampered_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six decisions, copied record for record into a second log with decision 2's first size changed (so the
    audit must move on with its re-run), and a forged second record for cycle 4 at the end."""
    honest = tmp_path_factory.mktemp("audit") / "honest.sqlite"
    svc = start(honest, CONFIG)
    for batch in range(6):
        decide(honest, svc, 10 * batch, 8)
    stop(svc)
    path = honest.with_name("tampered.sqlite")
    with EmbeddedEventLog(honest) as src, EmbeddedEventLog(path) as dst:
        names = [*TOPICS.inputs, *TOPICS.outputs]
        ends = src.end_offsets(names)
        dst.create_topics(names)
        src.assign(names)
        records = []
        while any(src.position(tp) < end for tp, end in ends.items()):
            records.extend(src.poll(1_000, 0.2))
        forged: Decision | None = None
        for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
            value = r.value
            if r.topic == TOPICS.decisions and value is not None:
                d = codec.decode(value)
                assert isinstance(d, Decision)
                if d.cycle == 2:
                    first = d.allocations[0]
                    d = dataclasses.replace(d, allocations=(dataclasses.replace(first, size=first.size + 1.0),
                                                            *d.allocations[1:]))  # fmt: skip
                    value = codec.encode(d)
                if d.cycle == 4:
                    forged = dataclasses.replace(d, objective=d.objective + 1.0)
            dst.produce(r.topic, value, r.key, r.partition, timestamp_ms=r.timestamp_ms)
        assert forged is not None
        dst.produce(TOPICS.decisions, codec.encode(forged), timestamp_ms=forged.decided_at + 1)
        dst.flush()
    return path


@pytest.fixture(scope="module")
def dask_engine() -> Iterator[AuditEngine]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        engine = DaskEngine(client)
        yield engine
        engine.close()


def _audit(path: Path, engine: AuditEngine, work: Any = rederive) -> dict[str, Any]:
    with EmbeddedEventLog(path) as reader:
        report: dict[str, Any] = audit_log(reader, codec, TOPICS, engine=engine, work=work).to_json()
    return report


def test_a_request_pickles_compactly(tampered_log: Path) -> None:
    tasks: list[AuditTask] = []

    def keep(task: AuditTask) -> Rederived:
        tasks.append(task)
        return rederive(task)

    _audit(tampered_log, SequentialEngine(), keep)
    assert len(tasks) == 6
    for task in tasks:
        size = len(pickle.dumps(task))
        assert pickle.loads(pickle.dumps(task)).request == task.request
        assert size < 64_000, size  # the state one decision saw, never the log


def test_the_report_is_the_same_on_every_engine(tampered_log: Path, dask_engine: AuditEngine) -> None:
    sequential = _audit(tampered_log, SequentialEngine())
    # The changed record alone is a mismatch (the fold moved on with its re-run), and so is the forged duplicate.
    verdicts = [(f["cycle"], f["verdict"]) for f in sequential["findings"]]
    assert verdicts == [(1, "MATCH"), (2, "MISMATCH"), (3, "MATCH"), (4, "MATCH"), (5, "MATCH"), (6, "MATCH"),
                        (4, "MISMATCH")]  # fmt: skip
    pool = ProcessPoolEngine(2)
    try:
        assert _audit(tampered_log, pool) == sequential
    finally:
        pool.close()
    assert _audit(tampered_log, dask_engine) == sequential


def test_a_re_run_that_raises_is_reported_not_dropped(tampered_log: Path, dask_engine: AuditEngine) -> None:
    pool = ProcessPoolEngine(2)
    try:
        reports = [_audit(tampered_log, engine, flaky_rederive) for engine in (SequentialEngine(), pool, dask_engine)]
    finally:
        pool.close()
    assert reports[0] == reports[1] == reports[2]
    findings = reports[0]["findings"]
    assert len(findings) == 7 and reports[0]["errors"] == 1
    [error] = [f for f in findings if f["verdict"] == "ERROR"]
    assert error["cycle"] == FAILING_CYCLE
    assert "RuntimeError: injected failure" in error["problems"][0]


def test_a_pool_worker_that_dies_is_replaced_and_its_decisions_re_derived(
    tampered_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MARKER, str(tmp_path / "died"))
    pool = ProcessPoolEngine(2)
    try:
        report = _audit(tampered_log, pool, dying_rederive)
    finally:
        pool.close()
    assert (tmp_path / "died").exists(), "no worker died: the test proved nothing"
    assert report == _audit(tampered_log, SequentialEngine())


def test_allocator_audit_jobs_and_dask_print_the_same_report(
    tampered_log: Path, tmp_path: Path, dask_engine: DaskEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = []
    address = dask_engine.client.scheduler.address
    for flags in ([], ["--jobs", "2"], ["--dask", address]):
        report = tmp_path / "audit.json"
        assert main(["audit", "--log", str(tampered_log), "--report", str(report), *flags]) == 1  # the mismatches
        captured = capsys.readouterr()
        assert "re-derived/s" in captured.err
        outputs.append((captured.out, report.read_text(encoding="utf-8")))
    assert outputs[0] == outputs[1] == outputs[2]


def test_allocator_audit_reads_the_decisions_topic_once(
    tampered_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The configuration's cross-check and the audit share one verified read of the decisions topic, and the report
    is the one the library's audit gives."""
    read: list[int] = []
    poll = EmbeddedEventLog.poll

    def counting(self: EmbeddedEventLog, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        records = poll(self, max_records, timeout_s)
        read.extend(r.offset for r in records if r.topic == TOPICS.decisions)
        return records

    monkeypatch.setattr(EmbeddedEventLog, "poll", counting)
    report = tmp_path / "audit.json"
    assert main(["audit", "--log", str(tampered_log), "--report", str(report)]) == 1  # the mismatches
    monkeypatch.undo()
    with EmbeddedEventLog(tampered_log) as log:
        on_topic = sum(log.end_offsets([TOPICS.decisions]).values())
    assert sorted(read) == list(range(on_topic))  # every record of the topic, each once
    assert json.loads(report.read_text(encoding="utf-8")) == _audit(tampered_log, SequentialEngine())


def _processes(group: int, command: bytes = b"") -> list[int]:
    """The live processes of a process group whose command line holds `command` (zombies left out), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if int(stat[2]) == group and stat[0] != "Z" and command in cmdline:
            found.append(int(entry.name))
    return found


def test_ctrl_c_during_a_parallel_audit_stops_it_without_a_worker_traceback(tampered_log: Path, tmp_path: Path) -> None:
    """An outside probe: Ctrl-C during `allocator audit --jobs 2` exited 130 and said "interrupted", but a terminal
    signals its whole foreground process group, and each worker printed a KeyboardInterrupt traceback of its own
    (caught while it imported the solver, or waited for a task). The signal goes to the group here too, while the
    workers start: they ignore it, and the audit stops them."""
    report = tmp_path / "audit.json"
    audit = subprocess.Popen([sys.executable, "-m", "cli.main", "audit", "--log", str(tampered_log), "--report",
                              str(report), "--jobs", "2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(_processes(audit.pid, b"spawn_main")) < 2 and audit.poll() is None:
            assert time.monotonic() < deadline, "the pool's workers never started"
            time.sleep(0.01)
        time.sleep(0.2)  # into the workers' imports (before Python's own handler, SIGINT would end them silently)
        os.killpg(audit.pid, signal.SIGINT)  # as Ctrl-C at a terminal does
        out, err = audit.communicate(timeout=60)
    finally:
        if audit.poll() is None:
            os.killpg(audit.pid, signal.SIGKILL)
            audit.communicate()
    assert audit.returncode == 130, out + err
    assert "interrupted" in err
    assert "Traceback" not in out + err, err
    assert not report.exists()
    deadline = time.monotonic() + 10
    while _processes(audit.pid) and time.monotonic() < deadline:  # nothing left running (multiprocessing's resource
        time.sleep(0.05)  # tracker ends a moment after the audit)
    assert not _processes(audit.pid)
