"""Writes the work-limit log with the code of this commit: `python -m tests.golden.make_work_limit_log [--out DIR]`.

A log of realistically sized, work-limited decisions, for the audit of logs written by earlier releases
(docs/audit.md): every cycle decides 60-100 pending proposals over the default 2,000 scenarios within the
default `solver_work_limit`, so the solver's budget, not optimality, ends every solve (MIP_WORK_LIMIT). A later
release that changes the solver must still re-derive each of these decisions exactly from the configuration the
log records (rules.md §10.2). It was written by solver revision 1 (the solver before `solver_revision` existed):
its recorded configuration has no `solver_revision` key, and absent means 1 (rules.md §4.8).

Agents propose on the shared topic through the embedded log, each proposal living 11-14 s of log time with 5 s
between cycles, so a proposal deferred by one decision is decided again by the next two; no executor reports
fills, and reservations are released after 4 s, so each cycle sizes against the whole wallet. Log time is
pinned and `solve_ms` is recorded as 0.0: run on the commit that wrote the log, the script writes the same
records. A committed log is never regenerated (tests/golden/README.md).

Written to DIR (default: tests/golden/work_limit): log.sqlite and facts.json (the record digest, the decisions'
ids, paths and sizes of problem).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from allocator.engine.highs_banner import silence_highs_banner
from allocator.service.audit import audit_log
from allocator.service.loop import AllocatorService, group_of
from allocator.service.sequencer import read_decisions
from book.config import AllocatorConfig
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import Topics
from schemas.codec import SingleObjectCodec
from schemas.events import AllocationStatus, Proposal, Side
from tests.golden.common import read_all, records_digest
from tests.golden.make_golden_log import PinnedClock, catch_up, compact, opened, timing_free

HERE = Path(__file__).resolve().parent / "work_limit"
LOG_NAME = "log.sqlite"
FACTS_NAME = "facts.json"
PREFIX = "worklimit"
BOOK = "worklimit"
TOPICS = Topics(PREFIX)
SEED = 20261203
START_MS = 1_790_000_000_000
STEP_MS = 5_000
STEPS = 8
FIRST_BATCH = 70  # proposals before the first cycle, then BATCH before each later one
BATCH = 36
# The defaults but for reservations released within a step (no executor reports fills here).
CONFIG_VALUES: dict[str, Any] = {"fill_timeout_s": 4.0}


def proposals(rng: random.Random, step: int, count: int, created_at: int) -> list[Proposal]:
    """Binary bets shaped like the solver benchmark's (benchmarks/instances.py): price 0.15-0.85, edge 1-9%,
    requests 300-4,000, min size 10-100% of the request, a market each, about one correlation key in five."""
    out = []
    for i in range(count):
        requested = round(rng.uniform(300.0, 4_000.0), 2)
        out.append(
            Proposal(
                proposal_id=f"s{step}-p{i}",
                agent_id=f"agent-{i % 5}",
                strategy_tag="work-limit",
                market_id=f"m{step}-{i}",
                side=Side.BUY if rng.random() < 0.6 else Side.SELL,
                price=round(rng.uniform(0.15, 0.85), 4),
                expected_profit=round(rng.uniform(0.01, 0.09), 5),
                confidence=round(rng.uniform(0.5, 1.0), 3),
                requested_size=requested,
                min_size=round(requested * rng.uniform(0.1, 1.0), 2),
                execution_risk=round(rng.uniform(0.0, 0.3), 3),
                urgency=1.0 / rng.uniform(11.0, 14.0),
                correlation_key=f"k{rng.randrange(18)}",
                created_at=created_at,
            )
        )
    return out


def run(path: Path, config: AllocatorConfig, seed: int, say: Callable[[str], None]) -> None:
    codec = SingleObjectCodec()
    clock = PinnedClock(START_MS)
    rng = random.Random(seed)
    with (
        opened(path, clock) as producer,
        opened(path, clock, group_of(TOPICS, BOOK)) as log,
        opened(path, clock) as reader,
    ):
        service = AllocatorService(
            log, reader, codec, BOOK, config, TOPICS, say=say, decide=timing_free, log_append_time=False
        )
        service.start()
        for step in range(STEPS):
            t0 = START_MS + step * STEP_MS
            clock.now = t0
            for p in proposals(rng, step, FIRST_BATCH if step == 0 else BATCH, t0):
                producer.produce(TOPICS.proposals, codec.encode(p), timestamp_ms=t0)
            producer.flush()
            catch_up(service)
            clock.now = t0 + 1_000
            d = service.cycle().decision
            funded = sum(a.status in (AllocationStatus.FUNDED, AllocationStatus.CUT) for a in d.allocations)
            say(f"cycle {d.cycle}: {len(d.allocations)} decided, {funded} funded, {d.solver_path.value}, "
                f"work {d.work_used}, gap {d.gap}")  # fmt: skip


def facts(path: Path, config: AllocatorConfig, seed: int) -> dict[str, Any]:
    with EmbeddedEventLog(path) as log:
        records = read_all(log, (*TOPICS.inputs, *TOPICS.outputs))
    with EmbeddedEventLog(path) as reader:
        decisions = [d for _, d in read_decisions(reader, SingleObjectCodec(), TOPICS)]
    return {
        "topic_prefix": PREFIX,
        "book": BOOK,
        "seed": seed,
        "config_hash": config.config_hash,
        "records": len(records),
        "records_sha256": records_digest(records),
        "decisions": [
            {
                "decision_id": d.decision_id,
                "solver_path": d.solver_path.value,
                "allocations": len(d.allocations),
                "funded": sum(a.size > 0 for a in d.allocations),
                "work_used": d.work_used,
                "objective": d.objective,
            }
            for d in decisions
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.golden.make_work_limit_log", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write to (default: tests/golden/work_limit)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the session (default: {SEED})")
    parser.add_argument("--force", action="store_true", help="overwrite the log there (never a committed one)")
    args = parser.parse_args(argv)
    target = args.out / LOG_NAME
    if target.exists() and not args.force:
        print(f"{target} exists: a committed log is never regenerated (write a new one: --out)", file=sys.stderr)
        return 2
    silence_highs_banner()
    config = AllocatorConfig.from_mapping(CONFIG_VALUES)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / LOG_NAME
        run(work, config, args.seed, print)
        compact(work)
        with EmbeddedEventLog(work) as reader:
            report = audit_log(reader, SingleObjectCodec(), TOPICS)
        verdicts = Counter(f.verdict for f in report.findings)
        written = facts(work, config, args.seed)
        paths = Counter(d["solver_path"] for d in written["decisions"])
        if verdicts != Counter({"MATCH": STEPS}) or paths != Counter({"MIP_WORK_LIMIT": STEPS}):
            print(f"not the log it must be: verdicts {dict(verdicts)}, paths {dict(paths)}", file=sys.stderr)
            return 1
        target.write_bytes(work.read_bytes())
    (args.out / FACTS_NAME).write_text(json.dumps(written, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {target} ({written['records']} records, {STEPS} decisions, all MIP_WORK_LIMIT, audited MATCH)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
