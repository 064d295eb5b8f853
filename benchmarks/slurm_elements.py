#!/usr/bin/env python
"""Per-array-element overhead of the ``slurm`` executor, beside its baseline, in one invocation.

    SLURM_CONF=/path/slurm.conf python benchmarks/slurm_elements.py [--elements 20] [--repeat 3]
    python benchmarks/slurm_elements.py --start-slurm /tmp/bench-slurm   # a private one-node Slurm

Three measurements on the same cluster, each ``--repeat`` times (the median is reported):

* ``sbatch_true``: the baseline, a raw ``sbatch --array=0-(k-1) --wrap true``, from submission until
  ``squeue`` lists none of it (Slurm's own cost per element: scheduling, launch, cleanup);
* ``python_start``: ``python -c 'import curator_exec_core'`` in a fresh interpreter (what every
  element pays before its work);
* ``slurm_executor``: ``SlurmExecutor.run`` of one trivial map stage on ``k`` tasks with
  ``tasks_per_element=1`` (``k`` elements): shards written, array submitted, waited for, outputs
  read back.

The overhead per element is ``(slurm_executor - sbatch_true) / k`` beside ``sbatch_true / k``; the
cluster's CPUs bound how many elements run at once, so both are divided by the same ``k``. One JSON
line per measurement on stdout, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins" / "slurm" / "tests"))


def raw_array(env: dict[str, str], k: int, workdir: str) -> float:
    start = time.perf_counter()
    out = subprocess.run(["sbatch", "--parsable", f"--array=0-{k - 1}", "--cpus-per-task=1", f"--chdir={workdir}",
                          "--output=/dev/null", "--wrap", "true"], env=env, capture_output=True, text=True, check=True)
    job = out.stdout.strip().split(";")[0]
    while subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i"], env=env, capture_output=True,
                         text=True).stdout.strip():
        time.sleep(0.05)
    return time.perf_counter() - start


def python_start() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import curator_exec_core"], check=True)
    return time.perf_counter() - start


def executor_array(env: dict[str, str], k: int, scratch: str) -> float:
    from curator_exec_core import Task
    from curator_exec_core.testing.stages import AddOne
    from curator_exec_slurm import SlurmExecutor

    ex = SlurmExecutor(config={"scratch_dir": scratch, "poll_interval": 0.05, "tasks_per_element": 1,
                               "show_progress": False, "slurm_env": env})
    start = time.perf_counter()
    result = ex.run([AddOne()], [Task(data=i) for i in range(k)])
    seconds = time.perf_counter() - start
    assert sorted(t.data for t in result) == list(range(1, k + 1))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--start-slurm", metavar="DIR", help="start a private one-node Slurm in DIR (and stop it)")
    args = parser.parse_args(argv)
    cluster = None
    if args.start_slurm:
        import slurm_cluster

        cluster = slurm_cluster.start(args.start_slurm)
        env = dict(cluster.env)
    else:
        if not os.environ.get("SLURM_CONF") and subprocess.run(["sinfo"], capture_output=True).returncode != 0:
            parser.error("no Slurm answers here: set SLURM_CONF, or pass --start-slurm DIR")
        env = {k: v for k, v in os.environ.items() if k == "SLURM_CONF"}
    full_env = {**os.environ, **env}
    k = args.elements
    records = []
    try:
        with tempfile.TemporaryDirectory() as work:
            executor_array(env, 2, work)  # warm-up: imports, the first scheduling round
            for name, fn in (("sbatch_true", lambda: raw_array(full_env, k, work)),
                             ("python_start", python_start),
                             ("slurm_executor", lambda: executor_array(env, k, work))):
                times = [fn() for _ in range(args.repeat)]
                record = {"measure": name, "elements": k if name != "python_start" else 1,
                          "seconds": statistics.median(times), "runs": times}
                records.append(record)
                print(json.dumps(record), flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    by = {r["measure"]: r["seconds"] for r in records}
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], env=full_env, capture_output=True, text=True).stdout.split()
    print(f"\nslurm per-element overhead ({k} elements, cluster CPUs {'/'.join(cpus) or '?'}; medians of "
          f"{args.repeat})")
    print(f"  raw sbatch --array of `true`      {by['sbatch_true']:7.2f} s   {by['sbatch_true'] / k:6.3f} s/element")
    print(f"  slurm executor, 1 task/element    {by['slurm_executor']:7.2f} s   "
          f"{by['slurm_executor'] / k:6.3f} s/element")
    print(f"  of which over the raw array       {by['slurm_executor'] - by['sbatch_true']:7.2f} s   "
          f"{(by['slurm_executor'] - by['sbatch_true']) / k:6.3f} s/element")
    print(f"  a fresh interpreter importing the core: {by['python_start']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
