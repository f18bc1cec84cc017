"""How many CPU threads torch gets for one run: the cores this process may use, less the
ones other processes are busy on.

torch starts with one intra-op thread per physical core and its OpenMP threads wait for
each other at the end of every parallel kernel. On a machine where other processes hold
the cores, a kernel's threads are scheduled at different times and the run slows far more
than its share of the CPU would say (issue 14 measured A-MIL at 15 s quiet and 380 s
under load). So a run takes ``cores - busy`` threads, at least one, where ``busy`` is the
number of other runnable tasks seen three times over ~5 ms (``/proc/loadavg``'s running
count: cheap, and a load average lags by a minute). An explicit count always wins:
``threads=`` in :func:`~napari_histattn.inference.engine.classify`, ``--threads`` on the
command line, or the ``HISTATTN_TORCH_THREADS`` environment variable (set by our Dask
workers).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from napari_histattn.errors import HistattnError

__all__ = ["THREADS_ENV_VAR", "busy_cores", "run_threads", "torch_threads", "usable_cores"]

#: Environment variable giving torch's thread count (our Dask workers set it).
THREADS_ENV_VAR = "HISTATTN_TORCH_THREADS"


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota
    (a container's ``--cpus``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, int(quota + 0.5)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``, or None."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def busy_cores(samples: int = 3, interval_s: float = 0.002) -> float:
    """Runnable tasks of other processes now: the median over ``samples`` reads of
    ``/proc/loadavg``'s running count, less this process's own running threads (the
    reading thread at least). 0 where that file does not exist."""
    import psutil

    counts = []
    me = psutil.Process()
    for i in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        try:
            mine = sum(1 for t in me.threads() if _is_running(me.pid, t.id))
        except (psutil.Error, OSError):
            mine = 1
        counts.append(max(0, running - max(1, mine)))
        if i + 1 < samples:
            time.sleep(interval_s)
    counts.sort()
    return float(counts[len(counts) // 2])


def _is_running(pid: int, tid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "R"


def torch_threads(requested: int | None = None) -> tuple[int, str]:
    """``(threads, why)`` for a run: ``requested``, else ``HISTATTN_TORCH_THREADS``, else
    the usable cores less the busy ones (at least 1)."""
    if requested is not None:
        if int(requested) < 1:
            raise HistattnError(f"threads must be at least 1, got {requested}")
        return int(requested), "as asked"
    given = os.environ.get(THREADS_ENV_VAR, "").strip()
    if given:
        try:
            value = int(given)
        except ValueError:
            value = 0
        if value < 1:
            raise HistattnError(f"{THREADS_ENV_VAR} must be a positive integer, got {given!r}")
        return value, f"from {THREADS_ENV_VAR}"
    cores = usable_cores()
    busy = busy_cores()
    threads = max(1, min(cores, cores - int(round(busy))))
    if threads < cores:
        return threads, f"{cores} cores, {busy:g} busy with other work"
    return threads, f"{cores} cores"


@contextmanager
def run_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the block, then restored."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
