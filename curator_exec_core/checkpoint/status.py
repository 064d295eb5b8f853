"""What a checkpoint directory says about its run, read without running anything
(``curator-exec status DIR``): per segment of the pipeline how much is done, the failed tasks, who
holds the lock, when it last wrote, and how to resume it."""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
from typing import Any

import attrs

from curator_exec_core.checkpoint.manifest import EXECUTOR_FILES, FORMAT_VERSION
from curator_exec_core.checkpoint.recovery import finished
from curator_exec_core.tasks import FailedTask, Task

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["SegmentStatus", "LockStatus", "CheckpointStatus", "read_status", "NotACheckpoint"]

#: failed tasks listed one by one (the rest are counted)
LISTED_FAILURES = 20


class NotACheckpoint(ValueError):
    """The directory holds no (readable) curator-exec checkpoint. ``notes``: what executors wrote there
    before a run opened it (a run submitted to a batch scheduler, not started yet)."""

    def __init__(self, message: str, notes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.notes = notes


#: an executor's note in a checkpoint directory: ``DIR/.curator-exec-<anything>/status.txt``, one line
#: that ``curator-exec status`` shows (the slurm executor's ``wait=False``: the driver job's id)
NOTE_FILE = "status.txt"


def executor_notes(folder: str) -> tuple[str, ...]:
    """The first line of every ``DIR/.curator-exec-*/status.txt``, by name."""
    notes = []
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith(EXECUTOR_FILES))
    except OSError:
        return ()
    for name in names:
        try:
            with open(os.path.join(folder, name, NOTE_FILE)) as f:
                line = f.readline().strip()
        except OSError:
            continue
        if line:
            notes.append(line)
    return tuple(notes)


@attrs.frozen
class SegmentStatus:
    """One segment of the pipeline: its stages, and ``done`` of ``total`` (source tasks of a map
    segment; 1 for a finished barrier stage). ``total`` is None while the segment before it runs."""

    position: int
    kind: str
    stages: tuple[str, ...]
    done: int
    total: int | None

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total


@attrs.frozen
class LockStatus:
    """Who holds (or last held) the run's lock: ``state`` is ``"held"`` (a run is using the
    checkpoint now), ``"free"`` (its last holder ended), or ``"none"`` (never locked)."""

    state: str
    holder: str = ""
    alive: bool | None = None


@attrs.frozen
class CheckpointStatus:
    path: str
    pipeline: tuple[str, ...]
    #: None until a run has read the source to its end
    source_tasks: int | None
    segments: tuple[SegmentStatus, ...]
    failed: tuple[dict[str, Any], ...]
    failed_total: int
    lock: LockStatus
    last_write: float | None
    resume_command: str
    #: what executors noted in the directory (see :func:`executor_notes`)
    notes: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        return bool(self.segments) and self.segments[-1].finished

    @property
    def state(self) -> str:
        """``finished``, ``failed`` (finished with failed tasks), ``running`` or ``stopped``."""
        if self.finished:
            return "failed" if self.failed_total else "finished"
        return "running" if self.lock.state == "held" else "stopped"

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out.update(state=self.state, finished=self.finished)
        return out


def read_status(path: str | os.PathLike[str]) -> CheckpointStatus:
    """The status of the checkpoint at ``path``; :class:`NotACheckpoint` if it holds none."""
    folder = os.path.abspath(os.fspath(path))
    manifest = _manifest(folder)
    stages = manifest.get("stages", [])
    count = manifest.get("initial_tasks", {}).get("count")  # None until a run read the source to its end
    segments, outputs = _segments(folder, stages, None if count is None else int(count))
    failed = [t for t in outputs if isinstance(t, FailedTask)]
    return CheckpointStatus(
        path=folder, pipeline=tuple(s.get("name", "?") for s in stages),
        source_tasks=count, segments=tuple(segments),
        failed=tuple({"task_id": f.task_id, "stage": f.stage, "error": f.error, "attempts": f.attempts}
                     for f in failed[:LISTED_FAILURES]),
        failed_total=len(failed), lock=_lock(folder), last_write=_last_write(folder),
        resume_command=_resume_command(folder, manifest.get("started_by") or {}), notes=executor_notes(folder))


def _manifest(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, "manifest.json")
    if not os.path.isdir(folder):
        raise NotACheckpoint(f"{folder} is not a directory")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        notes = executor_notes(folder)
        if notes:
            raise NotACheckpoint(f"{folder}: no run has opened this checkpoint yet; " + "; ".join(notes),
                                 notes) from None
        raise NotACheckpoint(f"{folder} holds no curator-exec checkpoint (no manifest.json)") from None
    except (OSError, ValueError) as exc:
        raise NotACheckpoint(f"{folder}: manifest.json is unreadable ({exc})") from exc
    if not isinstance(manifest, dict) or int(manifest.get("format", 0)) > FORMAT_VERSION:
        raise NotACheckpoint(f"{folder}: a checkpoint format this curator-exec does not read")
    return manifest


def _segments(folder: str, stages: list[dict[str, Any]], sources: int | None) -> tuple[list[SegmentStatus], list[Task]]:
    """Every segment's progress (barrier kinds split the pipeline, as a run does), and the outputs the
    last finished work recorded (failure records among them)."""
    groups: list[tuple[str, list[str]]] = []
    for stage in stages:
        kind = stage.get("kind", "map")
        if kind != "map" or not groups or groups[-1][0] != "map":
            groups.append((kind, []))
        groups[-1][1].append(stage.get("name", "?"))
    out: list[SegmentStatus] = []
    total: int | None = sources
    last_outputs: list[Task] = []
    for position, (kind, names) in enumerate(groups):
        if kind == "map":
            done, outputs, _ = finished(os.path.join(folder, f"part-{position}"), None)
            out.append(SegmentStatus(position, kind, tuple(names), min(len(done), total or len(done)), total))
            last_outputs = outputs
            total = None  # the next barrier's input is known once it finished
            continue
        barrier = _barrier_outputs(os.path.join(folder, f"part-{position}.outputs"))
        out.append(SegmentStatus(position, kind, tuple(names), int(barrier is not None), 1))
        if barrier is not None:
            last_outputs, total = barrier, len(barrier)
    return out, last_outputs


def _barrier_outputs(path: str) -> list[Task] | None:
    from curator_exec_core.checkpoint import barrier_count, read_barrier

    if not os.path.exists(path) or barrier_count(path) is None:
        return None
    return list(read_barrier(path))


def _lock(folder: str) -> LockStatus:
    path = os.path.join(folder, "lock")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return LockStatus("none")
    try:
        holder = os.read(fd, 200).decode(errors="replace").strip()
        if fcntl is None:  # pragma: no cover - Windows
            return LockStatus("free", holder)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return LockStatus("held", holder, _alive(holder))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return LockStatus("free", holder, _alive(holder))
    finally:
        os.close(fd)


def _alive(holder: str) -> bool | None:
    """Whether the holder's process lives (``"pid P on HOST since ..."``; None: another host)."""
    parts = holder.split()
    if len(parts) < 4 or parts[0] != "pid" or parts[3] != socket.gethostname():
        return None
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _last_write(folder: str) -> float | None:
    times = [os.path.getmtime(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names
             if name != "lock"]
    return max(times) if times else None


def _resume_command(folder: str, started: dict[str, Any]) -> str:
    """The command that resumes the run: the one that started it, without ``--fresh``."""
    argv = [a for a in started.get("argv") or [] if a != "--fresh"]
    cwd = started.get("cwd")
    prefix = f"cd {shlex.quote(cwd)} && " if cwd else ""
    if argv and (os.path.basename(argv[0]) == "curator-exec" or argv[0].endswith("curator_exec_core/__main__.py")):
        return prefix + shlex.join(["curator-exec", *argv[1:]])
    if argv:
        return prefix + shlex.join([started.get("python") or "python", *argv]) + \
            f"   # the program that called run(..., checkpoint_path={folder!r})"
    return f"run the same pipeline again with checkpoint_path={folder!r}"


def age(seconds_since_epoch: float | None) -> str:
    """How long ago, for people."""
    if seconds_since_epoch is None:
        return "never"
    ago = max(0.0, time.time() - seconds_since_epoch)
    return f"{ago:.0f} s ago" if ago < 120 else f"{ago / 60:.0f} min ago" if ago < 7200 else f"{ago / 3600:.1f} h ago"
