"""curator-exec core: contracts, lifecycle hooks, the executor registry and shared logic.

Nothing here imports an engine (Ray, Cosmos-Xenna); backends are plugins found by
name through the ``curator_exec.executors`` entry-point group.
"""

from curator_exec_core.capacity import Capacity, GpuInfo, NodeCapacity, probe_local
from curator_exec_core.config import ExecutorOptions, build_options, describe_options, option
from curator_exec_core.errors import (
    CheckpointError,
    ConfigError,
    CuratorExecError,
    EngineCompatibilityError,
    PlanError,
    PluginError,
    StageContractError,
    StageFailedError,
    UnknownExecutorError,
)
from curator_exec_core.executor import BaseExecutor
from curator_exec_core.gang import GangStage, ManagedGang
from curator_exec_core.hookspecs import hookimpl, hookspec
from curator_exec_core.pipeline import Pipeline
from curator_exec_core.planning import ExecutionPlan, StagePlan, plan_stages
from curator_exec_core.progress import ProgressEvent
from curator_exec_core.registry import (
    ExecutorSpec,
    executor_registration,
    get_executor,
    get_plugin_manager,
    list_executors,
    list_plugins,
    register_plugin,
    unregister_plugin,
)
from curator_exec_core.run import Run
from curator_exec_core.runner import ManagedStage
from curator_exec_core.scheduling import Schedule, StagePlacement
from curator_exec_core.shuffle import GroupBy, ManagedShuffle, Repartition, ShuffleStage
from curator_exec_core.stages import GangInfo, NodeInfo, ProcessingStage, Resources, WorkerMetadata
from curator_exec_core.stats import Counts, RunStats
from curator_exec_core.tasks import EmptyTask, FailedTask, PipelineResult, StagePerf, Task

__version__ = "0.1.0"

__all__ = [
    "BaseExecutor", "Capacity", "CheckpointError", "ConfigError", "CuratorExecError", "EmptyTask", "EngineCompatibilityError",
    "ExecutionPlan", "GangInfo", "GangStage", "GroupBy", "ManagedGang", "ManagedShuffle", "Repartition", "ShuffleStage",
    "ExecutorOptions", "ExecutorSpec", "FailedTask", "GpuInfo", "ManagedStage", "NodeCapacity", "NodeInfo",
    "Pipeline", "PipelineResult", "PlanError", "PluginError", "ProcessingStage", "ProgressEvent", "Resources",
    "StageFailedError", "StageContractError", "StagePerf", "StagePlan", "Task", "Run", "Schedule", "StagePlacement", "Counts", "RunStats", "UnknownExecutorError", "WorkerMetadata",
    "build_options", "describe_options", "executor_registration", "get_executor", "get_plugin_manager", "hookimpl", "hookspec", "list_executors", "list_plugins", "option",
    "plan_stages", "probe_local", "register_plugin", "unregister_plugin",
]
