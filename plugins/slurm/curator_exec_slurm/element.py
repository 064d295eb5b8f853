"""What one array element (or one gang rank) runs: ``python -m curator_exec_slurm.element KIND JOBDIR OFFSET``.

The element's number is ``SLURM_ARRAY_TASK_ID + OFFSET`` (an array split past ``MaxArraySize``
has an offset per array); a gang rank's is ``SLURM_PROCID``. Every element reads what the driver
wrote for it in the job directory (:mod:`curator_exec_slurm.rundir`) and writes back, atomically:

* ``out-<i>.pkl``: its outputs and its counts per stage (the element finished; also the marker the
  driver waits for),
* or ``error-<i>.pkl``: the stage failure that ended it (a task failed after ``max_retries``
  without ``ignore_failures``): the driver raises it, it does not resubmit the element.

An element that ends without either (killed, cancelled, preempted, node failure) is resubmitted by
the driver. Map elements of a checkpointed run also append to the run's journals, as any backend's
workers do, so a rerun skips what they finished.

Kinds: ``map`` (the segment's stages chained on the element's shard), ``key`` (a shuffle's keys:
one file of keyed tasks per partition), ``reduce`` (one partition: every key element's file for it,
grouped and reduced), ``gang`` (one rank: rank 0 publishes ``gang_root()``, every rank sets up
and runs its share).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from typing import Any

from curator_exec_core.errors import StageFailedError
from curator_exec_core.runner.chain import stream_stages
from curator_exec_core.stages import WorkerMetadata
from curator_exec_core.stats import RunStats
from curator_exec_slurm import rundir

__all__ = ["main"]

#: seconds a gang rank waits for rank 0's root before it gives up
ROOT_TIMEOUT = 300.0


def element_stats(stages: list[Any]) -> RunStats:
    """The element's own stats for ``stages`` (by their index in the pipeline); what it sends back is
    :meth:`RunStats.totals`."""
    return RunStats([f"stage-{i}" for i in range(max(s.index for s in stages) + 1)])


def _worker_id(kind: str, index: int) -> str:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID", "")
    return f"slurm:{job}:{kind}{index}:{socket.gethostname()}:{os.getpid()}"


def _watch(stages: list[Any], totals: RunStats) -> None:
    for stage in stages:
        stage.stats = totals


def run_map(job: dict[str, Any], jobdir: str, index: int, totals: RunStats) -> list[Any]:
    stages = job["stages"]
    _watch(stages, totals)
    tasks = rundir.load(rundir.input_path(jobdir, index))
    try:
        return list(stream_stages(stages, tasks, worker_prefix=_worker_id("map", index)))
    finally:
        observer = stages[0].observer
        if observer is not None:  # the journal: whatever this process still buffers
            observer.flush_all()


def run_key(job: dict[str, Any], jobdir: str, index: int, totals: RunStats) -> list[Any]:
    from curator_exec_core.shuffle import partitioned

    stage = job["stage"]
    _watch([stage], totals)
    keyed, records = stage.key_tasks(rundir.load(rundir.input_path(jobdir, index)))
    for p, piece in enumerate(partitioned(stage, keyed, job["partitions"])):
        rundir.dump(rundir.piece_path(jobdir, index, p), piece)
    return records


def run_reduce(job: dict[str, Any], jobdir: str, index: int, totals: RunStats) -> list[Any]:
    stage = job["stage"]
    _watch([stage], totals)
    key_dir = job["key_dir"]
    pieces = [rundir.load(rundir.piece_path(key_dir, e, index)) for e in range(job["key_elements"])]
    stage.setup(WorkerMetadata(worker_id=_worker_id("reduce", index), node_id=socket.gethostname()))
    try:
        return stage.reduce_groups(item for piece in pieces for item in piece)
    finally:
        stage.teardown()


def run_gang(job: dict[str, Any], jobdir: str, rank: int, totals: RunStats) -> list[Any]:
    stage = job["stage"]
    _watch([stage], totals)
    root_file = os.path.join(jobdir, f"root-{os.environ.get('SLURM_JOB_ID', '0')}.pkl")
    if rank == 0:
        rundir.dump(root_file, stage.root())
    else:
        deadline = time.monotonic() + ROOT_TIMEOUT
        while not os.path.exists(root_file):
            if time.monotonic() > deadline:
                raise TimeoutError(f"gang rank {rank}: rank 0 published no root in {ROOT_TIMEOUT:g} s ({root_file})")
            time.sleep(0.05)
    root = rundir.load(root_file)
    try:
        stage.setup_rank(rank, root, _worker_id("rank", rank))
        return stage.run_share(rundir.load(rundir.input_path(jobdir, rank)))
    finally:
        stage.teardown()


RUNNERS = {"map": run_map, "key": run_key, "reduce": run_reduce, "gang": run_gang}


def element_index(kind: str, offset: int) -> int:
    if kind == "gang":
        return int(os.environ.get("SLURM_PROCID", "0"))
    return int(os.environ.get("SLURM_ARRAY_TASK_ID", "0")) + offset


def main(argv: list[str] | None = None) -> int:
    kind, jobdir, offset = (argv if argv is not None else sys.argv[1:])[:3]
    index = element_index(kind, int(offset))
    job = rundir.load(rundir.job_path(jobdir))
    totals = element_stats(job["stages"] if "stages" in job else [job["stage"]])
    print(f"curator-exec slurm element {kind} {index} on {socket.gethostname()} pid {os.getpid()} "
          f"(restart {os.environ.get('SLURM_RESTART_COUNT', '0')})", flush=True)
    try:
        outputs = RUNNERS[kind](job, jobdir, index, totals)
    except StageFailedError as exc:  # a task failed for good: the run fails, resubmitting cannot help
        traceback.print_exc()
        rundir.dump(rundir.error_path(jobdir, index), exc)
        return 3
    except BaseException as exc:  # a failure of this element (setup raised, ...): reported as it is
        traceback.print_exc()
        try:
            rundir.dump(rundir.error_path(jobdir, index), exc)
        except Exception:
            rundir.dump(rundir.error_path(jobdir, index), RuntimeError(f"{type(exc).__name__}: {exc}"))
        return 4
    rundir.dump(rundir.output_path(jobdir, index), (outputs, totals.totals()))
    return 0


if __name__ == "__main__":
    # pickles name the driver's modules: the job's PYTHONPATH holds the driver's sys.path
    sys.exit(main())

