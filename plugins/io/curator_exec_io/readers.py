"""``JsonlReader`` and ``ParquetReader``: a task's files -> tasks of at most ``batch_rows`` rows (pyarrow Tables)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from curator_exec_core import ProcessingStage, Task
from curator_exec_io._fs import filesystem, fingerprint_of

__all__ = ["BaseReader", "JsonlReader", "ParquetReader", "batches"]


def batches(table: pa.Table, batch_rows: int | None) -> list[pa.Table]:
    """``table`` cut into tables of at most ``batch_rows`` rows (``None``: the whole table, if it has rows).

    Each piece is a copy (``take``), not a zero-copy slice: a pickled slice carries its parent's whole
    buffers, and distributed engines pickle every task they move."""
    n = table.num_rows
    if n == 0:
        return []
    if batch_rows is None or batch_rows >= n:
        return [table]
    return [table.take(pa.array(range(start, min(start + batch_rows, n)), type=pa.int64()))
            for start in range(0, n, batch_rows)]


class BaseReader(ProcessingStage[Task, Task]):
    """Reads the files a task names (``data``: a path or a list of paths, as ``FilePartitioning`` makes)
    in order, and returns tasks of at most ``batch_rows`` rows each; ``data`` is a ``pyarrow.Table``.

    The files of one task are concatenated before cutting (a batch may hold rows of two files; schemas
    are unified, a column missing from a file is null there). Output ids are the runner's fan-out ids,
    ``"<input id>.<i>"``; a task whose files hold no row gives no output. ``columns`` keeps only those
    columns (in that order)."""

    def __init__(self, batch_rows: int | None = None, *, columns: Sequence[str] | None = None,
                 storage_options: Mapping[str, Any] | None = None, name: str | None = None) -> None:
        if batch_rows is not None and (not isinstance(batch_rows, int) or isinstance(batch_rows, bool)
                                       or batch_rows < 1):
            raise ValueError(f"batch_rows must be None or an int >= 1, got {batch_rows!r}")
        self.batch_rows = batch_rows
        self.columns = list(columns) if columns is not None else None
        self.storage_options = dict(storage_options or {})
        if name:
            self.name = name

    def read_file(self, path: str) -> pa.Table:  # pragma: no cover - abstract
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {"batch_rows": self.batch_rows, "columns": self.columns}

    def process(self, task: Task) -> list[Task]:
        data = task.data
        paths = [data] if isinstance(data, (str, os.PathLike)) else data
        if not isinstance(paths, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) for p in paths):
            raise TypeError(f"{self.name}: task {task.task_id!r} must hold a path or a list of paths "
                            f"(FilePartitioning makes them), got {type(data).__name__}")
        tables = [self.read_file(os.fspath(p)) for p in paths]
        tables = [t for t in tables if t.num_columns or t.num_rows]
        if not tables:
            return []
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
        if self.columns is not None:
            table = table.select(self.columns)
        return [Task(data=piece) for piece in batches(table, self.batch_rows)]

    def fingerprint(self) -> str:
        return fingerprint_of(type(self).__name__, **self.options())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} batch_rows={self.batch_rows}>"


class JsonlReader(BaseReader):
    """JSON Lines files (one object per line; ``.gz``, ``.bz2``, ``.zst``... decompressed by extension).

    ``schema`` (a ``pyarrow.Schema``) fixes the column types instead of inferring them per file;
    ``block_size`` is pyarrow's parsing block in bytes, which must exceed the longest line (default 16 MiB).
    """

    def __init__(self, batch_rows: int | None = None, *, columns: Sequence[str] | None = None,
                 schema: pa.Schema | None = None, block_size: int = 16 << 20,
                 storage_options: Mapping[str, Any] | None = None, name: str | None = None) -> None:
        super().__init__(batch_rows, columns=columns, storage_options=storage_options, name=name)
        self.schema = schema
        self.block_size = block_size

    def options(self) -> dict[str, Any]:
        return {**super().options(), "schema": None if self.schema is None else str(self.schema),
                "block_size": self.block_size}

    def read_file(self, path: str) -> pa.Table:
        fs = filesystem(path, self.storage_options)
        parse = pa_json.ParseOptions(explicit_schema=self.schema) if self.schema is not None else None
        with fs.open(path, "rb", compression="infer") as f:
            return pa_json.read_json(f, read_options=pa_json.ReadOptions(block_size=self.block_size),
                                     parse_options=parse)


class ParquetReader(BaseReader):
    """Parquet files; ``columns`` is pushed down to the file reader."""

    def read_file(self, path: str) -> pa.Table:
        fs = filesystem(path, self.storage_options)
        with fs.open(path, "rb") as f:
            return pq.read_table(f, columns=self.columns)
