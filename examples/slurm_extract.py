"""Extract a feature store on a SLURM cluster, start to finish, without a prompt.

Starts a dask-jobqueue SLURMCluster (one GPU per job), waits for its first worker, runs
`clare extract` on it, and stops the cluster, also when the extract fails or is interrupted:

    pip install 'clare[cluster]'
    python examples/slurm_extract.py --config configs/df40.yaml --split train --jobs 8 \
        --cores 8 --memory 64GB --walltime 12:00:00 --gpus 1

Workers are SLURM jobs that import clare and open the config's files themselves: they need the
same Python environment (the same clare, torch and diffusers) and the same paths (data root,
weights, stores) as this machine, e.g. a shared file system and a venv on it.

`--local N` starts a Dask LocalCluster with N workers instead (no scheduler needed): the same
flow on one machine, which is how the test suite runs this script.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from clare.errors import ClareError, ConfigError

ClusterFactory = Callable[[], AbstractContextManager[Any]]


def slurm_cluster(jobs: int, cores: int, memory: str, walltime: str, gpus: int) -> ClusterFactory:
    """A factory of a SLURMCluster scaled to `jobs` jobs, one Dask worker process per job."""

    def start() -> AbstractContextManager[Any]:
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError:
            raise ConfigError("dask-jobqueue is not installed; pip install 'clare[cluster]'") from None
        extra = [f"--gres=gpu:{gpus}"] if gpus > 0 else []
        cluster = SLURMCluster(cores=cores, memory=memory, processes=1, walltime=walltime,
                               job_extra_directives=extra)
        cluster.scale(jobs=jobs)
        return cluster

    return start


def local_cluster(workers: int) -> ClusterFactory:
    """A factory of a Dask LocalCluster with `workers` single-threaded worker processes."""

    def start() -> AbstractContextManager[Any]:
        from dask.distributed import LocalCluster

        # ":0": any free port for the dashboard (8787 may be another cluster's).
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            dashboard_address=":0")

    return start


def extract_on_cluster(start: ClusterFactory, config: Path, split: str, *,
                       overrides: Sequence[str] = (), device: str | None = None,
                       wait_seconds: float = 600.0, quiet: bool = False) -> Any:
    """Start the cluster, wait for one worker, run the extract against its scheduler, stop it.
    Returns the extract's summary (clare.stages.extract.ExtractSummary)."""
    from dask.distributed import Client

    from clare.config_files import load_config
    from clare.stages.extract import run_extract

    cfg = load_config(config, list(overrides))  # a bad config fails before any job is queued
    with start() as cluster, Client(cluster) as client:
        try:
            client.wait_for_workers(1, timeout=wait_seconds)
        except TimeoutError:
            raise ConfigError(f"no Dask worker joined within {wait_seconds:g} s; check the jobs "
                              "with squeue, or raise --wait") from None
        return run_extract(cfg, split=split, scheduler=cluster.scheduler_address, device=device,
                           quiet=quiet)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", type=Path, required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[],
                        help="dotted.key=value, as clare's --set (repeatable)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the config's)")
    parser.add_argument("--jobs", type=int, default=8, help="SLURM jobs, one worker each")
    parser.add_argument("--cores", type=int, default=8)
    parser.add_argument("--memory", default="64GB")
    parser.add_argument("--walltime", default="12:00:00")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per job (--gres=gpu:N)")
    parser.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a worker")
    parser.add_argument("--local", type=int, default=None, metavar="N",
                        help="a LocalCluster of N workers instead of SLURM")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def _bad_number(args: argparse.Namespace) -> str | None:
    """The first option whose number cannot work (a negative --wait was a traceback from Dask,
    a negative --local a silent wait of --wait seconds)."""
    limits = {"--jobs": (args.jobs, 1), "--cores": (args.cores, 1), "--gpus": (args.gpus, 0),
              "--local": (args.local, 1)}
    for option, (value, least) in limits.items():
        if value is not None and value < least:
            return f"{option} {value}: must be at least {least}"
    if not args.wait > 0:  # also NaN
        return f"--wait {args.wait:g}: must be a positive number of seconds"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    problem = _bad_number(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    start = (local_cluster(args.local) if args.local is not None else
             slurm_cluster(args.jobs, args.cores, args.memory, args.walltime, args.gpus))
    try:
        summary = extract_on_cluster(start, args.config, args.split, overrides=args.overrides,
                                   device=args.device, wait_seconds=args.wait, quiet=args.quiet)
    except ClareError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    print(f"{summary.store}: {summary.ok} rows extracted, {summary.failed} failed; the cluster is stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
