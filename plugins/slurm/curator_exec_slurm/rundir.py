"""The run directory's ``slurm/`` part: what the driver and the elements exchange, as files.

::

    <run dir>/slurm/
        jobs                       job ids this run directory's drivers submitted (one per line)
        <attempt>/<n>-<kind>-<stage>/
            job.pkl                what every element of the job needs (stages, partitions, ...)
            job.sh                 the batch script
            in-<i>.pkl             element i's input tasks (its shard; a gang rank's share)
            out-<i>.pkl            element i finished: its outputs and counts
            error-<i>.pkl          element i failed for good (the stage error it raised)
            piece-<i>-<p>.pkl      a shuffle's key element i: its keyed tasks of partition p
            log-<offset>+<j>.txt   stdout and stderr of element offset + j (a gang: log.txt, log-rank<r>.txt)

Every file is written to a temporary name and renamed into place, so a reader (the driver, a reduce
element) never sees half of one, on a local or a network filesystem.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from curator_exec_core.checkpoint.manifest import write_atomic

__all__ = ["dump", "load", "job_path", "input_path", "output_path", "error_path", "piece_path", "element_log",
           "gang_log", "jobs_file"]


def dump(path: str, value: Any) -> None:
    write_atomic(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def load(path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


def job_path(jobdir: str) -> str:
    return os.path.join(jobdir, "job.pkl")


def input_path(jobdir: str, index: int) -> str:
    return os.path.join(jobdir, f"in-{index}.pkl")


def output_path(jobdir: str, index: int) -> str:
    return os.path.join(jobdir, f"out-{index}.pkl")


def error_path(jobdir: str, index: int) -> str:
    return os.path.join(jobdir, f"error-{index}.pkl")


def piece_path(jobdir: str, index: int, partition: int) -> str:
    return os.path.join(jobdir, f"piece-{index}-{partition}.pkl")


def element_log(jobdir: str, offset: int, index: int | str = "%a") -> str:
    """The log of element ``offset + index`` (an array submitted with ``offset``; ``%a``: sbatch's
    ``--output`` pattern for all of its elements)."""
    return os.path.join(jobdir, f"log-{offset}+{index}.txt")


def gang_log(jobdir: str) -> str:
    """A gang job's own log (its ranks log to ``log-rank<r>.txt`` through ``srun``)."""
    return os.path.join(jobdir, "log.txt")


def jobs_file(run_dir: str) -> str:
    return os.path.join(run_dir, "slurm", "jobs")
