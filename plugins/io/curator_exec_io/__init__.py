"""curator-exec-io: reader and writer stages on pyarrow and fsspec (a library, no executor).

* :class:`FilePartitioning` lists files (paths, globs, directories; any fsspec URL) into tasks of
  ``files_per_task`` paths;
* :class:`JsonlReader` / :class:`ParquetReader` turn a task's files into tasks of ``batch_rows`` rows
  whose ``data`` is a ``pyarrow.Table``;
* :class:`JsonlWriter` / :class:`ParquetWriter` write one file per task, named from the task id, through a
  temporary file renamed into place, and return a :class:`WrittenFile` (path, rows, bytes) per task.

See docs/io.md.
"""

from curator_exec_io.partitioning import FilePartitioning, list_files
from curator_exec_io.readers import BaseReader, JsonlReader, ParquetReader
from curator_exec_io.writers import (
    TEMPORARY_DIR,
    BaseWriter,
    JsonlWriter,
    ParquetWriter,
    ToRows,
    WrittenFile,
    as_table,
    encode_task_id,
    file_name,
)

__all__ = ["FilePartitioning", "list_files", "BaseReader", "JsonlReader", "ParquetReader", "BaseWriter",
           "JsonlWriter", "ParquetWriter", "ToRows", "WrittenFile", "as_table", "encode_task_id", "file_name",
           "TEMPORARY_DIR"]
