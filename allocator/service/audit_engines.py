"""Where the audit's re-solves run: in this process, on a local process pool, or on a Dask distributed cluster.

Every engine takes the tasks in log order and gives each result back in that order, whatever the worker count,
so the report is the same on every engine. A task that raises on a worker comes back as its error (the audit
reports it, verdict ERROR); it is never dropped. A worker that dies is the engine's to retry: Dask reschedules
its tasks, and the process pool is replaced once by a fresh one that is given the unfinished tasks again.

This module imports nothing numerical at the top: a pool worker runs `pin_threads` before numpy is imported, so
BLAS and OpenMP start with one thread per worker.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import resource
import signal
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")  # fmt: skip
_pinned = False


def pin_threads() -> None:
    """One BLAS/OpenMP thread in this process: set before numpy loads (a pool worker's initializer), and through
    threadpoolctl when it is installed (for a process where numpy is already loaded)."""
    global _pinned
    if _pinned:
        return
    _pinned = True
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return
    threadpool_limits(1)


def start_pool_worker() -> None:
    """A pool worker's initializer. Ctrl-C at a terminal signals the whole foreground process group, the workers as
    well as the auditing process: each worker printed a KeyboardInterrupt traceback of its own (caught importing the
    solver, or waiting for its next task) beside the audit's "interrupted". The auditing process alone answers
    Ctrl-C (it stops the pool: `ProcessPoolEngine.map`), so a worker ignores SIGINT; SIGTERM still ends it. Then
    one BLAS thread (`pin_threads`). The worker was started with SIGINT blocked (`_sigint_held`): ignoring it
    discards one that came meanwhile, and then it is unblocked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    pin_threads()


@contextmanager
def _sigint_held() -> Iterator[None]:
    """SIGINT blocked in this thread while a pool may start a worker (its `submit` does, for the first tasks). A
    worker inherits the blocked signal across fork and exec, so a Ctrl-C during its start (the imports before its
    initializer runs, a few hundred milliseconds) cannot print a traceback there. The auditing process is not
    deaf meanwhile: another of its threads takes the signal, or this one as soon as it is unblocked."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


@dataclass(frozen=True)
class Outcome:
    """One task's result, or the error it raised (a message), with the worker that ran it and its peak memory."""

    result: Any
    error: str | None
    worker: int  # process id
    max_rss_kb: int  # the worker process's peak resident memory so far (ru_maxrss, KiB on Linux)


def run_task(work: Callable[[Any], Any], task: Any) -> Outcome:
    """Run one task where it was sent; any exception becomes the outcome's error."""
    pin_threads()
    try:
        result, error = work(task), None
    except Exception as exc:
        result, error = None, f"{type(exc).__name__}: {exc}"
    return Outcome(result, error, os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class AuditEngine(Protocol):
    """Runs `work` on each task; yields (task, outcome) in the tasks' order. Stopping the iteration early cancels
    what is still queued."""

    workers: int
    name: str

    def map(self, work: Callable[[Any], Any], tasks: Iterator[Any]) -> Iterator[tuple[Any, Outcome]]: ...

    def close(self) -> None: ...


class SequentialEngine:
    """In this process, one task after the other."""

    workers = 1
    name = "sequential"

    def map(self, work: Callable[[Any], Any], tasks: Iterator[Any]) -> Iterator[tuple[Any, Outcome]]:
        for task in tasks:
            yield task, run_task(work, task)

    def close(self) -> None:
        return None


class ProcessPoolEngine:
    """A local pool of `jobs` worker processes (started fresh, `spawn`, each pinned to one BLAS thread). At most
    `ahead` tasks per worker wait in the pool, so the sequential fold runs only a little ahead of the solves. The
    workers ignore Ctrl-C (`start_pool_worker`); when it interrupts `map`, the pool is stopped there and then."""

    name = "process pool"

    def __init__(self, jobs: int, ahead: int = 4) -> None:
        if jobs < 1:
            raise ValueError(f"jobs: at least 1, got {jobs}")
        self.workers = jobs
        self.window = jobs * ahead
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _fresh_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=start_pool_worker
        )
        return self._pool

    def map(self, work: Callable[[Any], Any], tasks: Iterator[Any]) -> Iterator[tuple[Any, Outcome]]:
        pool = self._pool or self._fresh_pool()
        queued: deque[tuple[Any, concurrent.futures.Future[Outcome], bool]] = deque()  # (task, future, retried)
        try:
            for task in tasks:
                queued.append((task, _submit(pool, work, task), False))
                while len(queued) >= self.window:
                    pool = yield from self._next(work, queued, pool)
            while queued:
                pool = yield from self._next(work, queued, pool)
        except KeyboardInterrupt:
            self._terminate()
            raise
        finally:
            for _, future, _ in queued:
                future.cancel()

    def _next(
        self,
        work: Callable[[Any], Any],
        queued: deque[tuple[Any, concurrent.futures.Future[Outcome], bool]],
        pool: concurrent.futures.ProcessPoolExecutor,
    ) -> Generator[tuple[Any, Outcome], None, concurrent.futures.ProcessPoolExecutor]:
        task, future, retried = queued[0]
        try:
            outcome = future.result()
        except BrokenProcessPool:
            # A worker died (killed, out of memory, a crash in native code): every unfinished task goes once to
            # a fresh pool; a task that breaks that one too is reported as an error.
            pool = self._fresh_pool()
            unfinished = list(queued)
            queued.clear()
            for i, (t, _, again) in enumerate(unfinished):
                if i == 0 and (retried or again):
                    queued.append((t, _failed("its worker process died, twice: not re-derived"), True))
                    continue
                queued.append((t, _submit(pool, work, t), True))
            return pool
        queued.popleft()
        yield task, outcome
        return pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _terminate(self) -> None:
        """Stop the pool now (Ctrl-C): its workers ignore SIGINT, and a plain shutdown would wait for the solves they
        are running, so they are terminated (SIGTERM: no traceback). The shutdown then only waits for the pool's own
        thread to see them gone and settle every task; until it has, cancelling a task here raced with it settling
        the same task (an InvalidStateError traceback from that thread)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list((pool._processes or {}).values()):  # Python 3.14 has pool.terminate_workers()
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(
    pool: concurrent.futures.ProcessPoolExecutor, work: Callable[[Any], Any], task: Any
) -> concurrent.futures.Future[Outcome]:
    """The task on the pool; a pool that broke before the task got in (a worker died meanwhile) answers with a
    future that holds the break, so the task is retried like the tasks already queued."""
    try:
        with _sigint_held():
            return pool.submit(run_task, work, task)
    except BrokenProcessPool as exc:
        broken: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        broken.set_exception(exc)
        return broken


def _failed(message: str) -> concurrent.futures.Future[Outcome]:
    future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
    future.set_result(Outcome(None, message, 0, 0))
    return future


class DaskEngine:
    """A Dask distributed cluster: the scheduler at `address` (or a `distributed.Client` already connected). The
    project must be installed on the workers. Dask reschedules the tasks of a worker that dies; a task that kills
    its workers again and again comes back as an error (KilledWorker)."""

    name = "dask"

    def __init__(self, address: Any, ahead: int = 4) -> None:
        from distributed import Client

        self._own = not isinstance(address, Client)
        self.client: Any = Client(address) if self._own else address  # type: ignore[no-untyped-call]
        self.client.run(pin_threads)  # workers already running: their numpy is loaded, threadpoolctl may still pin
        self.workers = max(1, sum(self.client.nthreads().values()))
        self.window = self.workers * ahead

    def map(self, work: Callable[[Any], Any], tasks: Iterator[Any]) -> Iterator[tuple[Any, Outcome]]:
        queued: deque[tuple[Any, Any]] = deque()
        try:
            for task in tasks:
                queued.append((task, self.client.submit(run_task, work, task, pure=False)))
                while len(queued) >= self.window:
                    yield self._next(queued)
            while queued:
                yield self._next(queued)
        finally:
            if queued:
                self.client.cancel([future for _, future in queued])

    @staticmethod
    def _next(queued: deque[tuple[Any, Any]]) -> tuple[Any, Outcome]:
        task, future = queued.popleft()
        try:
            outcome: Outcome = future.result()
        except Exception as exc:  # KilledWorker, a lost scheduler: the task is reported, not dropped
            outcome = Outcome(None, f"{type(exc).__name__}: {exc}", 0, 0)
        return task, outcome

    def close(self) -> None:
        if self._own:
            self.client.close()
