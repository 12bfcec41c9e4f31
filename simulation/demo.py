"""`allocator demo`: one seeded session run twice through the real pipeline — once with the allocator, once with
naive per-agent sizing — then a side-by-side summary and a report folder (HTML, PNG plots, CSV)."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from allocator.engine.cycle import run_cycle
from allocator.service.audit import audit_log
from allocator.service.loop import AllocatorService, Decide, group_of
from book.config import AllocatorConfig
from eventlog.port import Topics
from schemas.codec import SingleObjectCodec
from simulation.agents import AGENT_IDS, AGENTS, propose_all
from simulation.baseline import naive_cycle
from simulation.executor import ExecutorParams
from simulation.market import STEP_MS, WorldParams, simulate_world
from simulation.report import format_table, plot_all, read_run, summary_rows, write_csvs, write_html
from simulation.scenarios import SCENARIOS, Scenario
from simulation.session import BOOK, Backend, CycleStats, RunResult, SessionInputs, run_session

Say = Callable[[str], None]
RUNS: dict[str, Decide] = {"allocator": run_cycle, "naive": naive_cycle}


class DemoError(ValueError):
    """A demo option that cannot work (the message says which and why)."""


@dataclass(frozen=True)
class DemoOptions:
    out: Path
    seed: int = 7
    steps: int = 100
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    kafka: str | None = None
    database: str | None = None
    scenario_count: int = 1000  # the risk model's scenarios per cycle (default 2000): keeps the demo short
    runs: tuple[str, ...] = tuple(RUNS)


def pick_scenarios(names: Sequence[str] | None) -> tuple[str, ...]:
    """`all` (the default) is every stress scenario; `calm` none, alone; else the named ones, each once."""
    if not names:
        return tuple(SCENARIOS)
    if "calm" in names and len(set(names)) > 1:
        others = ", ".join(sorted(set(names) - {"calm"}))
        raise DemoError(f"--scenario calm (no stress) cannot go with {others}: give one or the other")
    out: list[str] = []
    for name in names:
        if name == "all":
            out.extend(SCENARIOS)
        elif name == "calm":
            continue
        elif name in SCENARIOS:
            out.append(name)
        else:
            raise DemoError(f"--scenario {name!r}: choose from {', '.join(['all', 'calm', *SCENARIOS])}")
    return tuple(dict.fromkeys(out))


def build_inputs(seed: int, steps: int, scenario_names: Sequence[str]) -> tuple[SessionInputs, list[Scenario]]:
    """Everything outside the book for one seed: world, proposals, operator script, executor. Deterministic."""
    scenarios = [SCENARIOS[name](steps) for name in scenario_names]
    world = simulate_world(seed, WorldParams(steps=steps, shocks=tuple(s for sc in scenarios for s in sc.shocks)))
    operator = tuple(sorted((a for sc in scenarios for a in sc.operator), key=lambda a: a.step))
    executor = ExecutorParams(broken=tuple(b for sc in scenarios for b in sc.broken))
    inputs = SessionInputs(world, propose_all(world, seed), operator, executor, damaged_step=steps // 2, seed=seed)
    return inputs, scenarios


def demo_config(scenario_count: int) -> AllocatorConfig:
    return AllocatorConfig.from_mapping({"scenario_count": scenario_count, "agents": list(AGENT_IDS)})


def _backend(options: DemoOptions, run: str, stamp: str) -> Backend:
    if options.database is not None and not options.database.startswith("postgresql"):
        raise DemoError(f"--database {options.database!r}: a PostgreSQL URL (without it the demo uses SQLite files)")
    database = options.database or f"sqlite:///{options.out / f'{run}-projection.sqlite'}"
    schema = f"demo_{run}" if options.database else None
    if options.kafka is not None:
        return Backend(f"demo-{stamp}-{run}", database, schema, kafka=options.kafka)
    log = options.out / f"{run}-log.sqlite"
    for stale in options.out.glob(f"{run}-log.sqlite*"):
        stale.unlink()
    return Backend(BOOK, database, schema, log_path=log)


def _progress(say: Say, tty: bool) -> Callable[[str, int, int, CycleStats | None], None]:
    started = time.perf_counter()

    def show(run: str, step: int, steps: int, last: CycleStats | None) -> None:
        if not tty and step % 20 and step != steps:
            return
        state = ""
        if last is not None:
            state = (
                f"equity {last.equity:>9,.0f}  governor {last.governor_state:<7} window {last.window_ms / 1000:>5.0f} s"
                f"  {last.solver_path:<17} {last.solve_ms:>5.0f} ms"
            )
        bar = "#" * (20 * step // steps)
        line = f"{run:<9} [{bar:<20}] step {step:>3}/{steps}  {state}  {time.perf_counter() - started:5.1f} s"
        if tty:
            sys.stdout.write("\r" + line + ("\n" if step == steps else ""))
            sys.stdout.flush()
        else:
            say(line)

    return show


def check_commands(results: Sequence[RunResult], out: Path) -> list[str]:
    """The exact commands that audit the allocator's log and replay both logs into fresh projections: no other
    flag is needed, the configuration and (on an embedded log) the topic prefix come from the log itself. The
    naive run's log is replayed, not audited: its decisions are naive sizing's, which the allocator would not
    re-derive."""
    lines: list[str] = []
    for r in results:
        b = r.backend
        where = (f"--kafka {shlex.quote(b.kafka)} --topic-prefix {shlex.quote(b.topic_prefix)}" if b.kafka
                 else f"--log {shlex.quote(str(b.log_path))}")  # fmt: skip
        if r.name == "allocator":
            report = shlex.quote(str(out / "allocator-audit.json"))
            lines.append(f"allocator audit {where} --report {report}")
        if not b.database_url.startswith("postgresql"):  # SQLite, on either log: a file of its own (no schemas)
            target = "--database " + shlex.quote(f"sqlite:///{out / f'{r.name}-replayed.sqlite'}")
        else:
            target = (
                f"--database {shlex.quote(b.database_url)} --schema {shlex.quote(f'{b.schema or r.name}_replayed')}"
            )
        lines.append(f"allocator replay {where} {target}")
    return lines


def _restart_matches(result: RunResult, config: AllocatorConfig, live_equity: float, cycles: int) -> bool:
    """A fresh service rebuilds its state from the log alone: does it land where the live one stopped?"""
    backend = result.backend
    log, reader = backend.open(group_of(Topics(backend.topic_prefix), BOOK)), backend.open()
    try:
        service = AllocatorService(log, reader, SingleObjectCodec(), BOOK, config, Topics(backend.topic_prefix),
                                   say=lambda _: None)  # fmt: skip
        service.start()
        return abs(service.state.portfolio.equity - live_equity) < 1e-6 and service.state.cycle == cycles
    finally:
        reader.close()
        log.close()


MARKER = ".allocator-demo"
"""The file in `--out` that lists what the demo wrote there: only those files are ever replaced."""


def claim_out(out: Path) -> None:
    """Make `out` the demo's: a new or empty folder, or one the demo wrote before (its own files are removed).

    Anything else is refused, so a report never overwrites or deletes a file the demo did not write."""
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and not marker.is_file() and any(out.iterdir()):
        raise DemoError(f"--out {out}: the folder is not empty and the demo did not write it; name a new or empty one")
    out.mkdir(parents=True, exist_ok=True)
    if marker.is_file():
        for name in marker.read_text(encoding="utf-8").splitlines():
            mine = out / name
            if name and name == mine.name and mine.is_file():  # a plain file name in `out`, nothing else
                mine.unlink()
    marker.write_text("", encoding="utf-8")


def _sign_out(out: Path) -> None:
    """Record every file now in `out` as the demo's (the folder was new, empty or the demo's own)."""
    names = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != MARKER)
    (out / MARKER).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")


def run_demo(options: DemoOptions, say: Say = print) -> int:
    """The whole demo into `options.out`; every file it leaves there is recorded as its own, even after a failure."""
    claim_out(options.out)
    try:
        return _run_demo(options, say)
    finally:
        _sign_out(options.out)


def _run_demo(options: DemoOptions, say: Say) -> int:
    started = time.perf_counter()
    out = options.out
    config = demo_config(options.scenario_count)
    inputs, scenarios = build_inputs(options.seed, options.steps, options.scenarios)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    proposals = sum(len(v) for v in inputs.proposals.values())
    say(f"demo: seed {options.seed}, {options.steps} steps of {STEP_MS // 1000} s log time, {len(AGENTS)} agents "
        f"({proposals} proposals), scenarios: {', '.join(s.name for s in scenarios) or 'none (calm)'}")  # fmt: skip
    for sc in scenarios:
        say(f"  {sc.name}: {sc.story}")
    codec = SingleObjectCodec()
    show = _progress(say, sys.stdout.isatty())
    results: list[RunResult] = []
    for run in options.runs:
        backend = _backend(options, run, stamp)
        say(f"{run}: {backend.describe()}")
        result = run_session(run, inputs, config, backend, codec, RUNS[run], show)
        results.append(result)
    views = [read_run(r) for r in results]
    allocator = next((r for r in results if r.name == "allocator"), None)
    restart_ok, audit_ok, audited = True, True, "not run"
    if allocator is not None and allocator.stats:
        decided = views[results.index(allocator)].decisions
        live_equity = decided[-1]["equity"] if decided else config.initial_cash
        restart_ok = _restart_matches(allocator, config, live_equity, len(decided))
        say(f"restart: the state rebuilt from the allocator's log {'matches' if restart_ok else 'DOES NOT match'} "
            "the live one")  # fmt: skip
        with allocator.backend.open() as reader:
            audit = audit_log(reader, codec, Topics(allocator.backend.topic_prefix), config).to_json()
        audited = (f"{audit['decisions']} decisions re-run: {audit['matched']} matched, "
                   f"{audit['constraints_held']} stopped by the clock's safety net held every constraint, "
                   f"{audit['mismatches']} mismatches")  # fmt: skip
        say(f"audit: {audited}")
        audit_ok = audit["mismatches"] == 0

    headers = [r.name for r in results]
    rows = summary_rows(views, config.initial_cash)
    table = format_table(headers, rows)
    say("")
    say(table)
    if "naive" in headers:
        say("naive: no governor is enforced; its governor rows count what the governors' fold computed on its book")

    plots = plot_all(views, out, config.kill_switch_drawdown, config.solver_time_limit_ms)
    csvs = write_csvs(views, out)
    commands = check_commands(results, out)
    (out / "summary.txt").write_text(
        table
        + "\n\nCheck it yourself: audit the allocator's log and replay both logs\n"
        + "".join(f"  {c}\n" for c in commands),
        encoding="utf-8",
    )
    intro = [
        f"Seed {options.seed}; {options.steps} steps of {STEP_MS // 1000} s of log time; wallet "
        f"{config.initial_cash:,.0f}; {proposals} proposals from {len(AGENTS)} agents; the allocator's risk model "
        f"with {options.scenario_count} scenarios per cycle and a solver budget of {config.solver_work_limit:,} work "
        f"units (safety net {config.solver_time_limit_ms:.0f} ms).",
        "Agents: " + "; ".join(f"{a.agent_id} ({a.what})" for a in AGENTS) + ".",
        *(f"Scenario {sc.name}: {sc.story}" for sc in scenarios),
        "Backends: " + " | ".join(f"{r.name}: {r.backend.describe()}" for r in results),
        f"Audit of the allocator's log (allocator audit, rules.md §10): {audited}.",
    ]
    notes = [
        "The naive run is a baseline, not an allocator: every valid proposal is funded at its full request, in "
        "arrival order, while cash lasts; no netting, no caps, no CVaR budget, and no governor is enforced. Its "
        "governor counts are what the governors' fold computed on that book — nobody acted on them.",
        "The world is not the allocator's model: its factors have heavier tails, complementary pairs resolve "
        "exactly opposite, marks lag the truth by a step. The allocator is graded by outcomes it did not draw.",
        "Caps bind when capital is committed. A position whose mark rises grows past its cap without a new trade "
        "(the exposure plot shows it); the allocator then refuses new risk in that key but does not sell. The CVaR "
        "in the table is the book's at each cycle's start, after the marks moved, so it can stand above the 5% "
        "budget that bound the trades when they were made.",
        "The arbitrageur's two legs are two proposals (the rules have no bundle): the allocator may fund one leg "
        "alone, which is then a directional bet.",
        "Each solve is bounded by a deterministic work budget (MIP_WORK_LIMIT when it runs out), so the allocator "
        "run is the same on any machine for one seed; only a solve stopped by the wall-clock safety net "
        "(MIP_TIME_LIMIT) depends on the machine, and the audit counts those apart. The naive run has no solver.",
        "Parameters are the same for every scenario and were not tuned to favour either run; the stress "
        "scenarios were sized to make their governor fire.",
    ]
    title = f"Capital allocator demo, seed {options.seed}"
    page = write_html(out, title, intro, rows, headers, views, plots, csvs, notes, commands)
    say(f"\nreport: {page}  (plots: {', '.join(plots)}; {len(csvs)} CSV tables)")
    say(f"done in {time.perf_counter() - started:.1f} s")
    return 0 if restart_ok and audit_ok else 1
