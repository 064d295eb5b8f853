"""The driver's side of a checkpoint directory: its manifest (format and fingerprint), its lock,
and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from curator_exec_core.errors import CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT_VERSION", "write_atomic", "pipeline_fingerprint", "differences", "acquire_lock",
           "check_manifest", "check_private", "PRIVATE_MODE"]

#: checkpoint directories are created private to their user: their records are pickles
PRIVATE_MODE = 0o700

#: the checkpoint layout this version writes and reads; a newer one is refused
FORMAT_VERSION = 1

ErrorFactory = Callable[[str], CheckpointError]


def write_atomic(path: str, data: bytes, durable: bool = True) -> None:
    """Write ``path`` so that a reader sees the old file or the whole new one (never a part of it);
    ``durable``: also fsync, so it survives a machine crash, not only a killed process."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if not durable:
        return
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - directories cannot be fsynced everywhere
        pass


def pipeline_fingerprint(stages: Sequence[Any], task_ids: Sequence[str], ignore_failures: bool) -> dict[str, Any]:
    """What identifies a run for its checkpoint: the stages and the initial task ids."""
    from curator_exec_core.runner.kinds import kind_of

    users = [getattr(s, "stage", s) for s in stages]
    digest = hashlib.sha256("\0".join(task_ids).encode()).hexdigest()
    return {
        "stages": [{"class": f"{type(u).__module__}.{type(u).__qualname__}", "name": u.name,
                    "fingerprint": str(u.fingerprint()), "kind": kind_of(u).name} for u in users],
        "ignore_failures": bool(ignore_failures),
        "initial_tasks": {"count": len(task_ids), "sha256": digest},
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out: list[str] = []
    a, b = old.get("stages", []), new["stages"]
    if len(a) != len(b):
        out.append(f"the pipeline had {len(a)} stages ({', '.join(s['name'] for s in a)}), now {len(b)} "
                   f"({', '.join(s['name'] for s in b)})")
    else:
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            for field in ("class", "name", "fingerprint"):
                if x.get(field) != y[field]:
                    out.append(f"stage {i} {field}: {x.get(field)!r} -> {y[field]!r}")
    if old.get("ignore_failures") != new["ignore_failures"]:
        out.append(f"ignore_failures: {old.get('ignore_failures')} -> {new['ignore_failures']}")
    x, y = old.get("initial_tasks", {}), new["initial_tasks"]
    if x != y:
        out.append(f"initial tasks: {x.get('count')} tasks (ids sha256 {str(x.get('sha256'))[:12]}) -> "
                   f"{y['count']} tasks (ids sha256 {y['sha256'][:12]})")
    return out


def acquire_lock(folder: str, error: ErrorFactory) -> int:
    """Hold ``folder/lock`` (``flock``) with this process as holder; returns its descriptor."""
    path = os.path.join(folder, "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise error(f"is in use by another run ({holder}); wait for it to finish, or use "
                              "another checkpoint directory") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 .encode())
    return fd



def check_manifest(folder: str, fingerprint: dict[str, Any], overwrite: bool, error: ErrorFactory) -> None:
    """Accept ``folder`` for a run of ``fingerprint``: a new or empty one, or a checkpoint of the same
    run; with ``overwrite``, discard a checkpoint of another run. Writes the manifest."""
    manifest = os.path.join(folder, "manifest.json")
    entries = [n for n in os.listdir(folder) if n not in ("lock",)]
    if os.path.exists(manifest):
        check_private(folder, error)
        try:
            with open(manifest) as f:
                old = json.load(f)
            version = int(old.get("format", 0))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise error(f"manifest.json is unreadable ({exc}); pass overwrite=True (--fresh) to "
                              "start over") from exc
        if version > FORMAT_VERSION:
            raise error(f"was written in checkpoint format {version} by a newer curator-exec (this one "
                              f"reads format {FORMAT_VERSION}); upgrade curator-exec-core, or use another "
                              "directory. Nothing was changed.")
        changes = differences(old, fingerprint)
        if not changes:
            return
        if not overwrite:
            raise error("was written by a different pipeline or inputs: " + "; ".join(changes)
                              + ". Pass overwrite=True (curator-exec run --fresh) to discard it and start over, "
                                "or use another directory.")
    elif entries:
        if not overwrite or not all(n.startswith(("part-", ".")) for n in entries):
            raise error(f"is not empty and holds no curator-exec checkpoint ({len(entries)} entries, e.g. "
                              f"{sorted(entries)[0]!r}); nothing was touched. Use an empty or new directory.")
    for name in os.listdir(folder):  # overwrite: only what a checkpoint holds
        if name.startswith("part-") or name == "manifest.json":
            full = os.path.join(folder, name)
            shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
    # not fsynced (a killed process cannot lose it; after a machine crash that did, the directory
    # is refused as not a checkpoint, never trusted, and --fresh starts over)
    # provenance: the command that started the run (``curator-exec status`` shows how to resume it)
    started = {"argv": list(sys.argv), "cwd": os.getcwd(), "python": sys.executable}
    write_atomic(manifest, json.dumps({"format": FORMAT_VERSION, "created": time.time(), "started_by": started,
                                       **fingerprint}).encode(), durable=False)



def check_private(folder: str, error: ErrorFactory) -> None:
    """Refuse to resume from ``folder`` if another user can write it (as ssh refuses a group-writable
    key): journals, barrier files and the manifest's records are pickles, so whoever can write the
    directory can run code in the next resume."""
    st = os.stat(folder)
    getuid = getattr(os, "getuid", None)
    if getuid is not None and st.st_uid != getuid():
        raise error(f"belongs to another user (uid {st.st_uid}, you are {getuid()}); its records are pickles and "
                    "a resume runs them. Resume as that user, or start in a new directory of your own.")
    if st.st_mode & 0o022:
        raise error(f"can be written by other users (mode {st.st_mode & 0o777:o}); its records are pickles, so "
                    f"whoever can write it can run code in the next resume. If you trust every writer, run "
                    f"`chmod go-w {folder}`; else start in a new directory.")
