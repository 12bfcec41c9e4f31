"""Part 1, the in-memory fold: decode + `PortfolioState.apply` against fastavro's bare reader (the ceiling)."""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable, Sequence

import fastavro

from allocator.service.metrics import ServiceMetrics
from benchmarks.stream.events import codec, event_mix
from benchmarks.stream.table import Report, Row, say, verdict_at_least
from book.config import AllocatorConfig
from book.portfolio import PortfolioState
from schemas.codec import load_schema
from schemas.events import EVENT_TYPES

FOLD_TARGET = 150_000.0  # events/s
METRICS_BATCH = 1_000  # events per cycle in the metrics on/off rows: the service updates metrics once per cycle
METRICS_COST_TARGET = 0.02  # metrics may cost at most 2% of the fold's throughput


def bench_fold(n: int, repeats: int, report: Report) -> list[bytes]:
    say(f"fold: encoding {n:,} events (60% proposals, 30% marks, 10% fills)")
    encoded = [codec.encode(e) for _, e in event_mix(n, proposal_share=0.6, mark_share=0.3)]
    parsed = {codec.header(t): fastavro.parse_schema(load_schema(t), named_schemas={}) for t in EVENT_TYPES}
    bodies = [(parsed[data[:10]], data[10:]) for data in encoded]
    reader = fastavro.schemaless_reader

    def bare() -> None:
        for schema, body in bodies:
            reader(io.BytesIO(body), schema)

    def decode_only() -> None:
        decode = codec.decode
        for data in encoded:
            decode(data)

    def fold() -> None:
        state = PortfolioState.new(AllocatorConfig(initial_cash=100_000_000.0))
        decode, apply = codec.decode, state.apply
        for data in encoded:
            apply(decode(data))

    cases: list[tuple[str, Callable[[], None]]] = [
        ("fastavro schemaless_reader, bare (ceiling)", bare),
        ("SingleObjectCodec.decode alone", decode_only),
        ("decode + PortfolioState.apply", fold),
    ]
    rates: dict[str, float] = {}
    for label, run in cases:
        times = []
        for i in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
            say(f"fold: {label}: run {i + 1}/{repeats} {n / times[-1]:,.0f} events/s")
        rate = n / statistics.median(times)
        rates[label] = rate
        spread = f"runs {min(n / t for t in times):,.0f}-{max(n / t for t in times):,.0f}"
        report.rows.append(Row("fold", label, f"{n:,}", f"{rate:,.0f}", note=f"median of {repeats}; {spread}"))
    ceiling = rates[cases[0][0]]
    decode = rates[cases[1][0]]
    folded = rates[cases[2][0]]
    report.rows[-2].note += f"; {decode / ceiling:.0%} of ceiling"
    apply_us = (1 / folded - 1 / decode) * 1e6
    report.rows[
        -1
    ].note += f"; {folded / ceiling:.0%} of ceiling, {folded / decode:.0%} of decode; apply ~{apply_us:.1f} us/event"
    report.targets.append(verdict_at_least("fold (decode + apply)", folded, FOLD_TARGET, "events/s"))
    bench_fold_metrics(encoded, repeats, report)
    return encoded


def bench_fold_metrics(encoded: Sequence[bytes], repeats: int, report: Report) -> None:
    """The fold in cycles of METRICS_BATCH events with `allocator serve`'s metrics updated once per cycle (the
    book's gauges, exposure ratios, input counter, a duration histogram), against the same fold without them."""
    batches = [encoded[i : i + METRICS_BATCH] for i in range(0, len(encoded), METRICS_BATCH)]

    def run(metrics: ServiceMetrics | None) -> float:
        state = PortfolioState.new(AllocatorConfig(initial_cash=100_000_000.0))
        decode, apply = codec.decode, state.apply
        started = time.perf_counter()
        for batch in batches:
            began = time.perf_counter()
            for data in batch:
                apply(decode(data))
            if metrics is not None:
                updating = time.perf_counter()
                metrics.observe_book(state, pending=len(state.pending))
                metrics.inputs.labels(metrics.book).inc(len(batch))
                metrics.cycle_seconds.labels(metrics.book).observe(updating - began)
                spent[-1] += time.perf_counter() - updating
        return time.perf_counter() - started

    n = len(encoded)
    times: dict[str, list[float]] = {"off": [], "on": []}
    spent: list[float] = []  # seconds inside the metrics calls, per "on" run: immune to the machine's other load
    for i in range(repeats):  # interleaved, so drift in the machine's load hits both alike
        times["off"].append(run(None))
        spent.append(0.0)
        times["on"].append(run(ServiceMetrics("bench")))
        rates = f"{n / times['off'][-1]:,.0f} / {n / times['on'][-1]:,.0f}"
        say(f"fold: metrics off/on run {i + 1}/{repeats}: {rates} events/s")
    off, on = (n / statistics.median(times[k]) for k in ("off", "on"))
    cost = statistics.median(s / t for s, t in zip(spent, times["on"], strict=True))
    report.rows.append(Row("fold", f"decode + apply, metrics off ({METRICS_BATCH:,}-event cycles)", f"{n:,}",
                           f"{off:,.0f}", note=f"median of {repeats}"))  # fmt: skip
    note = (f"median of {repeats}; {cost:.1%} of the run inside the metrics calls; rate ratio on/off "
            f"{on / off:.1%}")  # fmt: skip
    report.rows.append(Row("fold", f"decode + apply, metrics on ({METRICS_BATCH:,}-event cycles)", f"{n:,}",
                           f"{on:,.0f}", note=note))  # fmt: skip
    how = "met" if cost <= METRICS_COST_TARGET else "MISSED"
    report.targets.append(f"target metrics cost <= {METRICS_COST_TARGET:.0%} of the fold: measured {cost:.1%} -> {how}")


def profile_fold(encoded: Sequence[bytes], top: int) -> None:
    state = PortfolioState.new(AllocatorConfig(initial_cash=100_000_000.0))
    profiler = cProfile.Profile()
    profiler.enable()
    for data in encoded:
        state.apply(codec.decode(data))
    profiler.disable()
    say(f"\n=== cProfile: decode + apply of {len(encoded):,} events, top {top} by own time ===")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    say(out.getvalue())
