"""Operating it day to day: metrics and health over HTTP, JSON logs without secrets, and the shell tools on the
wire contract (`propose`, `tail`, `fill`), on the embedded log and on Kafka + PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from allocator.service.clients import BookClient
from allocator.service.loop import AllocatorService, group_of
from allocator.service.metrics import ServiceMetrics
from allocator.service.wire import to_json
from book.config import AllocatorConfig
from cli.main import main
from cli.observe import LogLine, MetricsServer, redact
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import Topics
from projections.database import engine_for
from projections.metrics import ProjectorMetrics
from projections.migrate import upgrade
from projections.projector import Projector
from schemas.codec import SingleObjectCodec
from schemas.events import Decision, Fill, FillStatus, PnlMark, Proposal, Side

codec = SingleObjectCodec()
T = 1_790_000_000_000
# A kill switch at 1% drawdown: one funded position marked down trips it.
CONFIG = AllocatorConfig.from_mapping(
    {"scenario_count": 300, "solver_time_limit_ms": 10_000, "cycle_interval_s": 0.001, "kill_switch_drawdown": 0.01}
)
ROOT = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def proposal(i: int) -> Proposal:
    return Proposal(f"p{i}", "alpha", "s", f"m{i % 7}", Side.BUY, 0.5, 0.04, 0.9, 800.0, 100.0, 0.05, 0.01,
                    f"k{i % 3}", T + i)  # fmt: skip


def proposal_json(i: int, **changes: Any) -> dict[str, Any]:
    p = proposal(i)
    raw = {**to_json(p), "proposal_id": f"cli-{i}"}
    del raw["created_at"]  # propose fills it with now
    return {**raw, **changes}


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> Samples:
    code, body = get(port, "/metrics")
    assert code == 200
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(poll_s)


@pytest.fixture
def served_metrics() -> Iterator[Callable[[ServiceMetrics | ProjectorMetrics], MetricsServer]]:
    servers: list[MetricsServer] = []

    def serve(metrics: ServiceMetrics | ProjectorMetrics) -> MetricsServer:
        server = MetricsServer(metrics.registry, metrics.ready, 0, "127.0.0.1").start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.close()


def run_until(svc: AllocatorService, cycle: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    svc.run(lambda: svc.state.cycle >= cycle or time.monotonic() >= deadline, poll_timeout_s=0.05)
    assert svc.state.cycle >= cycle, f"cycle {cycle} not reached in {timeout_s} s"


def test_service_metrics_move_with_the_book_and_readyz_follows_the_lag(
    tmp_path: Path, served_metrics: Callable[[ServiceMetrics | ProjectorMetrics], MetricsServer]
) -> None:
    path, topics = tmp_path / "log.sqlite", Topics("obs")
    metrics = ServiceMetrics("obs", exposure_interval_s=0.0)
    port = served_metrics(metrics).port
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/readyz")[0] == 503  # not started: no transactional producer yet
    with EmbeddedEventLog(path) as log:
        log.create_topics([*topics.inputs, *topics.outputs])
        client = BookClient(log, codec, topics)
        for i in range(10):
            client.propose(proposal(i))
        client.flush()
    svc = AllocatorService(
        EmbeddedEventLog(path, group=group_of(topics, "obs")), EmbeddedEventLog(path), codec, "obs", CONFIG, topics,
        say=lambda _: None, metrics=metrics,
    )  # fmt: skip
    svc.start()
    before = scrape(port)
    assert value(before, "allocator_consumer_lag_records", book="obs", topic="obs.proposals", partition="0") == 10
    assert get(port, "/readyz")[0] == 503  # started, not caught up
    assert value(before, "allocator_transactions_ready", book="obs") == 1

    run_until(svc, 1)
    after = scrape(port)
    assert get(port, "/readyz")[0] == 200
    assert value(after, "allocator_consumer_lag_records", book="obs", topic="obs.proposals", partition="0") == 0
    decision = svc.state.portfolio.last_decision_id
    assert decision is not None
    path_label = {k for (name, labels), _ in after.items() if name == "allocator_decisions_total" for k in labels}
    assert ("book", "obs") in path_label
    assert value(after, "allocator_governor_state", book="obs", state="ACTIVE") == 1
    assert value(after, "allocator_cycle_duration_seconds_count", book="obs") == 1
    assert value(after, "allocator_solve_duration_seconds_count", book="obs") == 1
    assert value(after, "allocator_solver_work_used_count", book="obs") == 1
    assert value(after, "allocator_solver_work_budget", book="obs") == CONFIG.solver_work_limit > 0  # it read 0
    funded_total = sum(
        v
        for (name, labels), v in after.items()
        if name == "allocator_allocations_total" and ({("status", "FUNDED"), ("status", "CUT")} & labels)
    )
    decided = sum(v for (name, _), v in after.items() if name == "allocator_allocations_total")
    assert decided >= 10 and funded_total >= 1
    ratios = [v for (name, _), v in after.items() if name == "allocator_market_exposure_ratio"]
    assert ratios and all(0 < r <= 1 + 1e-9 for r in ratios)
    assert (value(after, "allocator_available_capital", book="obs") or 0) < 100_000

    # The fills of what was funded, then the markets marked down: the kill switch trips and the gauge shows it.
    funded = [a for a in _decisions(path, topics)[-1].allocations if a.size > 0]
    with EmbeddedEventLog(path) as log:
        client = BookClient(log, codec, topics)
        for n, a in enumerate(funded):
            client.report_fill(Fill(f"f{n}", decision, a.proposal_id, a.market_id, Side.BUY, a.size, a.size, 0.5, 0.0,
                                    FillStatus.FILLED, None, T + 100 + n))  # fmt: skip
        for a in funded:
            client.mark(PnlMark(a.market_id, 0.01, T + 200))
        client.flush()
    assert get(port, "/readyz")[0] == 200  # nothing re-read the lag yet: ready until the next observation
    run_until(svc, 2)
    tripped = scrape(port)
    assert value(tripped, "allocator_governor_state", book="obs", state="HALTED") == 1
    assert value(tripped, "allocator_governor_state", book="obs", state="ACTIVE") == 0
    assert value(tripped, "allocator_governor_engaged", book="obs", governor="KILL_SWITCH") == 1
    assert (value(tripped, "allocator_drawdown_ratio", book="obs") or 0) >= 0.01
    assert (value(tripped, "allocator_equity", book="obs") or 0) < (value(after, "allocator_equity", book="obs") or 0)
    assert value(tripped, "allocator_consumer_lag_records", book="obs", topic="obs.pnl", partition="0") == 0
    svc.log.close()
    svc.reader.close()


def _decisions(path: Path, topics: Topics) -> list[Decision]:
    with EmbeddedEventLog(path) as log:
        ends = log.end_offsets([topics.decisions])
        log.assign([topics.decisions])
        out: list[Decision] = []
        deadline = time.monotonic() + 30
        while any(log.position(tp) < end for tp, end in ends.items()) and time.monotonic() < deadline:
            for r in log.poll(500, 0.1):
                assert r.value is not None
                event = codec.decode(r.value, r.topic, r.partition, r.offset)
                assert isinstance(event, Decision)
                out.append(event)
        return out


def test_projector_metrics_and_readyz(
    tmp_path: Path, served_metrics: Callable[[ServiceMetrics | ProjectorMetrics], MetricsServer]
) -> None:
    path, topics = tmp_path / "log.sqlite", Topics("pj")
    with EmbeddedEventLog(path) as log:
        log.create_topics([*topics.inputs, *topics.outputs])
        client = BookClient(log, codec, topics)
        for i in range(25):
            client.propose(proposal(i))
        client.flush()
    url = f"sqlite:///{tmp_path / 'projection.sqlite'}"
    upgrade(url)
    engine = engine_for(url)
    metrics = ProjectorMetrics(lag_interval_s=0.0)
    port = served_metrics(metrics).port
    with EmbeddedEventLog(path) as log:
        projector = Projector(log, engine, codec, [*topics.inputs, *topics.outputs], batch_size=10,
                              say=lambda _: None, metrics=metrics)  # fmt: skip
        assert get(port, "/readyz")[0] == 503
        projector.start()
        assert get(port, "/readyz")[0] == 503
        assert value(scrape(port), "allocator_projector_lag_records", topic="pj.proposals", partition="0") == 25
        deadline = time.monotonic() + 60
        while projector.step(0.05) and time.monotonic() < deadline:
            pass
        samples = scrape(port)
    engine.dispose()
    assert get(port, "/readyz")[0] == 200
    assert value(samples, "allocator_projector_lag_records", topic="pj.proposals", partition="0") == 0
    assert value(samples, "allocator_projector_records_total") == 25
    assert value(samples, "allocator_projector_batches_total") == 3
    assert value(samples, "allocator_projector_batch_duration_seconds_count") == 3


def test_two_services_in_one_process_keep_their_own_registries() -> None:
    a, b = ServiceMetrics("a"), ServiceMetrics("a")
    a.on_abort()
    assert a.registry.get_sample_value("allocator_transaction_aborts_total", {"book": "a"}) == 1
    assert b.registry.get_sample_value("allocator_transaction_aborts_total", {"book": "a"}) == 0


def test_the_book_s_counters_are_exposed_at_zero_before_their_first_event() -> None:
    """An outside probe: `allocator_dead_letters_total` and `allocator_transaction_aborts_total` had no sample (only
    their HELP and TYPE lines) until the first dead letter or abort, so a rate or an alert over them saw nothing."""
    metrics = ServiceMetrics("fresh")
    for name in ("allocator_dead_letters_total", "allocator_transaction_aborts_total", "allocator_input_records_total"):
        assert metrics.registry.get_sample_value(name, {"book": "fresh"}) == 0, name


def test_json_log_lines_carry_the_facts_and_never_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    say = LogLine("json", book="main", cycle=lambda: 7)
    say.expect("cycle", {"funded": 2})
    say("cycle 7: 3 events in")
    say.info("connecting to postgresql+psycopg://allocator:hunter2@db:5432/allocator password=hunter2")
    say.error("broken", event="log_failed")
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert lines[0]["event"] == "cycle" and lines[0]["fields"] == {"funded": 2} and lines[0]["cycle"] == 7
    assert lines[0]["book"] == "main" and lines[0]["level"] == "info" and lines[0]["time"].endswith("Z")
    assert lines[1]["event"] == "message" and lines[1]["fields"] == {}
    assert json.loads(captured.err)["level"] == "error"
    assert "hunter2" not in captured.out + captured.err
    assert redact("sasl.password=x1 api_key: y2 https://u:p3@h") == "sasl.password=*** api_key: *** https://u:***@h"


def test_serve_and_project_log_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = ["--log", str(tmp_path / "log.sqlite"), "--topic-prefix", "js"]
    assert main(["init", *log]) == 0
    file = tmp_path / "p.json"
    file.write_text(json.dumps([proposal_json(i) for i in range(3)]), encoding="utf-8")
    assert main(["propose", str(file), *log]) == 0
    capsys.readouterr()
    assert main(["--log-format", "json", "serve", "--book", "js", *log, "--max-cycles", "1", "--duration", "60"]) == 0
    db = ["--database", f"sqlite:///{tmp_path / 'projection.sqlite'}"]
    assert main(["project", *log, *db, "--once", "--log-format", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    cycle = next(line for line in lines if line["event"] == "cycle")
    assert cycle["book"] == "js" and cycle["cycle"] == 1 and cycle["fields"]["decided"] == 3
    assert {"start", "stop"} <= {line["event"] for line in lines}
    assert all(set(line) == {"time", "level", "book", "cycle", "event", "message", "fields"} for line in lines)


PROPOSE_ERRORS = [
    ({"confidence": 1.5}, "line 3: confidence: must be in (0, 1]"),
    ({"side": "UP"}, "line 3: side: must be BUY or SELL"),
    ({"requested_size": "800"}, "line 3: requested_size: must be a number"),
    ({"surprise": 1}, "line 3: surprise: is not a field of Proposal"),
]


@pytest.mark.parametrize(
    ("change", "message"), PROPOSE_ERRORS, ids=[m.split(":")[1].strip() for _, m in PROPOSE_ERRORS]
)
def test_propose_refuses_an_invalid_file_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], message: str
) -> None:
    log = ["--log", str(tmp_path / "log.sqlite"), "--topic-prefix", "bad"]
    assert main(["init", *log]) == 0
    lines = [json.dumps(proposal_json(1)), json.dumps(proposal_json(2)), json.dumps(proposal_json(3, **change))]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["propose", str(tmp_path / "p.jsonl"), *log]) == 2
    err = capsys.readouterr().err
    assert message in err and "nothing sent" in err
    with EmbeddedEventLog(tmp_path / "log.sqlite") as reader:
        assert set(reader.end_offsets(["bad.proposals"]).values()) == {0}


def test_propose_checks_the_agent_and_reads_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    log = ["--log", str(tmp_path / "log.sqlite"), "--topic-prefix", "ag"]
    assert main(["init", *log]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(proposal_json(1))))
    assert main(["propose", "-", "--agent", "beta", *log]) == 2
    assert "line 1: agent_id: must be 'beta' (--agent), got 'alpha'" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(proposal_json(1))))
    assert main(["propose", "-", "--agent", "alpha", *log]) == 0
    with EmbeddedEventLog(tmp_path / "log.sqlite") as reader:
        assert set(reader.end_offsets(["ag.proposals"]).values()) == {1}


def test_fill_checks_field_types(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = ["--log", str(tmp_path / "log.sqlite"), "--topic-prefix", "fl"]
    assert main(["init", *log]) == 0
    fill = {"fill_id": "f1", "decision_id": "d", "proposal_id": "p", "market_id": "m", "side": "BUY",
            "requested_size": 10, "filled_size": 10, "price": 0.5, "fee": 0.0, "status": "FILLED"}  # fmt: skip
    (tmp_path / "bad.json").write_text(json.dumps({**fill, "filled_size": "ten"}), encoding="utf-8")
    assert main(["fill", str(tmp_path / "bad.json"), *log]) == 2
    assert "line 1: filled_size: must be a number" in capsys.readouterr().err
    (tmp_path / "good.json").write_text(json.dumps(fill), encoding="utf-8")
    assert main(["fill", str(tmp_path / "good.json"), *log]) == 0
    with EmbeddedEventLog(tmp_path / "log.sqlite") as reader:
        assert set(reader.end_offsets(["fl.fills"]).values()) == {1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["tail", *argv, "--from-beginning", "--json", "--timeout", "30"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.kafka
def test_propose_serve_tail_and_metrics_on_kafka(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`propose` a file, `serve --metrics-port` decides it (scraped over HTTP as it goes), `tail --json` shows the
    decision naming what was sent; fills and marks then trip the kill switch and the gauge shows it."""
    prefix = f"obs-{uuid.uuid4().hex[:8]}"
    log = ["--kafka", kafka_bootstrap, "--topic-prefix", prefix]
    assert main(["init", *log]) == 0
    sent = [proposal_json(i) for i in range(6)]
    (tmp_path / "p.json").write_text(json.dumps(sent), encoding="utf-8")
    assert main(["propose", str(tmp_path / "p.json"), *log]) == 0
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"scenario_count": 300, "solver_time_limit_ms": 10_000, "cycle_interval_s": 0.05,
                                  "kill_switch_drawdown": 0.01}), encoding="utf-8")  # fmt: skip
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    serve = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--book", "obs", *log, "--config", str(config),
         "--metrics-port", str(port), "--duration", "300"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:

        def up() -> bool:
            try:
                return get(port, "/healthz")[0] == 200
            except OSError:
                return False

        wait_for("serve's /healthz", up)
        wait_for("the first decision", lambda: (value(scrape(port), "allocator_cycle", book="obs") or 0) >= 1)
        wait_for("/readyz after catch-up", lambda: get(port, "/readyz")[0] == 200)
        samples = scrape(port)
        assert value(samples, "allocator_consumer_lag_records", book="obs", topic=f"{prefix}.proposals",
                     partition="0") == 0  # fmt: skip
        rows = _tail(capsys, "decisions", *log, "--max", "1")
        decision = rows[0]["record"]
        assert rows[0]["type"] == "Decision" and rows[0]["topic"] == f"{prefix}.decisions"
        assert {a["proposal_id"] for a in decision["allocations"]} == {p["proposal_id"] for p in sent}
        assert all(a["status"] in ("FUNDED", "CUT", "DEFERRED", "REJECTED", "NETTED") for a in decision["allocations"])
        assert isinstance(decision["solver_path"], str)

        funded = [a for a in decision["allocations"] if a["size"] > 0]
        assert funded
        fills = [{"fill_id": f"f{n}", "decision_id": decision["decision_id"], "proposal_id": a["proposal_id"],
                  "market_id": a["market_id"], "side": "BUY", "requested_size": a["size"], "filled_size": a["size"],
                  "price": 0.5, "fee": 0.0, "status": "FILLED"} for n, a in enumerate(funded)]  # fmt: skip
        (tmp_path / "fills.jsonl").write_text("\n".join(json.dumps(f) for f in fills), encoding="utf-8")
        assert main(["fill", str(tmp_path / "fills.jsonl"), *log]) == 0
        from allocator.service.backends import LogSettings

        with LogSettings.resolve(kafka_bootstrap, None).open() as producer:
            client = BookClient(producer, codec, Topics(prefix))
            for a in funded:
                client.mark(PnlMark(a["market_id"], 0.01, int(time.time() * 1000)))
            client.flush()
        wait_for(
            "the kill switch in the gauge",
            lambda: value(scrape(port), "allocator_governor_state", book="obs", state="HALTED") == 1,
        )
        wait_for("lag back to 0 after the marks", lambda: get(port, "/readyz")[0] == 200)
        tripped = scrape(port)
        assert value(tripped, "allocator_governor_engaged", book="obs", governor="KILL_SWITCH") == 1
        events = _tail(capsys, "governor", *log, "--max", "1")
        assert events[0]["record"]["governor"] == "KILL_SWITCH" and events[0]["record"]["new_state"] == "TRIPPED"
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            out, _ = serve.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            out, _ = serve.communicate()
    assert serve.returncode == 0, out
    assert "metrics on port" in out
