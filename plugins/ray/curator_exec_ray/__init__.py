"""curator-exec-ray: the Ray layer every Ray-based executor plugin shares (a library, no executor).

The supported API is what ``__all__`` lists; a plugin author needs nothing else (modules whose name
starts with ``_`` are private). Importing this package does not import Ray: Ray is imported when a
run starts.

* :class:`RayExecutorBase`, :class:`RayExecutorOptions`, :class:`RayTaskOptions`: subclass the
  base and implement ``execute_chunks`` (the map stages of one segment on chunks of tasks).
* :class:`RayRun`: one run as the layer sees it (id, runtime_env, timeouts, schedule, ``report``).
* :class:`TaskChunk`: the one chunk type (tasks or an object ref of them, their count, their counts).
* Workers: :class:`StageActor`, :func:`stage_in_process`, :func:`remote`, :func:`warm_up`;
  teardown: :func:`register`, :func:`unregister`, :func:`teardown_live`, :func:`teardown_workers`,
  :func:`stop_workers`, :func:`kill`.
* Sessions and clusters: :func:`ensure_ray`, :func:`current_session`, :class:`RaySession`,
  :func:`cluster_capacity`, :func:`check_shared_path`, :func:`alive_nodes`, :func:`head_node_ids`,
  :func:`on_nodes`.
* Placement: :func:`assign_nodes`, :func:`replacement_node`, :func:`remote_options`,
  :func:`exclude_head_selector`.
* Chunk sizing: :func:`auto_chunk_size`, :func:`split`, :func:`put_chunks`, :class:`ChunkSizer`.
* Engines that create their own workers: :class:`Coordinator`, :class:`WorkerLink`, :class:`ProgressPoller`.
* Barriers: :func:`run_shuffle`, :func:`shuffle_chunks`, :func:`run_gang`.
* Waiting for workers Ray has to place (the ``placement_warning_s`` warning): :class:`PlacementWatch`,
  :func:`wait_started`, :func:`worker_request`, :func:`cluster_free`, :func:`placement_message`.
* Test fixtures live in :mod:`curator_exec_ray.testing` (imports pytest; not re-exported here).
"""

from curator_exec_ray.actors import StageActor, remote, stage_in_process, warm_up
from curator_exec_ray.chunking import ChunkSizer, TaskChunk, auto_chunk_size, chunks, put_chunks, split
from curator_exec_ray.cluster import (
    alive_nodes,
    check_shared_path,
    cluster_capacity,
    head_node_ids,
    on_nodes,
)
from curator_exec_ray.context import RayRun
from curator_exec_ray.coordinator import Coordinator, ProgressPoller, WorkerLink
from curator_exec_ray.executor import RAY_BARRIERS, RayExecutorBase, RayExecutorOptions, RayTaskOptions
from curator_exec_ray.gang import run_gang
from curator_exec_ray.placement import assign_nodes, exclude_head_selector, remote_options, replacement_node
from curator_exec_ray.session import RaySession, current_session, ensure_ray, preserved_env
from curator_exec_ray.shuffle import run_shuffle, shuffle_chunks
from curator_exec_ray.teardown import kill, register, stop_workers, teardown_live, teardown_workers, unregister
from curator_exec_ray.waiting import PlacementWatch, cluster_free, placement_message, wait_started, worker_request

__all__ = [
    "RAY_BARRIERS", "ChunkSizer", "Coordinator", "PlacementWatch", "ProgressPoller", "RayExecutorBase",
    "RayExecutorOptions", "RayRun", "RaySession", "RayTaskOptions", "StageActor", "TaskChunk", "WorkerLink",
    "alive_nodes", "assign_nodes", "auto_chunk_size", "check_shared_path", "chunks", "cluster_capacity",
    "cluster_free", "current_session", "ensure_ray", "exclude_head_selector", "head_node_ids", "kill", "on_nodes",
    "placement_message", "preserved_env", "put_chunks", "register", "remote", "remote_options", "replacement_node",
    "run_gang", "run_shuffle", "shuffle_chunks", "split", "stage_in_process", "stop_workers", "teardown_live",
    "teardown_workers", "unregister", "wait_started", "warm_up", "worker_request",
]
