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

from curator_exec_core.checkpoint.inputs import DIGESTS_FILE, InputLedger
from curator_exec_core.errors import CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT_VERSION", "MANIFEST", "write_atomic", "pipeline_fingerprint", "differences", "input_differences",
           "acquire_lock", "read_manifest", "start_manifest", "write_manifest", "check_private", "PRIVATE_MODE"]

logger = logging.getLogger("curator_exec")

#: the manifest's name in a checkpoint directory
MANIFEST = "manifest.json"
#: names an executor may give what it writes into a checkpoint directory before its run opens it
EXECUTOR_FILES = ".curator-exec-"

#: checkpoint directories are created private to their user: their records are pickles
PRIVATE_MODE = 0o700

#: the checkpoint layout this version writes and reads; a newer one is refused. 2: the manifest's
#: ``initial_tasks`` has a ``content`` digest and names the digests file; 3: ``initial_tasks`` has its
#: ``count`` only once a run read the source to its end, the digests file grows as a run reads it,
#: and a barrier's outputs file is a sequence of blocks; 4: that file may name blocks files the workers
#: wrote (``part-<p>.blocks/``), which an older version would skip (formats 1 to 3 are still read)
FORMAT_VERSION = 4

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


def pipeline_fingerprint(stages: Sequence[Any], ignore_failures: bool) -> dict[str, Any]:
    """What identifies a run's pipeline for its checkpoint: the stages (class, name, kind,
    :meth:`~curator_exec_core.stages.ProcessingStage.fingerprint`) and ``ignore_failures``. The
    initial tasks' part (``initial_tasks``) is added once the source has been read to its end
    (:meth:`~curator_exec_core.checkpoint.inputs.InputLedger.finish`)."""
    from curator_exec_core.runner.kinds import kind_of

    users = [getattr(s, "stage", s) for s in stages]
    return {
        "stages": [{"class": f"{type(u).__module__}.{type(u).__qualname__}", "name": u.name,
                    "fingerprint": str(u.fingerprint()), "kind": kind_of(u).name} for u in users],
        "ignore_failures": bool(ignore_failures),
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed in the pipeline from the ``old`` manifest to the ``new`` fingerprint, one phrase each."""
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
    return out


def input_differences(old: dict[str, Any], new: dict[str, Any], inputs: InputLedger | None = None) -> list[str]:
    """What changed from the ``old`` manifest's complete ``initial_tasks`` entry to ``new`` (one
    phrase each). An entry of format 1 (no content digest) is compared on the ids only."""
    where = ""
    if inputs is not None and inputs.first_other_id is not None:
        where = f"; the first other id is {inputs.first_other_id[1]!r} at position {inputs.first_other_id[0]}"
    if (old.get("count"), old.get("sha256")) != (new["count"], new["sha256"]):
        return [f"initial tasks: {old.get('count')} tasks (ids sha256 {str(old.get('sha256'))[:12]}) -> "
                f"{new['count']} tasks (ids sha256 {new['sha256'][:12]}){where}"]
    if isinstance(old.get("content"), dict) and old["content"].get("blake2b") != new["content"]["blake2b"]:
        return [inputs.describe_change() if inputs is not None else "the content of the initial tasks changed"]
    return []


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


def start_manifest(folder: str, old: dict[str, Any] | None, fingerprint: dict[str, Any], overwrite: bool,
                   refuse: ErrorFactory) -> dict[str, Any] | None:
    """Accept ``folder`` (its manifest ``old``, from :func:`read_manifest`) for a run of the pipeline
    ``fingerprint``: a checkpoint of the same pipeline is resumed (its initial tasks are checked as the
    run reads them); with ``overwrite``, or a new or empty directory, the run starts over: what a
    checkpoint holds is removed and a manifest without the initial tasks' part is written (and
    returned; None: the checkpoint is resumed). A checkpoint of another pipeline is refused with
    ``refuse(what changed)`` (nothing changed)."""
    for name in os.listdir(folder):  # digests of an earlier version's run killed while it read its inputs
        if name.startswith(f"{DIGESTS_FILE}.tmp-"):
            os.remove(os.path.join(folder, name))
    if old is not None and not overwrite:
        changes = differences(old, fingerprint)
        if changes:
            raise refuse("; ".join(changes))
        return None
    for name in os.listdir(folder):  # only what a checkpoint holds
        if name.startswith(("part-", "stats")) or name in (MANIFEST, DIGESTS_FILE):
            full = os.path.join(folder, name)
            shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
    # provenance: the command that started the run (``curator-exec status`` shows how to resume it)
    started = {"argv": list(sys.argv), "cwd": os.getcwd(), "python": sys.executable}
    manifest = {"format": FORMAT_VERSION, "created": time.time(), "started_by": started, **fingerprint,
                "initial_tasks": {"content": {"file": DIGESTS_FILE}}}
    write_manifest(folder, manifest)
    return manifest


def write_manifest(folder: str, manifest: dict[str, Any]) -> None:
    """Replace the manifest (atomically). Not fsynced: a killed process cannot lose it; after a machine
    crash that did, the directory is refused as not a checkpoint, never trusted, and --fresh starts over."""
    write_atomic(os.path.join(folder, MANIFEST), json.dumps(manifest).encode(), durable=False)


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
