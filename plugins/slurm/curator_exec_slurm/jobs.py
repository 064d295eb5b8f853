"""One run on Slurm (:class:`SlurmRun`): its job directories, its arrays, and the driver's wait.

An :class:`ArrayJob` is one unit of work split into elements: a map segment's shards, a shuffle's
key or reduce phase, a gang's ranks. :meth:`SlurmRun.submit` writes the job's files and submits
it (as several arrays past ``max_array_size``, chained with ``afterany`` so that ``max_concurrent``
holds across them); :meth:`SlurmRun.wait` polls ``squeue`` until no element is alive, collecting
every ``out-<i>.pkl`` as it appears (its counts go to the run's stats at once: the progress bars
move as elements finish), then resubmits the elements that ended without a word (killed,
cancelled, node failure) up to ``max_element_retries`` times, and raises what an element wrote to
``error-<i>.pkl`` (a stage failure is never resubmitted: ``max_retries`` already applied).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from curator_exec_core.checkpoint.manifest import PRIVATE_MODE
from curator_exec_core.errors import CuratorExecError
from curator_exec_core.run import Run
from curator_exec_core.tasks import Task
from curator_exec_slurm import rundir
from curator_exec_slurm.commands import Slurm

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_slurm.executor import SlurmOptions

__all__ = ["ArrayJob", "SlurmRun", "SlurmJobError"]

logger = logging.getLogger("curator_exec.slurm")

#: lines of an element's log quoted in an error
LOG_TAIL = 15


class SlurmJobError(CuratorExecError, RuntimeError):
    """Array elements ended without finishing, more often than ``max_element_retries`` allows."""


@attrs.define
class ArrayJob:
    """One unit of work as Slurm elements; ``results[i]`` is element i's outputs once it finished."""

    name: str
    kind: str  # "map", "key", "reduce", "gang"
    jobdir: str
    elements: int
    resources: list[str]  # sbatch arguments for each element's resources
    job_ids: list[str] = attrs.field(factory=list)
    done: dict[int, list[Task]] = attrs.field(factory=dict)
    retries: int = 0
    #: the array ids and the element offset of each (an array split past max_array_size)
    arrays: list[tuple[str, int, list[int]]] = attrs.field(factory=list)

    @property
    def gang(self) -> bool:
        return self.kind == "gang"

    def outputs(self) -> list[Task]:
        return list(itertools.chain.from_iterable(self.done[i] for i in range(self.elements)))


def site_args(options: SlurmOptions, *, element: bool = True) -> list[str]:
    """sbatch arguments every job of a run shares: where it runs and who pays (partition, account,
    qos) and, for an element (``element``), its time limit and memory."""
    pairs = [("--partition", options.partition), ("--account", options.account), ("--qos", options.qos)]
    if element:
        pairs += [("--time", options.time_limit), ("--mem", options.mem_per_task)]
    return [f"{flag}={value}" for flag, value in pairs if value]


def write_script(path: str, options: SlurmOptions, what: str, body: list[str]) -> str:
    """A batch script at ``path``: the ``env_setup`` line, the driver's ``sys.path`` as ``PYTHONPATH``
    (the pickled stages name the driver's modules), then ``body``."""
    syspath = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    lines = ["#!/bin/bash", f"# written by curator-exec's slurm executor: {what}"]
    if options.env_setup:
        lines.append(options.env_setup)
    lines.append(f"export PYTHONPATH={shlex.quote(syspath)}${{PYTHONPATH:+:$PYTHONPATH}}")
    with open(path, "w") as f:
        f.write("\n".join([*lines, *body]) + "\n")
    os.chmod(path, 0o700)
    return path


def python_command(options: SlurmOptions, module: str, *args: str) -> str:
    """``<interpreter> -m <module> <args>``, quoted; the interpreter is the ``python`` option or the
    driver's own."""
    return " ".join(shlex.quote(a) for a in (options.python or sys.executable, "-m", module, *args))


class SlurmRun:
    """One run's use of Slurm: under ``<run dir>/slurm/<attempt>/``, numbered job directories."""

    def __init__(self, run: Run, options: SlurmOptions, slurm: Slurm, run_dir: str) -> None:
        self.run = run
        self.options = options
        self.slurm = slurm
        self.run_dir = run_dir
        attempt = run.checkpoint.attempt if run.checkpoint is not None else run.id
        self.base = os.path.join(run_dir, "slurm", attempt)
        os.makedirs(self.base, mode=PRIVATE_MODE, exist_ok=True)
        self._seq = itertools.count()
        #: the run's PYTHONHASHSEED for its elements (unless the driver's environment sets one)
        self.hash_seed = int(run.id[:8], 16)  # a run id is hex
        #: job ids of this run that may still be alive (cancelled when the run ends with an error)
        self.live: set[str] = set()
        self.submitted: list[str] = []

    # -- files -----------------------------------------------------------------------------
    def new_job(self, kind: str, stage_name: str, elements: int, resources: list[str]) -> ArrayJob:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stage_name)[:40]
        jobdir = os.path.join(self.base, f"{next(self._seq):03d}-{kind}-{safe}")
        os.makedirs(jobdir, mode=PRIVATE_MODE, exist_ok=True)
        return ArrayJob(f"{self.options.job_name}-{kind}-{safe}", kind, jobdir, elements, resources)

    def write_script(self, job: ArrayJob) -> str:
        """The batch script (:func:`write_script`) running the element; with ``requeue``, ``SIGUSR1``
        (sent before the time limit or a preemption) requeues the element."""
        opts = self.options
        element = python_command(opts, "curator_exec_slurm.element", job.kind, job.jobdir)
        body = ["export PYTHONUNBUFFERED=1",
                # every element hashes a str alike (keys built with hash() group right), as the driver's own if set
                f"export PYTHONHASHSEED=${{PYTHONHASHSEED:-{self.hash_seed}}}"]
        if job.gang:
            body.append(f"exec srun --kill-on-bad-exit=1 --output={shlex.quote(job.jobdir)}/log-rank%t.txt "
                        f"{element} 0")
        elif opts.requeue:
            body += ['requeue() { echo "curator-exec: SIGUSR1: requeueing this element"; '
                     'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"; }',
                     "trap requeue USR1",
                     f'{element} "$1" &',
                     "child=$!",
                     'wait "$child"; status=$?',
                     # a trapped signal interrupts wait: wait again for the element itself
                     'while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done',
                     'exit "$status"']
        else:
            body.append(f'exec {element} "$1"')
        return write_script(os.path.join(job.jobdir, "job.sh"), opts, "one element of a pipeline run", body)

    def common_args(self, job: ArrayJob) -> list[str]:
        opts = self.options
        args = [f"--job-name={job.name}", f"--chdir={job.jobdir}", "--kill-on-invalid-dep=yes", "--open-mode=append",
                *site_args(opts)]
        if opts.requeue and not job.gang:
            args += ["--requeue", f"--signal=B:USR1@{int(opts.requeue_signal_s)}"]
        else:
            args.append("--no-requeue")
        return args + list(job.resources) + list(opts.sbatch_args)

    # -- submitting -------------------------------------------------------------------------
    def submit(self, job: ArrayJob, indices: Sequence[int] | None = None, dependency: str | None = None) -> None:
        """Submit ``indices`` (default: every element) of ``job``; ``dependency``: an sbatch
        ``--dependency`` for the first array (a reduce after its key phase: ``afterok:<id>``)."""
        script = os.path.join(job.jobdir, "job.sh")
        if not os.path.exists(script):
            self.write_script(job)
        todo = sorted(range(job.elements) if indices is None else indices)
        job.arrays = []
        if job.gang:
            size = job.elements
            args = [*self.common_args(job), f"--ntasks={size}", f"--output={rundir.gang_log(job.jobdir)}"]
            if dependency:
                args.append(f"--dependency={dependency}")
            job_id = self._sbatch(args, script, [])
            job.arrays.append((job_id, 0, list(range(size))))
            return
        cap = self.options.max_array_size
        previous = None
        for offset, group in itertools.groupby(todo, key=lambda i: i // cap * cap):
            members = list(group)
            spec = _array_spec([i - offset for i in members])
            if self.options.max_concurrent:
                spec += f"%{self.options.max_concurrent}"
            args = [*self.common_args(job), f"--array={spec}", f"--output={rundir.element_log(job.jobdir, offset)}"]
            after = f"afterany:{previous}" if previous else dependency
            if after:
                args.append(f"--dependency={after}")
            previous = self._sbatch(args, script, [str(offset)])
            job.arrays.append((previous, offset, members))

    def _sbatch(self, args: list[str], script: str, script_args: list[str]) -> str:
        job_id = self.slurm.sbatch(args, script, script_args)
        self.live.add(job_id)
        self.submitted.append(job_id)
        with open(rundir.jobs_file(self.run_dir), "a") as f:
            f.write(job_id + "\n")
        logger.info("slurm: submitted job %s (%s)", job_id, " ".join(a for a in args if a.startswith("--array")))
        return job_id

    # -- waiting ------------------------------------------------------------------------------
    def wait(self, job: ArrayJob, on_done: Callable[[int, list[Task]], None] | None = None) -> list[Task]:
        """Until every element of ``job`` finished (resubmitting those that ended without a word);
        returns the outputs in element order."""
        while True:
            self._poll_until_ended(job, on_done)
            missing = [i for i in range(job.elements) if i not in job.done]
            self._raise_errors(job, missing)
            if not missing:
                return job.outputs()
            if job.retries >= self.options.max_element_retries:
                raise SlurmJobError(self._lost_message(job, missing))
            job.retries += 1
            logger.warning("slurm: %d element(s) of %s ended without finishing (%s); resubmitting them "
                           "(retry %d of %d)", len(missing), job.name, _short(missing), job.retries,
                           self.options.max_element_retries)
            if job.gang:  # its ranks run together: every rank again, no output of the failed attempt kept
                for rank in job.done:
                    os.remove(rundir.output_path(job.jobdir, rank))
                job.done.clear()
            self.submit(job, None if job.gang else missing)

    def _poll_until_ended(self, job: ArrayJob, on_done: Callable[[int, list[Task]], None] | None) -> None:
        ids = [a[0] for a in job.arrays]
        interval = self.options.poll_interval
        while True:
            alive = self.slurm.alive(ids)
            self._collect(job, on_done)
            if not alive:
                for job_id in ids:
                    self.live.discard(job_id)
                self._collect(job, on_done)  # what finished between the two looks
                return
            time.sleep(interval)

    def _collect(self, job: ArrayJob, on_done: Callable[[int, list[Task]], None] | None) -> None:
        for i in range(job.elements):
            if i in job.done:
                continue
            path = rundir.output_path(job.jobdir, i)
            if not os.path.exists(path):
                continue
            outputs, counts = rundir.load(path)
            job.done[i] = outputs
            if counts:
                self.run.stats.add_all(counts)
            if on_done is not None:
                on_done(i, outputs)

    def _raise_errors(self, job: ArrayJob, missing: list[int]) -> None:
        for i in missing:
            path = rundir.error_path(job.jobdir, i)
            if os.path.exists(path):
                self.cancel()
                error = rundir.load(path)
                if isinstance(error, BaseException):
                    raise error
                raise SlurmJobError(f"element {i} of {job.name} failed: {error}")

    def _lost_message(self, job: ArrayJob, missing: list[int]) -> str:
        states = []
        for job_id, _, _ in job.arrays:
            for record in self.slurm.job_records(job_id):
                if record.get("JobState") not in (None, "COMPLETED"):
                    states.append(f"{record.get('JobId')}: {record.get('JobState')} ({record.get('Reason', '')})")
        first = missing[0]
        log = _log_file(job, first, self.options.max_array_size)
        return (f"{len(missing)} element(s) of {job.name} ({_short(missing)}) ended without finishing after "
                f"{job.retries + 1} submission(s) (max_element_retries={self.options.max_element_retries}). "
                f"Slurm says: {'; '.join(states[:5]) or 'nothing (the jobs are gone from squeue and scontrol)'}. "
                f"The log of element {first} ({log}) ends with:\n{_tail(log)}")

    def cancel(self) -> None:
        """scancel every job of this run that may still be alive (nothing else)."""
        if self.live:
            logger.warning("slurm: cancelling job(s) %s", ", ".join(sorted(self.live)))
            self.slurm.cancel(sorted(self.live))
            self.live.clear()


def _array_spec(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    parts = []
    for _, group in itertools.groupby(enumerate(indices), key=lambda p: p[1] - p[0]):
        run = [v for _, v in group]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def _short(indices: Sequence[int]) -> str:
    return "elements " + _array_spec(indices)


def _log_file(job: ArrayJob, index: int, max_array_size: int) -> str:
    """Element ``index``'s log: in the array it was submitted in (see :meth:`SlurmRun.submit`)."""
    if job.gang:
        return os.path.join(job.jobdir, "log-rank0.txt")
    offset = index // max_array_size * max_array_size
    return rundir.element_log(job.jobdir, offset, index - offset)


def _tail(path: str, lines: int = LOG_TAIL) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()[-lines:]
    except OSError as exc:
        return f"  (no log: {exc.strerror}; if the compute nodes cannot see the run directory, put it on "\
               "shared storage)"
    return "\n".join("  " + line for line in text)

