"""`allocator project`'s Prometheus metrics: lag behind the log, batch duration and size, retries, staleness.

One `ProjectorMetrics` per projector with its own `CollectorRegistry`. The projector calls it once per written
batch and when a poll finds nothing; the lag (end offset minus position, per partition) is re-read at most once
a second, so a busy projector pays one `end_offsets` call a second, not one per batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from eventlog.port import EventLog

BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_INTERVAL_S = 1.0


class ProjectorMetrics:
    """The projector's metrics; `ready()` is what `/readyz` answers (started and caught up with the log)."""

    def __init__(self, registry: CollectorRegistry | None = None, lag_interval_s: float = LAG_INTERVAL_S) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.lag = Gauge(
            "allocator_projector_lag_records", "End offset minus the projector's position, per partition",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "allocator_projector_batch_duration_seconds", "Decode and write of one batch (one database transaction)",
            registry=r, buckets=BATCH_BUCKETS,
        )  # fmt: skip
        self.records = Counter("allocator_projector_records", "Log records projected", registry=r)
        self.batches = Counter("allocator_projector_batches", "Batches written", registry=r)
        self.retries = Counter("allocator_projector_retries", "Batch writes retried while the database was away",
                               registry=r)  # fmt: skip
        self.stale = Gauge("allocator_projector_stale", "1 once another projector moved the stored offsets (exit 3)",
                           registry=r)  # fmt: skip
        self.up = Gauge("allocator_projector_ready", "1 while /readyz answers 200: started and caught up", registry=r)
        self.lag_interval_s = lag_interval_s
        self._lag_at = float("-inf")
        self._started = False
        self._stale = False
        self._caught_up = False
        self.stale.set(0)
        self.up.set(0)

    def on_start(self, log: EventLog, topics: Iterable[str]) -> None:
        self._started = True
        self.observe_lag(log, topics)

    def on_batch(self, records: int, seconds: float, log: EventLog, topics: Iterable[str]) -> None:
        self.records.inc(records)
        self.batches.inc()
        self.batch_seconds.observe(seconds)
        self._caught_up = False
        if time.monotonic() - self._lag_at >= self.lag_interval_s:
            self.observe_lag(log, topics)

    def on_idle(self, log: EventLog, topics: Iterable[str]) -> None:
        """A poll found nothing: probably caught up; confirm it (at most once per interval)."""
        if not self._caught_up or time.monotonic() - self._lag_at >= self.lag_interval_s:
            self.observe_lag(log, topics)

    def on_retry(self) -> None:
        self.retries.inc()

    def on_stale(self) -> None:
        self._stale = True
        self.stale.set(1)
        self.up.set(0)

    def observe_lag(self, log: EventLog, topics: Iterable[str]) -> None:
        ends = log.end_offsets(list(topics))
        self._lag_at = time.monotonic()
        caught_up = True
        for tp, end in ends.items():
            lag = max(end - log.position(tp), 0)
            caught_up = caught_up and lag == 0
            self.lag.labels(tp.topic, str(tp.partition)).set(lag)
        self._caught_up = caught_up
        self.up.set(1 if self.ready() else 0)

    def ready(self) -> bool:
        return self._started and not self._stale and self._caught_up
