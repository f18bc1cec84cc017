"""Shared parser building for the ``histattn`` subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def add_command(subparsers: Any, name: str, help: str, description: str | None) -> Any:
    """A subcommand parser whose ``--help`` shows ``description`` (the module docstring) as written."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


#: Seeds the command line takes: what every RNG here (torch, numpy, random) accepts.
MAX_SEED = 2**32 - 1


def seed_arg(text: str) -> int:
    """``--seed``: an integer 0 to 2^32 - 1, else a usage error (never an OverflowError)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is within 0-{MAX_SEED}, got {value}")
    return value


#: ``args`` names that :func:`add_cluster_arguments` adds (not options of a slide's run).
CLUSTER_ARGS = ("scheduler", "dask_workers", "threads_per_worker", "memory_limit")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a cohort runs: ``--dask-workers``, ``--threads-per-worker``, ``--memory-limit``,
    ``--scheduler`` (see :mod:`napari_histattn.inference.cohort`)."""
    group = parser.add_argument_group("where the slides run (dask.distributed)")
    group.add_argument(
        "--dask-workers",
        type=int,
        metavar="N",
        help="worker processes of a local Dask cluster; 0 runs the slides one by one in this "
        "process (default: one per core; one slide or one core runs here)",
    )
    group.add_argument(
        "--threads-per-worker",
        type=int,
        metavar="T",
        help="torch threads of each worker (default: the cores over the workers)",
    )
    group.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="memory of each local worker, for example 4GiB (default: the machine's memory "
        "over the workers); a worker above it is restarted and its slide retried",
    )
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on an existing Dask cluster, for example tcp://10.0.0.5:8786 (its workers "
        "must see the slide, checkpoint and output paths)",
    )


def cluster_spec(args: argparse.Namespace) -> Any:
    """The :class:`~napari_histattn.inference.cohort.ClusterSpec` the arguments ask for."""
    from napari_histattn.errors import HistattnError
    from napari_histattn.inference.cohort import ClusterSpec

    for name in ("dask_workers", "threads_per_worker"):
        value = getattr(args, name, None)
        low = 0 if name == "dask_workers" else 1
        if value is not None and value < low:
            flag = "--" + name.replace("_", "-")
            raise HistattnError(f"{flag} must be at least {low}, got {value}")
    if args.scheduler and args.dask_workers is not None:
        raise HistattnError("give --scheduler or --dask-workers, not both")
    return ClusterSpec(
        scheduler=args.scheduler,
        n_workers=args.dask_workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
    )
