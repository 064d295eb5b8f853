"""``JsonlWriter`` and ``ParquetWriter``: one file per task, named from the task id, renamed into place.

Exactly-once files: the final name of a task's file depends only on its id (``file_name``), so a retried
task, an engine re-running a chunk or a resumed run writes the same name again. A task's bytes go to a
temporary file, ``<dir>/_temporary/<final name>.<32 hex>.tmp``, which is then renamed onto the final name
(``os.replace`` on a local filesystem, fsspec ``mv`` elsewhere): a reader sees the old file or the new
one, never a part. Before writing, the writer removes the temporary files of *its own final name* left
by an attempt that was killed; after writing it removes ``_temporary`` if that is empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, Any

import attrs
import pyarrow as pa
import pyarrow.parquet as pq

from curator_exec_core import ProcessingStage, Task
from curator_exec_io._fs import filesystem, fingerprint_of, is_local, join, normalize_url

__all__ = ["BaseWriter", "JsonlWriter", "ParquetWriter", "WrittenFile", "file_name", "encode_task_id",
           "TEMPORARY_DIR", "as_table"]

#: where writers put files being written, below their output directory (readers skip ``_*`` names)
TEMPORARY_DIR = "_temporary"
_SAFE = re.compile(r"[A-Za-z0-9.\-]")
_PREFIX = re.compile(r"[A-Za-z0-9._\-]*")
_MAX_NAME = 200


@attrs.frozen
class WrittenFile:
    """What a writer returns for each task: the file's ``path`` (a URL keeps its protocol), its ``rows``
    and its size in ``bytes``."""

    path: str
    rows: int
    bytes: int


def encode_task_id(task_id: str) -> str:
    """``task_id`` as a file-name part, one-to-one: letters, digits, ``.`` and ``-`` stay, every other
    character becomes ``_`` and its code point in hex, ``_XX`` (``_uXXXXXX`` above 255): ``"3.1"`` ->
    ``"3.1"``, ``"Dedup#ab12"`` -> ``"Dedup_23ab12"``, ``"a_b"`` -> ``"a_5fb"``. A name longer than
    200 characters is cut and ends with 16 hex digits of its SHA-1."""
    if not task_id:
        raise ValueError("a task without an id cannot be named (ids are set by the framework)")
    parts = []
    for ch in task_id:
        if _SAFE.match(ch):
            parts.append(ch)
        else:
            code = ord(ch)
            parts.append(f"_{code:02x}" if code < 256 else f"_u{code:06x}")
    encoded = "".join(parts)
    if len(encoded) > _MAX_NAME:
        encoded = encoded[:_MAX_NAME - 17] + "-" + hashlib.sha1(encoded.encode()).hexdigest()[:16]
    return encoded


def file_name(task_id: str, prefix: str, extension: str) -> str:
    """The final file name of a task: ``<prefix><encoded task id><extension>`` (``part-0.3.parquet``)."""
    return f"{prefix}{encode_task_id(task_id)}{extension}"


def as_table(data: Any) -> pa.Table:
    """A writer's payload as a ``pyarrow.Table``: a Table, a RecordBatch, a list of dicts (rows), a dict of
    columns, or a pandas DataFrame."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return pa.Table.from_pylist(data)
    if isinstance(data, dict):
        return pa.table(data)
    if type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame":
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(f"a writer takes a pyarrow.Table (or RecordBatch, list of row dicts, dict of columns, "
                    f"pandas DataFrame), got {type(data).__name__}")


def _table_like(data: Any) -> bool:
    return (isinstance(data, (pa.Table, pa.RecordBatch, dict)) or
            (isinstance(data, list) and bool(data) and all(isinstance(row, dict) for row in data)) or
            (type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame"))


def _plain(value: Any) -> Any:
    """``value`` if JSON and Arrow can hold it as it is, else its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return repr(value)


class ToRows(ProcessingStage[Task, Task]):
    """Makes any task writable: table-like data (a Table, RecordBatch, dict of columns, list of row dicts,
    DataFrame) passes unchanged; anything else becomes one row ``{"task_id": ..., "data": ...}`` (data
    that JSON cannot hold is written as its ``repr``). ``curator-exec run --output`` puts it before the
    writer, so any pipeline's outputs can be written."""

    name = "to_rows"

    def process(self, task: Task) -> Task:
        if _table_like(task.data):
            return task
        return Task(data=[{"task_id": task.task_id, "data": _plain(task.data)}])


class BaseWriter(ProcessingStage[Task, Task]):
    """Writes each task's table to ``<path>/<prefix><task id><extension>`` and returns a task whose
    ``data`` is a :class:`WrittenFile` (same id as the input: a one-to-one stage).

    ``path`` is a directory (a local path, made absolute where the stage is built, or any fsspec URL),
    created when missing. ``storage_options`` go to fsspec (credentials: they are not part of the
    stage's fingerprint). A task with no row still gets its (empty) file: one file per task."""

    extension = ""

    def __init__(self, path: str | os.PathLike[str], *, prefix: str = "part-",
                 storage_options: Mapping[str, Any] | None = None, name: str | None = None) -> None:
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix) or prefix.startswith((".", "_")):
            raise ValueError(f"prefix must hold only letters, digits, '.', '_', '-' and not start with "
                             f"'.' or '_' (readers skip those names), got {prefix!r}")
        self.path = normalize_url(path).rstrip("/")
        if not self.path:
            self.path = "/"
        self.prefix = prefix
        self.storage_options = dict(storage_options or {})
        if name:
            self.name = name

    # -- what a format writer provides -------------------------------------
    def write_table(self, table: pa.Table, f: IO[bytes]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {"path": self.path, "prefix": self.prefix, "extension": self.extension}

    # -- names -------------------------------------------------------------
    def final_path(self, task_id: str) -> str:
        return join(self.path, file_name(task_id, self.prefix, self.extension))

    def temporary_dir(self) -> str:
        return join(self.path, TEMPORARY_DIR)

    def stale_temporaries(self, task_id: str) -> list[str]:
        """The temporary files of ``task_id``'s final name that are on the filesystem now (a listing of
        ``_temporary`` only, which holds the files being written and those of killed attempts)."""
        fs = filesystem(self.path, self.storage_options)
        start = file_name(task_id, self.prefix, self.extension) + "."
        try:
            names = fs.ls(self.temporary_dir(), detail=False)
        except FileNotFoundError:
            return []
        return [join(self.temporary_dir(), n) for n in (p.rstrip("/").rsplit("/", 1)[-1] for p in names)
                if n.startswith(start) and n.endswith(".tmp") and len(n) == len(start) + 32 + 4]

    # -- the work ----------------------------------------------------------
    def process(self, task: Task) -> Task:
        table = as_table(task.data)
        written = self.write(task.task_id, table)
        return Task(data=written)

    def write(self, task_id: str, table: pa.Table) -> WrittenFile:
        """Write ``table`` as ``task_id``'s file: temporary file, then rename into place."""
        fs = filesystem(self.path, self.storage_options)
        final = self.final_path(task_id)
        base = file_name(task_id, self.prefix, self.extension)
        for stale in self.stale_temporaries(task_id):  # a killed attempt of this same task
            _remove(fs, stale)
        temporary = join(self.temporary_dir(), f"{base}.{uuid.uuid4().hex}.tmp")
        try:
            size = self._write_temporary(fs, temporary, table)
            self._rename(fs, temporary, final)
        except FileNotFoundError:
            # our temporary file vanished: another attempt of this task, running at the same time, took
            # it for a killed one. Its file is the same (same task, same data): accept it if it is there.
            if not fs.exists(final):
                _remove(fs, temporary)
                raise
            size = fs.size(final)
        except BaseException:
            _remove(fs, temporary)
            raise
        finally:
            self._drop_temporary_dir(fs)
        return WrittenFile(path=final, rows=table.num_rows, bytes=int(size))

    def _write_temporary(self, fs: Any, temporary: str, table: pa.Table) -> int:
        for attempt in range(5):
            try:
                fs.makedirs(self.temporary_dir(), exist_ok=True)
                f = fs.open(temporary, "wb")
            except (FileNotFoundError, FileExistsError):
                # another writer removed the empty _temporary in between (os.makedirs(exist_ok=True) raises
                # FileExistsError when the directory goes away between its mkdir and its isdir check)
                if attempt == 4:
                    raise
                continue
            break
        with f:
            self.write_table(table, f)
            size = f.tell()
            if is_local(fs):
                f.flush()
                os.fsync(f.fileno())
        return int(size)

    def _rename(self, fs: Any, temporary: str, final: str) -> None:
        if is_local(fs):
            os.replace(temporary, final)  # atomic; replaces an older file of the same task
        else:
            fs.mv(temporary, final)  # object stores: the object appears whole (a copy), then the temporary goes

    def _drop_temporary_dir(self, fs: Any) -> None:
        """Remove ``_temporary`` when it is empty (object stores have no directories: nothing to do)."""
        try:
            if is_local(fs):
                os.rmdir(self.temporary_dir())
            elif fs.isdir(self.temporary_dir()) and not fs.ls(self.temporary_dir()):
                fs.rmdir(self.temporary_dir())
        except (OSError, ValueError):
            pass  # not empty (another writer is busy) or gone already

    def fingerprint(self) -> str:
        return fingerprint_of(type(self).__name__, **self.options())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} path={self.path!r}>"


def _remove(fs: Any, path: str) -> None:
    try:
        fs.rm(path)
    except (FileNotFoundError, OSError):
        pass


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    return str(value)


class JsonlWriter(BaseWriter):
    """JSON Lines: one object per row (``ensure_ascii=False``; dates as ISO text, ``Decimal`` as text).
    ``compression="gzip"`` (or ``"bz2"``, ``"xz"``) compresses the file and adds the codec's extension
    (``.jsonl.gz``), which ``JsonlReader`` recognises."""

    extension = ".jsonl"
    _CODEC_EXT: Mapping[str, str] = {"gzip": ".gz", "bz2": ".bz2", "xz": ".xz"}

    def __init__(self, path: str | os.PathLike[str], *, compression: str | None = None, prefix: str = "part-",
                 storage_options: Mapping[str, Any] | None = None, name: str | None = None) -> None:
        super().__init__(path, prefix=prefix, storage_options=storage_options, name=name)
        if compression is not None and compression not in self._CODEC_EXT:
            raise ValueError(f"compression must be None or one of {sorted(self._CODEC_EXT)}, got {compression!r}")
        self.compression = compression
        self.extension = ".jsonl" + (self._CODEC_EXT[compression] if compression else "")

    def options(self) -> dict[str, Any]:
        return {**super().options(), "compression": self.compression}

    def write_table(self, table: pa.Table, f: IO[bytes]) -> None:
        if self.compression is None:
            _write_jsonl(table, f)
            return
        import bz2
        import gzip
        import lzma

        # these leave ``f`` open when they close (the writer still asks it its size)
        out: Any
        if self.compression == "gzip":
            out = gzip.GzipFile(fileobj=f, mode="wb", mtime=0)  # mtime=0: the same bytes on every attempt
        elif self.compression == "bz2":
            out = bz2.BZ2File(f, mode="wb")
        else:
            out = lzma.LZMAFile(f, mode="wb")
        with out:
            _write_jsonl(table, out)


def _rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    for batch in table.to_batches(max_chunksize=8192):
        yield from batch.to_pylist()


def _write_jsonl(table: pa.Table, f: IO[bytes]) -> None:
    buffer: list[str] = []
    for row in _rows(table):
        buffer.append(json.dumps(row, ensure_ascii=False, default=_json_default))
        if len(buffer) >= 1024:
            f.write(("\n".join(buffer) + "\n").encode("utf-8"))
            buffer.clear()
    if buffer:
        f.write(("\n".join(buffer) + "\n").encode("utf-8"))


class ParquetWriter(BaseWriter):
    """Parquet, one file per task. ``compression`` (default ``"zstd"``) and ``row_group_size`` (rows per
    row group; default pyarrow's) go to ``pyarrow.parquet.write_table``."""

    extension = ".parquet"

    def __init__(self, path: str | os.PathLike[str], *, compression: str = "zstd",
                 row_group_size: int | None = None, prefix: str = "part-",
                 storage_options: Mapping[str, Any] | None = None, name: str | None = None) -> None:
        super().__init__(path, prefix=prefix, storage_options=storage_options, name=name)
        self.compression = compression
        self.row_group_size = row_group_size

    def options(self) -> dict[str, Any]:
        return {**super().options(), "compression": self.compression, "row_group_size": self.row_group_size}

    def write_table(self, table: pa.Table, f: IO[bytes]) -> None:
        pq.write_table(table, f, compression=self.compression, row_group_size=self.row_group_size)
