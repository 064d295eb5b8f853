"""``FilePartitioning``: list input files into tasks of ``files_per_task`` paths each."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from fsspec.core import split_protocol

from curator_exec_core import ProcessingStage, Resources, Task
from curator_exec_io._fs import filesystem, fingerprint_of, normalize_url

__all__ = ["FilePartitioning", "list_files"]

_MAGIC = ("*", "?", "[")


def _hidden(relative: str) -> bool:
    """A path (relative to a listed directory) with a part named ``_*`` or ``.*`` (``_temporary``, ``.x``)."""
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def _expand(url: str, storage_options: Mapping[str, Any] | None, extensions: tuple[str, ...]) -> list[str]:
    fs = filesystem(url, storage_options)
    has_protocol = split_protocol(url)[0] is not None

    def shown(path: str) -> str:
        return fs.unstrip_protocol(path) if has_protocol else path

    if any(m in url for m in _MAGIC):
        return [shown(p) for p in fs.glob(url) if fs.isfile(p)]
    if fs.isdir(url):
        root = fs._strip_protocol(url).rstrip("/")
        found = []
        for p in fs.find(url):
            relative = p[len(root):].lstrip("/")
            if _hidden(relative) or (extensions and not p.endswith(extensions)):
                continue
            found.append(shown(p))
        return found
    if fs.isfile(url):
        return [url]
    raise FileNotFoundError(f"no such file or directory: {url!r}")


def list_files(paths_or_glob: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
               storage_options: Mapping[str, Any] | None = None,
               extensions: Sequence[str] = ()) -> list[str]:
    """Every file that ``paths_or_glob`` names, sorted, each once. Each entry is a file, a glob (fsspec
    glob: ``*`` stays in one directory, ``**`` crosses them) or a directory (every file below it, except
    those under a name starting with ``_`` or ``.``, like a writer's ``_temporary``; only those ending
    with one of ``extensions`` when given). URLs keep their protocol; local paths are absolute."""
    entries = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    files: set[str] = set()
    for entry in entries:
        files.update(_expand(normalize_url(entry), storage_options, tuple(extensions)))
    return sorted(files)


class FilePartitioning(ProcessingStage[Task, Task]):
    """A source stage: lists files and emits one task per ``files_per_task`` of them.

    Each output's ``data`` is a list of paths (URLs keep their protocol); files are sorted, so the
    groups and their ids (``"<input id>.<i>"``, the runner's fan-out ids) are the same on every run.
    It runs on a worker. Use it as the first stage of a pipeline run with ``initial_tasks=None`` (the
    core seeds one ``EmptyTask``, whose id is ``"0"``), or with one seed task of your own. With
    ``paths_or_glob=None`` the input task's ``data`` names the files instead.

    To resume a killed checkpointed run per file group (the unit of a resumed run is an initial task),
    list the groups on the driver instead: ``pipeline.run(ex, FilePartitioning(...).tasks())`` without
    this stage in the pipeline.
    """

    resources = Resources(cpus=0.5)

    def __init__(self, paths_or_glob: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
                 files_per_task: int = 1, *, extensions: Sequence[str] = (),
                 storage_options: Mapping[str, Any] | None = None, allow_empty: bool = False,
                 name: str | None = None) -> None:
        if not isinstance(files_per_task, int) or isinstance(files_per_task, bool) or files_per_task < 1:
            raise ValueError(f"files_per_task must be an int >= 1, got {files_per_task!r}")
        if paths_or_glob is None:
            self.paths: list[str] | None = None
        elif isinstance(paths_or_glob, (str, os.PathLike)):
            self.paths = [normalize_url(paths_or_glob)]
        else:
            self.paths = [normalize_url(p) for p in paths_or_glob]
            if not self.paths:
                raise ValueError("paths_or_glob is an empty list")
        self.files_per_task = files_per_task
        self.extensions = tuple(extensions)
        self.storage_options = dict(storage_options or {})
        self.allow_empty = allow_empty
        if name:
            self.name = name

    def groups(self, paths: Sequence[str] | None = None) -> list[list[str]]:
        """The file groups, in order (``paths`` overrides the stage's own)."""
        paths = self.paths if paths is None else paths
        if paths is None:
            raise ValueError(f"{self.name}: no paths (give paths_or_glob, or tasks whose data names the files)")
        files = list_files(paths, storage_options=self.storage_options, extensions=self.extensions)
        if not files and not self.allow_empty:
            raise FileNotFoundError(f"{self.name}: no file matches {paths!r} (allow_empty=True accepts that)")
        n = self.files_per_task
        return [files[i:i + n] for i in range(0, len(files), n)]

    def tasks(self) -> list[Task]:
        """The groups as initial tasks, listed here (on the driver), ids ``"0"``, ``"1"``, ..."""
        return [Task(data=group, task_id=str(i)) for i, group in enumerate(self.groups())]

    def process(self, task: Task) -> list[Task]:
        paths = self.paths
        if paths is None:
            data = task.data
            given = [data] if isinstance(data, (str, os.PathLike)) else data
            if not given:
                raise ValueError(f"{self.name}: task {task.task_id!r} names no files (data={data!r})")
            paths = [normalize_url(p) for p in given]
        return [Task(data=group) for group in self.groups(paths)]

    def fingerprint(self) -> str:
        return fingerprint_of("FilePartitioning", paths=self.paths, files_per_task=self.files_per_task,
                              extensions=list(self.extensions), allow_empty=self.allow_empty)

    def __repr__(self) -> str:
        return f"<FilePartitioning name={self.name!r} paths={self.paths!r} files_per_task={self.files_per_task}>"
