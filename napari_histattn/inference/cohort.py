"""Run one task per slide of a cohort, here or on a Dask cluster.

:func:`run_cohort` calls ``task(item)`` for every item and returns one row
(a dict) per item, in input order. The task does one slide's work and returns its
row; it must catch its own errors and say so in the row, so that one bad slide
never stops the others. Where the work runs is a :class:`ClusterSpec`:

- ``n_workers=0``: in this process, one slide after another (no Dask).
- ``scheduler="tcp://host:8786"``: an existing ``dask.distributed`` cluster (for
  example one that ``dask-jobqueue`` started on Slurm). Its workers must see the
  slide, checkpoint and output paths (a shared file system).
- otherwise a ``LocalCluster`` of worker *processes* on this machine:
  ``n_workers`` (default: sized to the machine by :func:`local_plan`), each with
  ``threads_per_worker`` torch threads and ``memory_limit`` of memory (default:
  the machine's memory over the workers). Dask's nanny restarts a worker that
  grows past its limit; the slide it held is then retried on another worker.

Each slide is one task (``pure=False``: it writes files). A worker that dies
during a slide (killed, out of memory) makes Dask retry that slide elsewhere; a
slide that kills ``distributed.scheduler.allowed-failures`` + 1 workers in a row
comes back as :class:`distributed.KilledWorker` and is recorded by the caller's
``failed_row``, and the other slides go on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
Row = dict[str, Any]

#: Memory a LocalCluster gives each worker at least when sizing itself to the machine:
#: one slide's working set (an A-MIL bag of a 100k^2 slide, attention sampling's
#: view) with the model loaded, measured in benchmarks/classify.py.
MIN_WORKER_MEMORY = 3 * 2**30


@dataclass(frozen=True)
class ClusterSpec:
    """Where a cohort runs; see the module docstring."""

    scheduler: str | None = None
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None

    def describe(self) -> str:
        if self.scheduler:
            return f"the Dask cluster at {self.scheduler}"
        if self.n_workers == 0:
            return "this process"
        return "a local Dask cluster"


def machine() -> tuple[int, int]:
    """CPU cores this process may use and the machine's memory in bytes."""
    import psutil

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores), int(psutil.virtual_memory().total)


def local_plan(
    n_tasks: int, spec: ClusterSpec, cores: int | None = None, memory: int | None = None
) -> tuple[int, int]:
    """``(workers, torch threads per worker)`` of a local run of ``n_tasks`` slides.

    0 workers means: run in this process. By default one worker per core (never more
    workers than slides, and each with at least :data:`MIN_WORKER_MEMORY`), one
    thread each; one slide, or one core, runs here without a cluster.
    """
    if cores is None or memory is None:
        cores, memory = machine()
    threads = spec.threads_per_worker
    if spec.n_workers is not None:
        workers = spec.n_workers
    else:
        by_memory = max(1, memory // MIN_WORKER_MEMORY)
        workers = min(n_tasks, max(1, cores // (threads or 1)), by_memory)
        if workers < 2:
            workers = 0
    if threads is None:
        threads = max(1, cores // max(1, workers)) if workers else cores
    return workers, threads


def runs_here(n_tasks: int, spec: ClusterSpec) -> bool:
    """Whether :func:`run_cohort` runs ``n_tasks`` in this process (no Dask)."""
    return spec.scheduler is None and local_plan(n_tasks, spec)[0] == 0


def run_cohort(
    task: Callable[[T], Row],
    items: Sequence[T],
    names: Sequence[str],
    spec: ClusterSpec,
    failed_row: Callable[[T, BaseException], Row],
    *,
    on_row: Callable[[int, Row], None] | None = None,
    log: Callable[[str], None] | None = None,
    quiet: bool = False,
) -> list[Row]:
    """``task(item)`` for every item, where ``spec`` says; one row per item, in order.

    Parameters
    ----------
    task
        A module-level function (Dask sends it to the workers by reference).
    names
        One short name per item (Dask task keys, progress).
    failed_row
        The row of an item whose task raised or whose worker died.
    on_row
        Called with ``(index, row)`` as each item finishes, in completion order.
    log
        Where to say where the cohort runs (default: stderr).
    """
    say = log or (lambda text: print(text, file=sys.stderr))
    report = on_row or (lambda index, row: None)
    rows: list[Row | None] = [None] * len(items)
    if runs_here(len(items), spec):
        for index, item in enumerate(items):
            try:
                row = task(item)
            except Exception as exc:  # the task's own catch missed it: still one row
                row = failed_row(item, exc)
            rows[index] = row
            report(index, row)
        return [row for row in rows if row is not None]
    with _ClusterClient(len(items), spec, say) as client:
        _run_distributed(client, task, items, names, failed_row, rows, report, quiet)
    return [row for row in rows if row is not None]


def _run_distributed(
    client: Any,
    task: Callable[[T], Row],
    items: Sequence[T],
    names: Sequence[str],
    failed_row: Callable[[T, BaseException], Row],
    rows: list[Row | None],
    report: Callable[[int, Row], None],
    quiet: bool,
) -> None:
    from distributed import as_completed
    from tqdm.auto import tqdm

    futures = {}
    for index, (item, name) in enumerate(zip(items, names, strict=True)):
        key = f"histattn-{index}-{_safe_key(name)}-{os.urandom(4).hex()}"
        futures[client.submit(task, item, key=key, pure=False)] = index
    with tqdm(total=len(items), desc="slides", unit="slide", disable=quiet) as bar:
        for future in as_completed(futures):
            index = futures[future]
            try:
                row = future.result()
            except Exception as exc:  # KilledWorker, or the task raised past its own catch
                row = failed_row(items[index], exc)
            rows[index] = row
            report(index, row)
            bar.update(1)


class _ClusterClient:
    """A ``distributed.Client`` on ``spec``'s cluster (started and stopped here if local)."""

    def __init__(self, n_tasks: int, spec: ClusterSpec, say: Callable[[str], None]) -> None:
        self.n_tasks, self.spec, self.say = n_tasks, spec, say
        self.cluster: Any = None
        self.client: Any = None

    def __enter__(self) -> Any:
        from distributed import Client, LocalCluster

        from napari_histattn.errors import HistattnError

        spec = self.spec
        if spec.scheduler:
            try:
                _probe(spec.scheduler)
                self.client = Client(spec.scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise HistattnError(
                    f"cannot reach the Dask scheduler at {spec.scheduler}: {exc}"
                ) from exc
            workers = len(self.client.scheduler_info().get("workers", {}))
            self.say(f"Dask: {spec.scheduler}, {workers} worker(s) now")
        else:
            n_workers, threads = local_plan(self.n_tasks, spec)
            n_workers = max(1, n_workers)
            _, memory = machine()
            limit = spec.memory_limit or f"{max(1, memory // n_workers // 2**20)}MiB"
            self.cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,  # one slide at a time per worker; torch uses `threads`
                processes=True,
                memory_limit=limit,
                dashboard_address=":0" if _has_bokeh() else None,
                env={"OMP_NUM_THREADS": str(threads), "HISTATTN_TORCH_THREADS": str(threads)},
            )
            self.client = Client(self.cluster)
            self.say(
                f"Dask: local cluster of {n_workers} worker process(es), {threads} torch "
                f"thread(s) and {limit} each"
            )
        link = getattr(self.client, "dashboard_link", None)
        self.say(f"Dask dashboard: {link}" if link and _has_bokeh() else "Dask dashboard: off")
        return self.client

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def worker_torch_threads() -> None:
    """In a worker of a local cluster: use the torch threads the cluster gave it."""
    threads = os.environ.get("HISTATTN_TORCH_THREADS")
    if threads:
        import torch

        if torch.get_num_threads() != int(threads):
            torch.set_num_threads(int(threads))


def _probe(address: str) -> None:
    """Fail at once (not after the client's timeout) when nothing listens at a TCP address."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls") or parts.hostname is None or parts.port is None:
        return  # another transport: the client says
    with socket.create_connection((parts.hostname, parts.port), timeout=5):
        pass


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def _safe_key(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
