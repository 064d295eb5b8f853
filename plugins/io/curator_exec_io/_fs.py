"""fsspec helpers: URLs as the user gave them, filesystems created where they are used (never pickled)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.core import split_protocol

__all__ = ["normalize_url", "filesystem", "is_local", "join", "fingerprint_of"]


def normalize_url(url: str | os.PathLike[str]) -> str:
    """A local path made absolute (on the driver, where the stage is built: workers may run in another
    directory); any URL with a protocol (``memory://``, ``s3://``, ``file://``) as given."""
    url = os.fspath(url)
    if not isinstance(url, str) or not url:
        raise TypeError(f"a path must be a non-empty str or os.PathLike, got {url!r}")
    if split_protocol(url)[0] is None:
        trailing = url.endswith(("/", os.sep))
        url = os.path.abspath(os.path.expanduser(url))
        if trailing and not url.endswith(os.sep):
            url += os.sep
    return url


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> fsspec.AbstractFileSystem:
    """The filesystem of ``url``. fsspec caches instances, so calling this per task is cheap; stages call
    it where they work instead of keeping a filesystem in their (pickled) state."""
    fs, _ = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def join(directory: str, name: str) -> str:
    """``directory/name`` for a local path or a URL (``memory://out`` + ``a`` -> ``memory://out/a``)."""
    if split_protocol(directory)[0] is None:
        return os.path.join(directory, name)
    return directory.rstrip("/") + "/" + name


def fingerprint_of(kind: str, **options: Any) -> str:
    """A stable text of a stage's options (sorted keys; values by ``repr`` when JSON cannot take them)."""
    return kind + json.dumps(options, sort_keys=True, default=repr)
