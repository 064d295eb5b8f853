"""Import an object named ``"package.module:attr"`` (the notation of entry points and ``--pipeline``)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_object", "split_target"]


def split_target(target: str) -> tuple[str, str]:
    """``"package.module:attr.sub"`` -> ``("package.module", "attr.sub")``; a :class:`ValueError`
    when either part is missing."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'module:attr', got {target!r}")
    return module_name, attr


def import_object(target: str) -> Any:
    """``"package.module:attr.sub"`` -> the object: import the module, then follow the dotted attributes.

    A target without a module or an attribute part is a :class:`ValueError` (see
    :func:`split_target`); a module that does not import or an attribute that is missing raise
    as they come (``ImportError``, ``AttributeError``, or whatever the module raised).
    """
    module_name, attr = split_target(target)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
