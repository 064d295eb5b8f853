"""The ``slurm`` executor: a pipeline as Slurm job arrays over a shared run directory.

The driver (wherever ``pipeline.run`` is called: a login node, a job) never runs a stage. The run
driver of the core splits the pipeline into segments; each map segment becomes one ``sbatch
--array`` whose elements run the segment's stages on a deterministic shard of its input
(``tasks_per_element`` consecutive tasks), a shuffle becomes a key array and a reduce array chained
with ``--dependency=afterok`` (files of keyed tasks through the run directory), a gang one job of
``gang_size`` tasks started by ``srun``. Elements run the core's stage runner, so ids, retries,
failure records, counts and checkpoint journals are what they are on every backend.

A run needs a directory every node sees: the checkpoint (``checkpoint_path``), or a fresh directory
under the ``scratch_dir`` option for a run without one. See ``docs/executors/slurm.md``.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import shlex
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from curator_exec_core import BaseExecutor, Capacity, ExecutorOptions, Task
from curator_exec_core.capacity import GpuInfo, NodeCapacity
from curator_exec_core.checkpoint.manifest import EXECUTOR_FILES, PRIVATE_MODE
from curator_exec_core.config import option
from curator_exec_core.errors import CheckpointError, ConfigError, PlanError
from curator_exec_core.gang import ManagedGang
from curator_exec_core.run import Run
from curator_exec_core.runner import ManagedStage
from curator_exec_core.shuffle import ManagedShuffle
from curator_exec_core.source import Source
from curator_exec_core.stages import ProcessingStage
from curator_exec_core.tasks import FailedTask, PipelineResult
from curator_exec_slurm import rundir
from curator_exec_slurm.commands import Slurm, SlurmError
from curator_exec_slurm.jobs import ArrayJob, SlurmRun, python_command, site_args, write_script

__all__ = ["SlurmExecutor", "SlurmOptions", "SUBMIT_DIR"]

logger = logging.getLogger("curator_exec.slurm")

#: what ``wait=False`` writes into the checkpoint directory for the driver job it submits
SUBMIT_DIR = EXECUTOR_FILES + "submit"
#: elements per schedulable slot of the partition when ``tasks_per_element`` is not set
ELEMENTS_PER_SLOT = 2
_TIME = re.compile(r"^(\d+|\d+:\d{2}(:\d{2})?|\d+-\d+(:\d{2}(:\d{2})?)?|UNLIMITED|INFINITE)$", re.IGNORECASE)
_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)

#: seconds the job proving that the compute nodes see the run directory may wait to start
SHARED_PATH_TIMEOUT = 60.0
#: (filesystem, partition, Slurm environment) proven shared in this process
_SHARED: set[tuple] = set()
#: each run's view of Slurm (the executor holds settings only)
_RUNS: weakref.WeakKeyDictionary[Run, SlurmRun] = weakref.WeakKeyDictionary()


@attrs.define(kw_only=True)
class SlurmOptions(ExecutorOptions):
    """Options of ``slurm``: where and how the jobs run, and how the driver follows them."""

    partition: str | None = option(None, str, "Partition to submit to (sbatch --partition). None: the cluster's "
                                   "default partition.", allow_none=True)
    account: str | None = option(None, str, "Account to charge (sbatch --account).", allow_none=True)
    qos: str | None = option(None, str, "Quality of service (sbatch --qos).", allow_none=True)
    time_limit: str | None = option(
        None, str, "Time limit of each element (sbatch --time): minutes, 'HH:MM:SS' or 'D-HH:MM:SS'. None: the "
        "partition's default.", allow_none=True)
    cpus_per_task: int | None = option(
        None, int, "CPUs per element (sbatch --cpus-per-task). None: the most any stage of the job asks for "
        "(resources.cpus, rounded up).", minimum=1, allow_none=True)
    gpus_per_task: int | None = option(
        None, int, "GPUs per element (sbatch --gres=gpu:N). None: the most any stage of the job asks for "
        "(resources.gpus, rounded up).", minimum=0, allow_none=True)
    mem_per_task: str | None = option(
        None, str, "Memory per element (sbatch --mem), e.g. '4G'. None: the partition's default.", allow_none=True)
    tasks_per_element: int | None = option(
        None, int, "Input tasks per array element (the shard size). None: the input spread over two elements "
        "per slot of the partition (its CPUs divided by the CPUs an element takes).", minimum=1, allow_none=True)
    max_array_size: int = option(
        1001, int, "Most elements one array may have (the cluster's MaxArraySize): a job with more is split "
        "into several arrays, each started after the one before ended (afterany), so max_concurrent holds.",
        minimum=1)
    max_concurrent: int | None = option(
        None, int, "Most elements of an array running at once (the %N throttle of sbatch --array). None: as "
        "many as Slurm gives.", minimum=1, allow_none=True)
    sbatch_args: list = option(
        [], list, "More sbatch arguments for every job, e.g. ['--constraint=a100', '--exclusive'].")
    env_setup: str = option(
        "", str, "Shell line(s) every job runs first, e.g. 'module load cuda; source /shared/venv/bin/activate'. "
        "Empty: none; jobs then run this driver's own interpreter (the 'python' option), so a virtualenv on "
        "shared storage just works.")
    python: str | None = option(
        None, str, "The interpreter the jobs run. None: this driver's (sys.executable).", allow_none=True)
    poll_interval: float = option(2.0, float, "Seconds between two looks at squeue and the run directory.",
                                  minimum=0.05)
    requeue: bool = option(
        True, bool, "Elements are requeued when preempted (sbatch --requeue) and requeue themselves on SIGUSR1, "
        "which Slurm sends requeue_signal_s before the time limit (sbatch --signal=B:USR1@N).")
    requeue_signal_s: int = option(60, int, "Seconds before its time limit an element gets SIGUSR1 (requeue).",
                                   minimum=1)
    max_element_retries: int = option(
        2, int, "Times an element that ended without finishing (killed, cancelled, node failure, preempted "
        "without requeue) is resubmitted before the run fails. A stage that raised is not an element failure: "
        "max_retries and ignore_failures apply to it as on every backend.", minimum=0)
    scratch_dir: str | None = option(
        None, str, "A directory on storage every node sees, under which a run without checkpoint_path gets a "
        "run directory of its own (removed when the run succeeds). None: such a run is refused.",
        allow_none=True)
    wait: bool = option(
        True, bool, "run() waits for the run and returns its result. False: run() submits one driver job that "
        "runs the pipeline on the cluster and returns at once (result.metrics['slurm'] holds the job id); "
        "follow it with `curator-exec status DIR`; a run() with wait=True on the same checkpoint afterwards "
        "returns the outputs. Needs checkpoint_path.")
    job_name: str = option("curator-exec", str, "Prefix of the jobs' names (squeue shows them).")
    slurm_env: dict = option(
        {}, dict, "Environment variables for Slurm's commands, e.g. {'SLURM_CONF': '/etc/slurm/other.conf'}.")

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.time_limit is not None and not _TIME.match(self.time_limit):
            raise ConfigError(f"option 'time_limit': {self.time_limit!r} is not a Slurm time: give minutes ('90'), "
                              "'HH:MM:SS', 'D-HH:MM:SS' or 'UNLIMITED'")
        if self.mem_per_task is not None and not _MEM.match(self.mem_per_task):
            raise ConfigError(f"option 'mem_per_task': {self.mem_per_task!r} is not a Slurm memory size: give "
                              "megabytes ('4000') or a size with a unit ('4G', '512M')")
        if not all(isinstance(a, str) for a in self.sbatch_args):
            raise ConfigError(f"option 'sbatch_args' must be a list of strings, got {self.sbatch_args!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.slurm_env.items()):
            raise ConfigError(f"option 'slurm_env' must map strings to strings, got {self.slurm_env!r}")


def _gres_gpus(gres: str) -> int:
    """GPUs in a node's ``Gres`` (``gpu:a100:4(S:0-1),gpu:2``)."""
    total = 0
    for item in (gres or "").split(","):
        item = re.sub(r"\(.*?\)", "", item.strip())
        parts = item.split(":")
        if parts[0] == "gpu":
            try:
                total += int(parts[-1]) if len(parts) > 1 else 1
            except ValueError:
                total += 1
    return total


def node_capacity(record: dict[str, Any]) -> NodeCapacity:
    """One node of ``scontrol show node -o`` in the core's shape (GPUs from ``Gres``; Slurm does not
    report their memory: 0)."""
    name = record["NodeName"]
    gpus = [GpuInfo(index=i, uuid=f"slurm-{name}-gpu{i}", name="gpu", memory_total=0, memory_free=0)
            for i in range(_gres_gpus(record.get("Gres", "")))]
    memory = int(record.get("RealMemory", "0") or 0) * 2**20
    reason = None if gpus else f"Slurm lists no gpu gres on node {name} (Gres={record.get('Gres', '(null)')})"
    return NodeCapacity(node_id=name, hostname=record.get("NodeHostName", name), cpus=float(record.get("CPUTot", 0)),
                        memory=memory, gpus=gpus, is_head=False, gpu_reason=reason)


class SlurmExecutor(BaseExecutor):
    """Runs a pipeline as Slurm job arrays (see the module docstring and ``docs/executors/slurm.md``)."""

    name = "slurm"
    Options = SlurmOptions
    options: SlurmOptions
    concurrent_stages = False  # an element runs its segment's stages one after another, in one process

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False, **options: Any) -> None:
        super().__init__(config, ignore_head_node, **options)
        self.slurm = Slurm(self.options.slurm_env)

    # -- capacity and plan -----------------------------------------------------------------
    def partition_name(self) -> str:
        return self.options.partition or self.slurm.default_partition()

    def capacity(self) -> Capacity:
        """The partition's usable nodes (not down, drained or failing). ``ignore_head_node`` changes
        nothing: no Slurm node is the driver's, the driver runs outside every allocation."""
        problem = self.slurm.available()
        if problem is not None:
            raise PlanError(f"executor 'slurm': {problem}")
        name = self.partition_name()
        self.slurm.partition(name)  # a clear error for an unknown partition
        records = [r for r in self.slurm.nodes(name)
                   if not any(bad in r.get("State", "") for bad in ("DOWN", "DRAIN", "FAIL", "NOT_RESPONDING"))]
        if not records:
            raise PlanError(f"executor 'slurm': partition {name!r} has no usable node (all down or drained: "
                            f"`sinfo -p {name}`)")
        return Capacity(nodes=[node_capacity(r) for r in records])

    def stage_serializer(self) -> Callable[[Any], Any] | None:
        return pickle.dumps

    def element_cpus(self, stages: Sequence[ManagedStage]) -> int:
        """CPUs of one element running ``stages``: ``cpus_per_task``, else the most any of them asks for."""
        return self.options.cpus_per_task or max(1, math.ceil(max(s.resources.cpus for s in stages) - 1e-9))

    def element_resources(self, stages: Sequence[ManagedStage], gang: bool = False) -> list[str]:
        """sbatch arguments for one element running ``stages`` (or one gang rank)."""
        opts = self.options
        cpus = self.element_cpus(stages)
        gpus = opts.gpus_per_task if opts.gpus_per_task is not None else \
            math.ceil(max(s.resources.gpus for s in stages) - 1e-9)
        args = [f"--cpus-per-task={cpus}"] + ([] if gang else ["--ntasks=1"])
        if gpus:
            args.append(f"--gres=gpu:{gpus}")
        return args

    def elements_for(self, n_tasks: int, stages: Sequence[ManagedStage], capacity: Capacity | None = None) -> int:
        if self.options.tasks_per_element:
            return max(1, math.ceil(n_tasks / self.options.tasks_per_element))
        cpus = self.element_cpus(stages)
        nodes = capacity.nodes if capacity is not None else ()
        slots = sum(int(n.cpus // cpus) for n in nodes) or 1
        return max(1, min(n_tasks, ELEMENTS_PER_SLOT * slots))

    # -- the run directory -----------------------------------------------------------------
    def check_shared_path(self, path: str) -> None:
        """Jobs a killed driver left running on this checkpoint directory are cancelled (this run holds
        its lock, so they are orphans; the journals keep what they finished). That the compute nodes
        see the directory is proven by :meth:`prove_shared`, at the run's first job."""
        jobs = rundir.jobs_file(path)
        if not os.path.exists(jobs):
            return
        with open(jobs) as f:
            ids = [line.strip() for line in f if line.strip()]
        alive = self.slurm.alive(ids)
        if alive:
            owners = sorted({k.split("_", 1)[0] for k in alive})
            logger.warning("slurm: cancelling job(s) %s left running on %s by an earlier driver", ", ".join(owners),
                           path)
            self.slurm.cancel(owners)
        os.remove(jobs)

    def prove_shared(self, run_dir: str) -> None:
        """Raise :class:`CheckpointError` unless a compute node of the partition sees ``run_dir``: a
        one-CPU job reads the driver's marker there and writes its own, which the driver must then
        see (a node-local folder of the same name, such as a login node's ``/tmp``, fails both ways).
        Cached per filesystem and partition for this process. A check job that has not started within
        :data:`SHARED_PATH_TIMEOUT` (a busy cluster) is cancelled with a warning: the elements, which
        read their inputs from the directory, are then the proof."""
        import shutil
        import time
        import uuid

        partition = self.partition_name()
        key = (os.stat(run_dir).st_dev, partition, tuple(sorted(self.options.slurm_env.items())))
        if key in _SHARED:
            return
        token = uuid.uuid4().hex
        folder = os.path.join(run_dir, "slurm", ".nodes", token)
        os.makedirs(folder, mode=PRIVATE_MODE)
        try:
            with open(os.path.join(folder, "driver"), "w") as f:
                f.write(token)
            probe = shlex.quote(folder)
            script = (f'[ "$(cat {probe}/driver 2>/dev/null)" = {token} ] && '
                      f'echo {token} > {probe}/"${{SLURMD_NODENAME:-$(hostname)}}"')
            args = [f"--job-name={self.options.job_name}-check", "--ntasks=1", "--cpus-per-task=1", "--time=1",
                    "--output=/dev/null", "--no-requeue", *site_args(self.options, element=False)]
            job_id = self.slurm.sbatch([*args, "--wrap", script], "")
            deadline = time.monotonic() + SHARED_PATH_TIMEOUT
            while self.slurm.alive([job_id]):
                if time.monotonic() > deadline:
                    self.slurm.cancel([job_id])
                    logger.warning("slurm: the job checking that the compute nodes see %s did not start within "
                                   "%.0f s; going on (an element that cannot read the directory fails with its "
                                   "log saying so)", run_dir, SHARED_PATH_TIMEOUT)
                    return
                time.sleep(min(self.options.poll_interval, 0.5))
            seen = [name for name in os.listdir(folder) if name != "driver"]
            if not seen:
                raise CheckpointError(
                    f"run directory {run_dir}: a compute node of partition {partition!r} does not see it (job "
                    f"{job_id} found no marker there, or its marker did not reach this machine). Put the run "
                    "directory (checkpoint_path, or the scratch_dir option) on a filesystem every node mounts "
                    "(Lustre, GPFS, NFS), not on a node-local disk such as /tmp.")
            _SHARED.add(key)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def slurm_run(self, run: Run) -> SlurmRun:
        """This run's view of Slurm, made at its first job."""
        found = _RUNS.get(run)
        if found is not None:
            return found
        if run.checkpoint is not None:
            run_dir = run.checkpoint.path
        elif self.options.scratch_dir:
            run_dir = os.path.join(os.path.abspath(self.options.scratch_dir), f"run-{run.id}")
            os.makedirs(run_dir, mode=PRIVATE_MODE, exist_ok=True)
        else:
            raise ConfigError(
                "executor 'slurm' needs a run directory on storage every node sees: pass checkpoint_path=... "
                "to run() (the run is then resumable), or set the 'scratch_dir' option to a shared directory "
                "under which each run gets its own")
        os.makedirs(os.path.join(run_dir, "slurm"), mode=PRIVATE_MODE, exist_ok=True)
        self.prove_shared(run_dir)
        srun = _RUNS[run] = SlurmRun(run, self.options, self.slurm, run_dir)
        scratch = run.checkpoint is None

        def finish(error: BaseException | None) -> None:
            srun.cancel()  # a run that ends with its jobs alive (an error, Ctrl-C) takes them down
            if scratch and error is None:
                import shutil

                shutil.rmtree(run_dir, ignore_errors=True)
        run.defer(finish, key=f"slurm-{run.id}")
        run.info["slurm"] = {"run_dir": run_dir, "job_ids": srun.submitted, "partition": self.partition_name()}
        return srun

    # -- execute -----------------------------------------------------------------------------
    def execute(self, stages: list[ManagedStage], initial_tasks: list[Task]) -> list[Task]:
        """One map segment as one array: shards of ``initial_tasks`` in element order."""
        if not self.is_prepared(stages):
            return self.execute_unprepared(stages, initial_tasks)
        run = Run.of(stages)
        srun = self.slurm_run(run)
        tasks = list(initial_tasks)
        if not tasks:
            return []
        name = stages[0].name if len(stages) == 1 else f"{stages[0].name}..{stages[-1].name}"
        job = srun.new_job("map", name, self.elements_for(len(tasks), stages, self._capacity(run)),
                           self.element_resources(stages))
        rundir.dump(rundir.job_path(job.jobdir), {"stages": stages})
        _write_shards(job, tasks)
        srun.submit(job)
        return srun.wait(job)

    def _capacity(self, run: Run) -> Capacity | None:
        return run.plan.capacity if run.plan is not None else None

    def run_barrier(self, stage: ManagedStage, tasks: list[Task]) -> list[Task]:
        """A shuffle as a key array and a reduce array (files of keyed tasks); a gang as one job of
        ``gang_size`` tasks; another kind as the core runs it (in this process)."""
        run = Run.of([stage])
        if isinstance(stage, ManagedShuffle):
            return self._shuffle(self.slurm_run(run), stage, list(tasks))
        if isinstance(stage, ManagedGang):
            return self._gang(self.slurm_run(run), stage, list(tasks))
        return super().run_barrier(stage, tasks)

    def _shuffle(self, srun: SlurmRun, stage: ManagedShuffle, tasks: list[Task]) -> list[Task]:
        capacity = self._capacity(srun.run)
        partitions = int(stage.stage.num_partitions or self.elements_for(max(1, len(tasks)), [stage], capacity))
        if not tasks:
            return []
        resources = self.element_resources([stage])
        keyer = srun.new_job("key", stage.name, self.elements_for(len(tasks), [stage], capacity), resources)
        rundir.dump(rundir.job_path(keyer.jobdir), {"stage": stage, "partitions": partitions})
        _write_shards(keyer, tasks)
        reducer = srun.new_job("reduce", stage.name, partitions, resources)
        rundir.dump(rundir.job_path(reducer.jobdir), {"stage": stage, "key_dir": keyer.jobdir,
                                                      "key_elements": keyer.elements})
        srun.submit(keyer)
        srun.submit(reducer, dependency="afterok:" + ":".join(a[0] for a in keyer.arrays))
        records = srun.wait(keyer)
        if keyer.retries:  # its first arrays did not all succeed: the reduce was dropped (kill-on-invalid-dep)
            srun.slurm.cancel([a[0] for a in reducer.arrays])
            srun.submit(reducer)
        return records + srun.wait(reducer)

    def _gang(self, srun: SlurmRun, stage: ManagedGang, tasks: list[Task]) -> list[Task]:
        records = [t for t in tasks if isinstance(t, FailedTask)]
        job = srun.new_job("gang", stage.name, stage.size, self.element_resources([stage], gang=True))
        rundir.dump(rundir.job_path(job.jobdir), {"stage": stage})
        for rank, share in enumerate(stage.shares(tasks)):
            rundir.dump(rundir.input_path(job.jobdir, rank), share)
        srun.submit(job)
        return records + srun.wait(job)

    # -- not waiting ---------------------------------------------------------------------------
    def run(self, stages: Sequence[ProcessingStage[Any, Any]], initial_tasks: Iterable[Task] | None = None, *,
            checkpoint_path: str | os.PathLike[str] | None = None, overwrite: bool = False,
            return_outputs: bool = True) -> PipelineResult:
        """As for every executor; with ``wait=False``, submit the run as one driver job and return at
        once (see :meth:`submit_run`)."""
        if self.options.wait:
            return super().run(stages, initial_tasks, checkpoint_path=checkpoint_path, overwrite=overwrite,
                               return_outputs=return_outputs)
        return self.submit_run(stages, initial_tasks, checkpoint_path=checkpoint_path, overwrite=overwrite)

    def submit_run(self, stages: Sequence[ProcessingStage[Any, Any]], initial_tasks: Iterable[Task] | None = None,
                   *, checkpoint_path: str | os.PathLike[str] | None = None,
                   overwrite: bool = False) -> PipelineResult:
        """Plan here (a plan error is raised now), then submit one small job that runs the pipeline on
        the cluster with ``wait=True`` and ``return_outputs=False``; returns a result without tasks,
        ``metrics["slurm"] = {"driver_job": ID, "run_dir": DIR}``. ``curator-exec status DIR`` follows it;
        ``run(..., checkpoint_path=DIR)`` with ``wait=True`` afterwards returns its outputs (from the
        checkpoint, running nothing again)."""
        if checkpoint_path is None:
            raise ConfigError("wait=False needs checkpoint_path: the run directory the driver job runs in, and "
                              "where `curator-exec status DIR` follows it")
        self.describe(list(stages))  # capacity and plan: refused now, not in a job
        path = os.path.abspath(os.fspath(checkpoint_path))
        submit = os.path.join(path, SUBMIT_DIR)
        os.makedirs(submit, mode=PRIVATE_MODE, exist_ok=True)
        values = {f.name: getattr(self.options, f.name) for f in attrs.fields(type(self.options))}
        values["wait"] = True
        values["show_progress"] = False
        rundir.dump(os.path.join(submit, "run.pkl"),
                    {"executor": type(self), "options": values, "stages": list(stages),
                     "tasks": Source(initial_tasks).all(), "checkpoint_path": path, "overwrite": overwrite})
        script = write_script(os.path.join(submit, "driver.sh"), self.options, "the driver of a wait=False run",
                              [f"exec {python_command(self.options, 'curator_exec_slurm.drive', submit)}"])
        args = [f"--job-name={self.options.job_name}-driver", f"--chdir={submit}", "--ntasks=1",
                "--cpus-per-task=1", f"--output={os.path.join(submit, 'driver.log')}", "--open-mode=append",
                *site_args(self.options, element=False)]
        if self.options.time_limit:
            args.append(f"--time={self.options.time_limit}")
        job_id = self.slurm.sbatch([*args, *self.options.sbatch_args], script)
        with open(os.path.join(submit, "driver.job"), "w") as f:
            f.write(job_id + "\n")
        with open(os.path.join(submit, "status.txt"), "w") as f:  # shown by `curator-exec status DIR`
            f.write(f"slurm: submitted with wait=False as driver job {job_id} (its log: "
                    f"{os.path.join(submit, 'driver.log')}; squeue -j {job_id})\n")
        logger.info("slurm: submitted driver job %s for %s", job_id, path)
        return PipelineResult([], metrics={"slurm": {"driver_job": job_id, "run_dir": path, "job_ids": [job_id]}},
                              executor=self.executor_name)


def _write_shards(job: ArrayJob, tasks: list[Task]) -> None:
    """``job.elements`` near-equal runs of consecutive tasks, in order (deterministic: the same input
    makes the same shards)."""
    n, k = len(tasks), job.elements
    for i in range(k):
        rundir.dump(rundir.input_path(job.jobdir, i), tasks[n * i // k: n * (i + 1) // k])


def check_cluster(slurm: Slurm | None = None) -> str | None:
    """None if Slurm answers here, else why not (for tests and ``curator-exec info``)."""
    try:
        return (slurm or Slurm()).available()
    except SlurmError as exc:
        return str(exc)

