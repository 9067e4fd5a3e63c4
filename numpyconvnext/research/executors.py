"""Run many independent tasks on this machine's cores or on a Ray cluster, same results either way.

A task is ``function(spec, shared) -> JSON-able result``: a pure function of its spec (a small
dict with its own seed) and of ``shared`` (the candles, sent once). ``run_tasks`` runs the tasks
not yet in the ``TaskStore`` and saves each result atomically the moment it arrives, so an
interrupted run loses only the tasks in flight and a rerun skips the finished ones.

Executors:

- ``local`` (default), ``jobs`` processes (spawned, not forked: a forked child of a process whose
  OpenMP threads already ran can hang), each running one task at a time with one thread
  (``threads.set_num_threads(1)`` and one BLAS thread), so tasks do not fight over cores.
  ``jobs=1`` runs the tasks in this process, also with one thread.
- ``ray``: the same function as a Ray task (``num_cpus=1``); ``shared`` is put in the object store
  once and every task reads it from there; results come back to the driver, which saves them.
  Ray's own scheduling and retries, nothing home-made.

Failures: a task whose worker process dies (killed, out of memory) is retried once; if it dies
again it is reported as failed and the others go on. Locally, the processes that were running
beside it die with the pool too: they are retried one at a time in a fresh single process, and
only a death while a task ran alone is counted against it (a bystander of another task's crash
keeps its full retry). A Python exception in a task is deterministic: reported as failed at
once, not retried. Failed tasks are not stored, so a rerun tries them again.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from numpyconvnext.checkpoint import atomic_write
from numpyconvnext.progress import ProgressBar

EXECUTORS = ("local", "ray")
RETRIES = 1  # a task whose worker dies is retried this many times


class TaskStore:
    """Finished task results, one JSON file per task key under ``folder`` (atomic writes)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def load(self, key: str) -> dict:
        return json.loads(self.path(key).read_text())

    def save(self, key: str, record: dict) -> None:
        text = json.dumps(record)
        atomic_write(self.path(key), lambda handle: handle.write(text.encode()))


@dataclass
class TaskFailure:
    """A task that did not finish: its key, why, and how many times it was started."""

    key: str
    error: str
    attempts: int


@dataclass
class RunSummary:
    """What ``run_tasks`` did: tasks run now, skipped (already stored) and failed."""

    executor: str
    workers: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[TaskFailure] = field(default_factory=list)
    seconds: float = 0.0


def default_jobs() -> int:
    """The cores this process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


# --- one thread per task ---------------------------------------------------------------------------

_shared = None  # a local worker's copy of the shared inputs


@contextmanager
def single_threaded():
    """Run the body with one numpyconvnext thread and one BLAS thread, then restore both."""
    from threadpoolctl import threadpool_limits

    from numpyconvnext import threads

    previous = threads._requested
    threads.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        threads.set_num_threads(previous)


def _timed(function: Callable, spec: dict, shared) -> dict:
    started = time.perf_counter()
    with single_threaded():
        result = function(spec, shared)
    return {"result": result, "seconds": time.perf_counter() - started, "pid": os.getpid()}


def _worker_init(shared) -> None:
    global _shared
    _shared = shared
    from numpyconvnext import threads

    threads.set_num_threads(1)


def _worker_run(function: Callable, spec: dict) -> dict:
    return _timed(function, spec, _shared)


# --- the loop --------------------------------------------------------------------------------------


def run_tasks(function: Callable, tasks: dict[str, dict], shared, store: TaskStore, *,
              executor: str = "local", jobs: int | None = None, address: str | None = None,
              quiet: bool = False, label: str = "tasks") -> RunSummary:
    """Run every task of ``tasks`` ({key: spec}) whose result is not in ``store`` yet with
    ``function(spec, shared)``; save each result as ``{"key", "spec", "result", "seconds"}``.
    ``executor``: "local" (``jobs`` processes; default the core count; 1 = in this process) or
    "ray" (``address``: a cluster's HOST:PORT, "auto", or None for the running/local instance).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    todo = {k: s for k, s in tasks.items() if not store.has(k)}
    summary = RunSummary(executor, jobs if executor == "local" else 0,
                         skipped=[k for k in tasks if k not in todo])
    started = time.perf_counter()
    progress = _TaskProgress(len(todo), label, quiet)

    def finished(key: str, record: dict) -> None:
        store.save(key, {"key": key, "spec": todo[key], **record})
        summary.ran.append(key)
        progress.done(key, record["seconds"])

    def failed(key: str, error: str, attempts: int) -> None:
        summary.failed.append(TaskFailure(key, error, attempts))
        progress.done(key, None, failed=True)

    try:
        if not todo:
            pass
        elif executor == "ray":
            summary.workers = _run_ray(function, todo, shared, address, finished, failed)
        elif jobs == 1:
            for key, spec in todo.items():
                try:
                    record = _timed(function, spec, shared)
                except Exception as error:  # noqa: BLE001 - reported, the others go on
                    failed(key, _describe(error), 1)
                    continue
                finished(key, record)
        else:
            _run_local(function, todo, shared, jobs, finished, failed)
    finally:
        progress.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _describe(error: BaseException) -> str:
    last = traceback.format_exception_only(type(error), error)[-1].strip()
    return last.splitlines()[0]


def _pool(shared, workers: int) -> ProcessPoolExecutor:
    import multiprocessing

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(shared,))


def _run_local(function, todo: dict, shared, jobs: int, finished, failed) -> None:
    """At most ``jobs`` tasks in flight (each then really runs: a dead worker can only take
    running tasks with it); after a crash, the tasks that were running are retried one at a time
    in a single fresh process."""
    pending = list(todo)
    pool = _pool(shared, jobs)
    try:
        while pending:
            running, crashed = {}, []
            broken = False
            while pending or running:
                while pending and len(running) < jobs and not broken:
                    key = pending.pop(0)
                    try:
                        running[pool.submit(_worker_run, function, todo[key])] = key
                    except BrokenProcessPool:  # a worker died since the last wait: not this task
                        pending.insert(0, key)
                        broken = True
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    key = running.pop(future)
                    try:
                        finished(key, future.result())
                    except BrokenProcessPool:
                        broken = True
                        crashed.append(key)
                    except Exception as error:  # noqa: BLE001
                        failed(key, _describe(error), 1)
            if broken:
                pool.shutdown(wait=True, cancel_futures=True)
                # the crash is a task's own only when it was the one running
                _retry_alone(function, todo, shared, crashed, len(crashed) == 1, finished, failed)
                pool = _pool(shared, jobs)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _retry_alone(function, todo: dict, shared, keys: list[str], own_crash: bool, finished,
                 failed) -> None:
    """Each task of a crashed pool, alone in a fresh process, until it finishes or its worker
    has died 1 + RETRIES times under it. A crash with several tasks running counts against
    none of them (it may have been another's): a bystander gets its full retries alone."""
    for key in keys:
        deaths, runs = int(own_crash), 1
        while True:
            pool = _pool(shared, 1)
            runs += 1
            try:
                finished(key, pool.submit(_worker_run, function, todo[key]).result())
                break
            except BrokenProcessPool:
                deaths += 1
                if deaths > RETRIES:
                    failed(key, f"its worker process died {deaths} times (killed or out of "
                                "memory)", runs)
                    break
            except Exception as error:  # noqa: BLE001
                failed(key, _describe(error), runs)
                break
            finally:
                pool.shutdown(wait=True, cancel_futures=True)


def _ray_task(function: Callable, spec: dict, shared) -> dict:
    return _timed(function, spec, shared)


def _run_ray(function, todo: dict, shared, address: str | None, finished, failed) -> int:
    """The tasks as Ray tasks (``max_retries`` = RETRIES for a dead worker); returns the
    cluster's CPU count."""
    try:
        import ray
    except ImportError:
        raise ValueError('--executor ray needs Ray: pip install -e ".[cluster]"') from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    remote = ray.remote(num_cpus=1, max_retries=RETRIES)(_ray_task)
    shared_ref = ray.put(shared)
    refs = {remote.remote(function, spec, shared_ref): key for key, spec in todo.items()}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for ref in done:
            key = refs.pop(ref)
            try:
                finished(key, ray.get(ref))
            except ray.exceptions.RayTaskError as error:  # the task raised
                failed(key, _describe(error.cause if error.cause is not None else error), 1)
            except ray.exceptions.RayError as error:  # the worker died, twice
                failed(key, f"its worker died {1 + RETRIES} times ({type(error).__name__})",
                       1 + RETRIES)
    return int(ray.cluster_resources().get("CPU", 0))


class _TaskProgress:
    """One bar over the tasks, with the ETA from the mean time per finished task."""

    def __init__(self, total: int, label: str, quiet: bool):
        self.bar = ProgressBar(total, label, quiet=quiet or total == 0)
        self.started = time.perf_counter()
        self.failed = 0

    def done(self, key: str, seconds: float | None, failed: bool = False) -> None:
        self.failed += failed
        elapsed = time.perf_counter() - self.started
        finished = self.bar.done + 1
        eta = elapsed / finished * (self.bar.total - finished)
        fields = {"last": key, "eta": _duration(eta)}
        if self.failed:
            fields["failed"] = self.failed
        self.bar.update(1, **fields)

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


__all__ = ["EXECUTORS", "RETRIES", "RunSummary", "TaskFailure", "TaskStore", "default_jobs",
           "run_tasks", "single_threaded"]
