"""Property tests of containment (rules.md §2.1, §3.3, §11.2): random bytes, random field values (in and out of
bounds, NaN, inf, huge strings) and random operator commands fed to a live `AllocatorService`, on the embedded
log and (fewer examples) on Kafka. Example counts are small so the file runs in about a minute."""

from __future__ import annotations

import contextlib
import math
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocator.engine.validation import bounded_id
from allocator.service.loop import AllocatorService, group_of
from book.bounds import out_of_bounds
from book.config import AllocatorConfig, ConfigError
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import EventLog, Topics
from schemas.codec import SingleObjectCodec
from schemas.events import (
    AllocationStatus,
    Command,
    ControlCommand,
    DeadLetter,
    Decision,
    Event,
    Fill,
    FillStatus,
    MarketResolution,
    Outcome,
    PnlMark,
    Proposal,
    Side,
)
from tests.test_cycle import books, decide

codec = SingleObjectCodec()
T = 1_790_000_000_000
CONFIG = AllocatorConfig.from_mapping({"scenario_count": 200, "solver_time_limit_ms": 10_000})
NAN, INF = float("nan"), float("inf")

odd = st.sampled_from([NAN, INF, -INF, 1e308, -1.0, 0.0, 1.0, 2e12, 5e-324])
number = st.one_of(st.floats(0.0, 1.0), st.floats(1.0, 5_000.0), odd, st.floats(allow_nan=True, allow_infinity=True))
text = st.one_of(st.sampled_from(["m0", "m1", "k0", "alpha"]), st.text(max_size=12), st.just("h" * 300_000))
markets = st.sampled_from(["m0", "m1", "m2"])


@st.composite
def inputs(draw: st.DrawFn) -> tuple[str, bytes | Event]:
    """One input record: (topic role, raw bytes or an event)."""
    kind = draw(st.sampled_from(["bytes", "proposal", "good", "fill", "mark", "resolution", "command"]))
    i = draw(st.integers(0, 10**9))
    if kind == "bytes":
        return draw(st.sampled_from(["proposals", "fills", "pnl", "control"])), draw(st.binary(max_size=64))
    if kind in ("proposal", "good"):
        pid = f"p{i}" + draw(st.sampled_from(["", "", "x" * 200]))
        if kind == "good":
            return "proposals", Proposal(pid, "alpha", "s", draw(markets), Side.BUY, 0.5, 0.05, 0.9, 900.0, 100.0,
                                         0.05, 0.01, "k0", T)  # fmt: skip
        return "proposals", Proposal(pid, draw(text), "s", draw(text), draw(st.sampled_from(list(Side))),
                                     draw(st.none() | number), draw(number), draw(number), draw(number),
                                     draw(number), draw(number), draw(number), draw(text), T)  # fmt: skip
    if kind == "fill":
        return "fills", Fill(f"f{i}", draw(text), draw(text), draw(markets), draw(st.sampled_from(list(Side))),
                             draw(number), draw(number), draw(number), draw(number),
                             draw(st.sampled_from(list(FillStatus))), None, T)  # fmt: skip
    if kind == "mark":
        return "pnl", PnlMark(draw(markets | text), draw(number), T)
    if kind == "resolution":
        return "pnl", MarketResolution(
            draw(st.sampled_from(["m0", f"never-{i}"])), draw(st.sampled_from(list(Outcome))), T
        )
    command = draw(st.sampled_from(list(Command)))
    limits = draw(
        st.none()
        | st.dictionaries(st.sampled_from(["kill_switch_drawdown", "position_cap", "failure_rate_limit", "bogus"]),
                          number, max_size=3)
        | st.just({f"k{j}": 1.0 for j in range(200)})
    )  # fmt: skip
    operator = draw(st.sampled_from(["op", "o" * 1_000]))
    return "control", ControlCommand(f"c{i}", operator, command, "why", limits, T)


@dataclass
class Fed:
    topic: str
    offset: int
    item: bytes | Event


def _read_all(reader: EventLog, topic: str) -> list[Event]:
    ends = reader.end_offsets([topic])
    reader.assign([topic])
    for tp in reader.assignment():
        reader.seek(tp, 0)
    out: list[Event] = []
    while any(reader.position(tp) < end for tp, end in ends.items()):
        for r in reader.poll(1_000, 0.2):
            assert r.value is not None
            out.append(codec.decode(r.value, r.topic, r.partition, r.offset))
    return out


def _drain(svc: AllocatorService, producer: EventLog, topics: Topics) -> None:
    """Poll until the service has read everything produced, then decide once."""
    ends = producer.end_offsets(list(topics.inputs))
    while any(svc.log.position(tp) < end for tp, end in ends.items() if tp in set(svc.log.assignment())):
        svc.poll(0.1)
    if svc.buffer:
        svc.cycle()


def _check(
    records: list[tuple[str, bytes | Event]], open_log: Callable[[str | None], EventLog], topics: Topics
) -> None:
    def start() -> AllocatorService:
        svc = AllocatorService(open_log(group_of(topics, "book1")), open_log(None), codec, "book1", CONFIG, topics,
                               say=lambda _: None)  # fmt: skip
        svc.start()
        return svc

    svc = start()
    fed: list[Fed] = []
    with contextlib.closing(open_log(None)) as producer:
        producer.create_topics([*topics.inputs, *topics.outputs])
        offsets: dict[str, int] = {}
        half = len(records) // 2
        for n, (role, item) in enumerate(records):
            topic = getattr(topics, role)
            value = item if isinstance(item, bytes) else codec.encode(item)
            producer.produce(topic, value, timestamp_ms=T + n + 1)
            fed.append(Fed(topic, offsets.get(topic, 0), item))
            offsets[topic] = offsets.get(topic, 0) + 1
            if n == half:
                producer.flush()
                _drain(svc, producer, topics)
        producer.flush()
        _drain(svc, producer, topics)

        # 1. Still up, and a restart rebuilds the same book without error.
        again = start()
        assert again.state.cycle == svc.state.cycle
        assert again.state.portfolio.governor == svc.state.portfolio.governor
        assert again.state.portfolio.config == svc.state.portfolio.config

        decisions = [d for d in _read_all(producer, topics.decisions) if isinstance(d, Decision)]
        dead = {
            (d.topic, d.offset): d.error for d in _read_all(producer, topics.deadletter) if isinstance(d, DeadLetter)
        }
    for s in (svc, again):
        s.log.close()
        s.reader.close()

    # 2. The governors' state and the configuration equal a fold of the accepted commands alone.
    halted, config, caps = False, CONFIG, [CONFIG.position_cap]
    for f in fed:
        if isinstance(f.item, ControlCommand) and f.topic == topics.control and out_of_bounds(f.item, ()) is None:
            if f.item.command is Command.HALT:
                halted = True
            elif f.item.command is Command.RESUME:
                halted = False
            elif f.item.command is Command.SET_LIMITS:
                with contextlib.suppress(ConfigError):
                    config = config.with_limits(f.item.limits or {})
                    caps.append(config.position_cap)
    assert svc.state.portfolio.governor.operator_halted is halted
    assert svc.state.portfolio.config == config

    # 3. Nothing above a cap is funded; every unfunded allocation names why.
    named: set[str] = set()
    for d in decisions:
        for a in d.allocations:
            named.add(a.proposal_id)
            assert math.isfinite(a.size) and 0.0 <= a.size <= max(caps) * d.equity + 1e-6, (a, d.equity)
            if a.status in (AllocationStatus.CUT, AllocationStatus.DEFERRED, AllocationStatus.REJECTED):
                assert a.reasons, a

    # 4. Every bad record is accounted for on the log: a dead letter at its position, or a decision naming it.
    for f in fed:
        where = (f.topic, f.offset)
        if isinstance(f.item, bytes):
            with contextlib.suppress(Exception):
                event = codec.decode(f.item)
                if isinstance(event, topics.accepts(f.topic)):
                    continue  # random bytes that happen to be a valid record
            assert where in dead, f
        elif isinstance(f.item, Proposal):
            assert bounded_id(f.item.proposal_id) in named, f
        elif isinstance(f.item, MarketResolution) and f.item.market_id.startswith("never-"):
            assert where in dead and "MarketResolution.market_id" in dead[where]
        elif out_of_bounds(f.item, ()) is not None and not isinstance(f.item, MarketResolution):
            assert where in dead and "rejected" in dead[where], f
        if isinstance(f.item, Fill) and any(
            not math.isfinite(x) for x in (f.item.filled_size, f.item.price, f.item.fee)
        ):
            assert where in dead


@contextlib.contextmanager
def _embedded() -> Iterator[tuple[Callable[[str | None], EventLog], Topics]]:
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "log.sqlite"
        yield (lambda group: EmbeddedEventLog(db, group=group)), Topics("book1")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(inputs(), min_size=1, max_size=14))
def test_no_input_stops_the_service_and_every_bad_one_is_accounted_for(records: list[tuple[str, Any]]) -> None:
    with _embedded() as (open_log, topics):
        _check(records, open_log, topics)


@pytest.mark.kafka
def test_no_input_stops_the_service_on_kafka(kafka_bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient

    from eventlog.kafka import KafkaEventLog
    from eventlog.kafka_properties import client_config

    prefixes: list[str] = []

    @settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(inputs(), min_size=1, max_size=10))
    def run(records: list[tuple[str, Any]]) -> None:
        prefix = f"contain{uuid.uuid4().hex[:10]}"
        prefixes.append(prefix)
        _check(records, lambda group: KafkaEventLog(kafka_bootstrap, group), Topics(prefix))

    try:
        run()
    finally:
        admin = AdminClient(client_config(kafka_bootstrap))
        mine = [t for t in admin.list_topics(timeout=10).topics if any(t.startswith(p + ".") for p in prefixes)]
        if mine:
            for future in admin.delete_topics(mine, operation_timeout=30).values():
                future.result(timeout=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books())
def test_every_unfunded_allocation_names_why(book: dict[str, Any]) -> None:
    """rules.md §3.3 (issue item 6): through run_cycle, every CUT, DEFERRED and REJECTED allocation has a reason."""
    for a in decide(book).decision.allocations:
        if a.status in (AllocationStatus.CUT, AllocationStatus.DEFERRED, AllocationStatus.REJECTED):
            assert a.reasons, a
