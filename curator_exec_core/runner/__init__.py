"""The runner: how the core runs one stage, wherever the engine puts it.

* :mod:`.stage`: :class:`ManagedStage`, the host every stage kind shares (identity, plan,
  lifecycle, failure policy, counts) and the map kind's batch path;
* :mod:`.retry`: the one retry policy (maps, shuffles, gangs);
* :mod:`.observer`: what a checkpoint's journal is told (the runner knows no checkpoint);
* :mod:`.node`: once-per-node setup and the run's scratch folder on a node;
* :mod:`.kinds`: the stage kinds (map, shuffle, gang) as one table;
* :mod:`.segments`: a pipeline split once into typed segments, and the one loop over them;
* :mod:`.ids`: task id rules.
"""

from curator_exec_core.runner.ids import task_order
from curator_exec_core.runner.node import remove_run_dir, run_dir
from curator_exec_core.runner.observer import RunnerObserver
from curator_exec_core.runner.retry import Attempt, FailurePolicy, retry
from curator_exec_core.runner.stage import ManagedStage
from curator_exec_core.stats import Counts

__all__ = ["Attempt", "Counts", "FailurePolicy", "ManagedStage", "RunnerObserver", "remove_run_dir", "retry",
           "run_dir", "task_order"]
