"""The driver's side of a checkpoint directory: its manifest (format and fingerprint, with the
initial tasks' digests file of :mod:`.inputs`), its lock, and atomic writes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from curator_exec_core.checkpoint.inputs import DIGESTS_FILE, SourceDigest
from curator_exec_core.errors import CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT_VERSION", "MANIFEST", "write_atomic", "pipeline_fingerprint", "differences", "acquire_lock",
           "read_manifest", "accept_manifest", "check_private", "PRIVATE_MODE"]

logger = logging.getLogger("curator_exec")

#: the manifest's name in a checkpoint directory
MANIFEST = "manifest.json"
#: names an executor may give what it writes into a checkpoint directory before its run opens it
EXECUTOR_FILES = ".curator-exec-"

#: checkpoint directories are created private to their user: their records are pickles
PRIVATE_MODE = 0o700

#: the checkpoint layout this version writes and reads; a newer one is refused. 2: the manifest's
#: ``initial_tasks`` has a ``content`` digest and names the digests file (format 1 is still read)
FORMAT_VERSION = 2

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


def pipeline_fingerprint(stages: Sequence[Any], initial_tasks: dict[str, Any], ignore_failures: bool) -> dict[str, Any]:
    """What identifies a run for its checkpoint: the stages, and the initial tasks' fingerprint
    (:meth:`~curator_exec_core.checkpoint.inputs.SourceDigest.finish`: count, ids, content)."""
    from curator_exec_core.runner.kinds import kind_of

    users = [getattr(s, "stage", s) for s in stages]
    return {
        "stages": [{"class": f"{type(u).__module__}.{type(u).__qualname__}", "name": u.name,
                    "fingerprint": str(u.fingerprint()), "kind": kind_of(u).name} for u in users],
        "ignore_failures": bool(ignore_failures),
        "initial_tasks": initial_tasks,
    }


def differences(old: dict[str, Any], new: dict[str, Any], inputs: SourceDigest | None = None) -> list[str]:
    """What changed from the ``old`` manifest to the ``new`` fingerprint, one phrase each. A manifest
    of format 1 (no content digest) is compared on the ids only."""
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
    if (x.get("count"), x.get("sha256")) != (y["count"], y["sha256"]):
        where = ""
        if inputs is not None and inputs.first_other_id is not None:
            where = f"; the first other id is {inputs.first_other_id[1]!r} at position {inputs.first_other_id[0]}"
        out.append(f"initial tasks: {x.get('count')} tasks (ids sha256 {str(x.get('sha256'))[:12]}) -> "
                   f"{y['count']} tasks (ids sha256 {y['sha256'][:12]}){where}")
    elif isinstance(x.get("content"), dict) and x["content"].get("blake2b") != y["content"]["blake2b"]:
        out.append(inputs.describe_change() if inputs is not None else "the content of the initial tasks changed")
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



def read_manifest(folder: str, overwrite: bool, error: ErrorFactory) -> dict[str, Any] | None:
    """The manifest of the checkpoint in ``folder`` (None: a new or empty directory), after the checks
    that need no fingerprint: private, readable, not a newer format; a non-empty directory without a
    manifest is refused (with ``overwrite`` too, unless it holds only what a checkpoint holds).
    Nothing is changed."""
    manifest = os.path.join(folder, MANIFEST)
    if not os.path.exists(manifest):
        entries = [n for n in os.listdir(folder) if n != "lock" and not n.startswith((DIGESTS_FILE, EXECUTOR_FILES))]
        # (a digests file without a manifest: a first start killed before writing its manifest; an
        # executor's files written before its run opened the directory: the slurm driver job's)
        if entries and (not overwrite or not all(n.startswith(("part-", ".")) for n in entries)):
            raise error(f"is not empty and holds no curator-exec checkpoint ({len(entries)} entries, e.g. "
                        f"{sorted(entries)[0]!r}); nothing was touched. Use an empty or new directory.")
        return None
    check_private(folder, error)
    try:
        with open(manifest) as f:
            old = json.load(f)
        version = int(old.get("format", 0))
        if not isinstance(old.get("initial_tasks", {}), dict):
            raise TypeError("initial_tasks is not an object")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise error(f"manifest.json is unreadable ({exc}); pass overwrite=True (--fresh) to "
                    "start over") from exc
    if version > FORMAT_VERSION:
        raise error(f"was written in checkpoint format {version} by a newer curator-exec (this one "
                    f"reads format {FORMAT_VERSION}); upgrade curator-exec-core, or use another "
                    "directory. Nothing was changed.")
    return old


def accept_manifest(folder: str, old: dict[str, Any] | None, fingerprint: dict[str, Any], overwrite: bool,
                    error: ErrorFactory, inputs: SourceDigest) -> None:
    """Accept ``folder`` (its manifest ``old``, from :func:`read_manifest`) for a run of ``fingerprint``:
    a new or empty one, or a checkpoint of the same run; with ``overwrite``, discard a checkpoint of
    another run. Keeps the inputs' digests file and writes the manifest (``inputs`` is discarded if
    the checkpoint is refused).

    A checkpoint of format 1 recorded the initial task ids but not their content: it is resumed with
    a warning if everything else matches, and its manifest is upgraded (content recorded from now)."""
    path = os.path.join(folder, MANIFEST)
    for name in os.listdir(folder):  # digests of a run killed while it read its inputs (we hold the lock)
        if name.startswith(f"{DIGESTS_FILE}.tmp-") and name != os.path.basename(inputs.tmp_path):
            os.remove(os.path.join(folder, name))
    if old is not None:
        changes = differences(old, fingerprint, inputs)
        legacy = not isinstance(old.get("initial_tasks", {}).get("content"), dict)
        if not changes:
            inputs.keep()
            if legacy:
                logger.warning(
                    "checkpoint %s: written in checkpoint format %s, which recorded the initial tasks' ids but "
                    "not their content; resuming with the ids checked only. If the data of a task changed since, "
                    "pass overwrite=True (curator-exec run --fresh) to start over. The content is recorded from now "
                    "on.", folder, old.get("format", 1))
                write_atomic(path, json.dumps({**old, **fingerprint, "format": FORMAT_VERSION}).encode(),
                             durable=False)
            return
        if not overwrite:
            inputs.discard()
            raise error("was written by a different pipeline or inputs: " + "; ".join(changes)
                        + ". Pass overwrite=True (curator-exec run --fresh) to discard it and start over, "
                          "or use another directory.")
    for name in os.listdir(folder):  # overwrite: only what a checkpoint holds (not this run's digests)
        if name.startswith("part-") or name == MANIFEST or (name.startswith(DIGESTS_FILE)
                                                             and name != os.path.basename(inputs.tmp_path)):
            full = os.path.join(folder, name)
            shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
    inputs.keep()  # before the manifest that names it
    # not fsynced (a killed process cannot lose it; after a machine crash that did, the directory
    # is refused as not a checkpoint, never trusted, and --fresh starts over)
    # provenance: the command that started the run (``curator-exec status`` shows how to resume it)
    started = {"argv": list(sys.argv), "cwd": os.getcwd(), "python": sys.executable}
    write_atomic(path, json.dumps({"format": FORMAT_VERSION, "created": time.time(), "started_by": started,
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
