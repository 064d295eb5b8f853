"""Validated executor options.

Every executor has one attrs options class (``BaseExecutor.Options``). Options come
from the ``config`` dict, keyword arguments, or both; an unknown key is a
:class:`ConfigError` with a did-you-mean and the list of valid keys, and a value
of the wrong type or range is a :class:`ConfigError` naming the option. Plugins
subclass :class:`ExecutorOptions` and declare their fields with :func:`option`,
whose ``doc`` feeds ``curator-exec info`` and the reference docs.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypedDict, TypeVar

import attrs

from curator_exec_core.errors import ConfigError, did_you_mean

__all__ = ["ExecutorOptions", "OptionDoc", "option", "build_options", "describe_options", "parse_setting_value",
           "parse_settings"]

_MISSING = object()


def option(default: Any, kind: type | tuple[type, ...], doc: str, *, minimum: float | None = None,
           choices: tuple[Any, ...] | None = None, allow_none: bool = False) -> Any:
    """Declare an executor option: a default, accepted type(s), a doc line and bounds."""

    kinds = kind if isinstance(kind, tuple) else (kind,)

    def check(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and allow_none:
            return
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds) + (" or None" if allow_none else "")
            raise ConfigError(f"option {attribute.name!r} must be {names}, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"option {attribute.name!r} must be >= {minimum:g}, got {value!r}")
        if choices is not None and value not in choices:
            raise ConfigError(f"option {attribute.name!r} must be one of {', '.join(map(repr, choices))}, got {value!r}")

    def convert(value: Any) -> Any:
        # accept ints where floats are expected
        if float in kinds and int not in kinds and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    factory = attrs.Factory(lambda: dict(default)) if isinstance(default, dict) else default
    return attrs.field(default=factory, validator=check, converter=convert, metadata={"doc": doc, "kinds": kinds})


@attrs.define(kw_only=True)
class ExecutorOptions:
    """Options every executor has.

    ``aliases`` maps another accepted name of an option to its name (``{"pool_size":
    "max_workers_per_stage"}``); giving both names is a :class:`ConfigError`.
    """

    aliases: ClassVar[Mapping[str, str]] = {}

    ignore_head_node: bool = option(False, bool, "Place no worker on the head node (and leave it out of capacity).")
    ignore_failures: bool = option(
        False, bool,
        "Finish the run when a stage raises; every failed task is on result.failed_tasks and logged. "
        "False: the first failure aborts the run with StageFailedError.",
    )
    max_retries: int = option(0, int, "Retry a task whose stage raised this many times before it counts as failed.",
                              minimum=0)
    max_failed_tasks: int | float | None = option(
        None, (int, float),
        "With ignore_failures=True: abort the run (FailureBudgetExceeded, naming the first errors) once more "
        "tasks failed than this: a count (int), or a fraction of the source tasks (a float below 1). "
        "None: no budget.", minimum=0, allow_none=True)
    task_timeout: float | None = option(
        None, float,
        "Seconds a call of a stage (process, process_batch, keys, reduce, a gang share) may run; a longer one "
        "is stopped and counts as a failure (retried, then a failure record or StageFailedError). A stage's "
        "own task_timeout attribute wins. None: no limit.", minimum=0, allow_none=True)
    source_window: int = option(
        10_000, int, "Source tasks per execute() call for an executor that takes lists (one that streams its "
        "input reads the source as it goes): the driver holds at most about this many source tasks.", minimum=1)
    show_progress: bool = option(True, bool, "Show tqdm progress bars (on stderr, when it is a terminal).")
    progress_interval: float = option(
        10.0, float, "Minimum seconds between progress updates; also how often the 'stats' event is sent "
        "(and stats.json written with a checkpoint).", minimum=0)

    def __attrs_post_init__(self) -> None:
        budget = self.max_failed_tasks
        if isinstance(budget, float) and not budget < 1:
            raise ConfigError(f"max_failed_tasks={budget!r}: a float is a fraction of the source tasks and must be "
                              "below 1; give an int for a count")
        if budget is not None and not self.ignore_failures:
            raise ConfigError("max_failed_tasks only applies with ignore_failures=True (without it, the first "
                              "failure aborts the run); set ignore_failures=True or drop max_failed_tasks")

    def failure_limit(self, source_tasks: int) -> int | None:
        """How many failed tasks the budget allows for ``source_tasks`` (None: no budget)."""
        budget = self.max_failed_tasks
        if budget is None:
            return None
        return int(budget * source_tasks) if isinstance(budget, float) else int(budget)


#: an options class: an attrs class, :class:`ExecutorOptions` or a subclass for an executor (a plugin's
#: per-stage options are another attrs class; ``aliases`` is optional)
OptionsT = TypeVar("OptionsT", bound=attrs.AttrsInstance)


def build_options(cls: type[OptionsT], values: Mapping[str, Any], executor: str = "") -> OptionsT:
    """Validate ``values`` into ``cls``; unknown keys and bad values are :class:`ConfigError`."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"config must be a dict, got {type(values).__name__}")
    values = dict(values)
    renamed: dict[str, str] = {}
    aliases: Mapping[str, str] = getattr(cls, "aliases", {})
    for alias, name in aliases.items():
        if alias in values:
            if name in values:
                raise ConfigError(f"options {alias!r} and {name!r} of executor {executor!r} are the same option "
                                  f"({alias!r} is another name of {name!r}): give one of them")
            values[name] = values.pop(alias)
            renamed[name] = alias
    known = [f.name for f in attrs.fields(cls)]
    unknown = [k for k in values if k not in known]
    if unknown:
        parts = []
        for key in unknown:
            hint = did_you_mean(str(key), [*known, *aliases])
            parts.append(f"{key!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
        who = f"executor {executor!r}" if executor else cls.__name__
        raise ConfigError(
            f"unknown option(s) for {who}: {', '.join(parts)}. Valid options: {', '.join(sorted([*known, *aliases]))}."
        )
    try:
        return cls(**values)
    except ConfigError as exc:
        message = str(exc)
        for name, alias in renamed.items():  # name the option as the user gave it
            message = message.replace(f"option {name!r}", f"option {alias!r} (another name of {name!r})")
        if message != str(exc):
            raise ConfigError(message) from None
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid options for executor {executor!r}: {exc}") from exc


class OptionDoc(TypedDict):
    """One row of :func:`describe_options`."""

    name: str
    type: str
    default: Any
    doc: str


def describe_options(cls: type[ExecutorOptions]) -> list[OptionDoc]:
    """Name, type, default and doc of every option (for the CLI and the docs)."""
    rows: list[OptionDoc] = []
    for f in attrs.fields(cls):
        default = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default  # type: ignore[arg-type]
        kinds = f.metadata.get("kinds", ())
        rows.append({"name": f.name, "type": " | ".join(k.__name__ for k in kinds), "default": default,
                     "doc": f.metadata.get("doc", "")})
    for alias, name in cls.aliases.items():
        rows.append({"name": alias, "type": "", "default": None, "doc": f"Another name of {name!r} (give one of them)."})
    return rows


# -- option values from text (``--set key=value``) ------------------------------------------

#: words read as a value whatever their case (before JSON and Python literals)
SETTING_WORDS: Mapping[str, bool | None] = {"true": True, "yes": True, "on": True, "false": False, "no": False,
                                    "off": False, "none": None, "null": None}


def parse_setting_value(text: str) -> Any:
    """One option value given as text (``curator-exec --set``, ``benchmarks/run.py --set``).

    The rule, after stripping surrounding whitespace:

    1. ``true``/``yes``/``on`` -> ``True``, ``false``/``no``/``off`` -> ``False``,
       ``none``/``null`` -> ``None``, in any case (``False``, ``YES``);
    2. else JSON, if it parses (``2``, ``2.5``, ``[1, 2]``, ``{"a": 1}``, ``"quoted"``);
    3. else a Python literal, if it parses (``(1, 2)``, ``{'a': 1}``, ``'quoted'``, ``1_000``);
    4. else the text itself, as a string (``hello``, and the empty string).
    """
    text = text.strip()
    word = text.lower()
    if word in SETTING_WORDS:
        return SETTING_WORDS[word]
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_settings(items: Iterable[str] | None) -> dict[str, Any]:
    """``["max_retries=2", "ignore_failures=yes"]`` -> ``{"max_retries": 2, "ignore_failures": True}``.

    Each item is ``key=value`` (split at the first ``=``; the key is stripped and must not
    be empty); the value is read with :func:`parse_setting_value`. A later item with the
    same key wins. An item that is not ``key=value`` is a :class:`ConfigError`.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key] = parse_setting_value(raw)
    return out
