"""The driver job of a ``wait=False`` run: ``python -m curator_exec_slurm.drive SUBMIT_DIR``.

It runs the pipeline that :meth:`~curator_exec_slurm.executor.SlurmExecutor.submit_run` wrote, with
``wait=True`` and without keeping outputs, on the checkpoint directory: the outputs stay in the
checkpoint (a later ``run`` with the same pipeline and checkpoint returns them without running
anything), the statistics in ``stats.json``. Exit status as ``curator-exec run``: 0 done, 1 a stage
failed, 2 a user error (a refused checkpoint, a plan error).
"""

from __future__ import annotations

import logging
import os
import sys

from curator_exec_core.errors import CuratorExecError, StageFailedError
from curator_exec_slurm import rundir


def main(argv: list[str] | None = None) -> int:
    submit = (argv if argv is not None else sys.argv[1:])[0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = rundir.load(os.path.join(submit, "run.pkl"))
    executor = spec["executor"](config=spec["options"])
    try:
        result = executor.run(spec["stages"], spec["tasks"], checkpoint_path=spec["checkpoint_path"],
                              overwrite=spec["overwrite"], return_outputs=False)
    except StageFailedError as exc:
        logging.getLogger("curator_exec.slurm").error("the run failed: %s", exc)
        return 1
    except CuratorExecError as exc:
        logging.getLogger("curator_exec.slurm").error("the run was refused: %s", exc)
        return 2
    print(f"curator-exec: run finished: {len(result.failed_tasks)} failed task(s); metrics: "
          f"{ {k: v['tasks_out'] for k, v in result.metrics['stages'].items()} }", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
