"""The plugin manager and the executor registry.

Executors are found by name through the ``curator_exec.executors`` entry-point
group: the entry-point name is the executor name and its value a light module
that implements ``curator_exec_register_executors`` (it must not import the
engine). Built-in and third-party plugins take the same path.

Environment controls (read on first use, like pytest's):

* ``CURATOR_EXEC_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry point, except those
  named in ``CURATOR_EXEC_PLUGINS`` (comma-separated entry-point names).
* ``CURATOR_EXEC_BLOCK_PLUGINS=name1,name2``: never load these entry points.

A plugin whose import or registration fails is reported with a warning naming
its distribution and version and skipped; the others keep working, and asking
for its executor by name raises the real error. Two distributions claiming one
executor name is a :class:`PluginError` naming both, when that name is asked for.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING, Any, cast

import attrs
import pluggy

from curator_exec_core import hookspecs
from curator_exec_core.errors import PluginError, UnknownExecutorError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_core.executor import BaseExecutor

__all__ = [
    "ENTRY_POINT_GROUP",
    "KNOWN_BACKENDS",
    "ExecutorSpec",
    "PluginInfo",
    "PluginLoadWarning",
    "get_executor",
    "list_executors",
    "list_plugins",
    "register_plugin",
    "unregister_plugin",
    "get_plugin_manager",
    "reset_registry",
]

ENTRY_POINT_GROUP = "curator_exec.executors"
ENV_DISABLE_AUTOLOAD = "CURATOR_EXEC_DISABLE_PLUGIN_AUTOLOAD"
ENV_PLUGINS = "CURATOR_EXEC_PLUGINS"
ENV_BLOCK = "CURATOR_EXEC_BLOCK_PLUGINS"

#: Executors we publish, and the distribution that provides each (for install hints).
KNOWN_BACKENDS: dict[str, str] = {
    "local": "curator-exec-local",
    "ray_actor_pool": "curator-exec-rayactorpool",
    "ray_data": "curator-exec-raydata",
    "xenna": "curator-exec-xenna",
    "slurm": "curator-exec-slurm",
}


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded and was skipped."""


@attrs.frozen
class ExecutorSpec:
    """An executor a plugin provides. ``factory`` is ``"module:Class"``, imported lazily."""

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    factory: str = attrs.field(validator=attrs.validators.instance_of(str))
    summary: str = ""
    distribution: str = ""
    version: str = ""

    def __attrs_post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"executor name {self.name!r} must be an identifier (letters, digits, _)")
        if ":" not in self.factory:
            raise ValueError(f"executor {self.name!r}: factory {self.factory!r} must be 'module:Class'")

    def load(self) -> type[BaseExecutor]:
        """Import the executor class (this imports the engine)."""
        module_name, _, attr = self.factory.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise PluginError(
                f"executor {self.name!r} from {self.distribution or 'an unknown distribution'} "
                f"{self.version} failed to import {self.factory!r}: {exc!r}"
            ) from exc
        return cast("type[BaseExecutor]", obj)  # what the plugin registered (``get_executor`` instantiates it)


@attrs.frozen
class PluginInfo:
    """One plugin as ``curator-exec plugins`` shows it."""

    name: str
    distribution: str
    version: str
    status: str  # ok | broken | blocked | disabled | conflict
    executors: tuple[str, ...] = ()
    error: str = ""


def _split_env(name: str) -> set[str]:
    return {p.strip() for p in os.environ.get(name, "").split(",") if p.strip()}


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown distribution>", ""
    return dist.metadata["Name"] or "<unknown distribution>", dist.version or ""


class Registry:
    """Plugin manager plus the name -> :class:`ExecutorSpec` table. One per process."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        from curator_exec_core._tqdm import TqdmProgress
        from curator_exec_core.lifecycle import DefaultLifecycle

        self.pm.register(DefaultLifecycle(), name="curator_exec.defaults")

        self.pm.register(TqdmProgress(), name="curator_exec.progress")
        self._lock = threading.RLock()
        self._loaded = False
        self._plugins: list[PluginInfo] = []
        self._origin: dict[int, tuple[str, str, str]] = {}  # id(plugin) -> (name, dist, version)
        self._broken: dict[str, BaseException] = {}  # entry-point name -> error
        self._specs: dict[str, ExecutorSpec] = {}
        self._conflicts: dict[str, list[ExecutorSpec]] = {}

    # -- loading -----------------------------------------------------------
    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            disabled = os.environ.get(ENV_DISABLE_AUTOLOAD, "").strip().lower() not in ("", "0", "false", "no")
            allowed = _split_env(ENV_PLUGINS)
            blocked = _split_env(ENV_BLOCK)
            seen: set[tuple[str, str]] = set()
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                dist, version = _dist_of(ep)
                if (ep.name, dist) in seen:
                    continue
                seen.add((ep.name, dist))
                if ep.name in blocked:
                    self._plugins.append(PluginInfo(ep.name, dist, version, "blocked"))
                    continue
                if disabled and ep.name not in allowed:
                    self._plugins.append(PluginInfo(ep.name, dist, version, "disabled"))
                    continue
                try:
                    plugin = ep.load()
                    self.pm.register(plugin, name=f"{ENTRY_POINT_GROUP}:{ep.name}:{dist}")
                except Exception as exc:
                    self._mark_broken(ep.name, dist, version, exc)
                    continue
                self._origin[id(plugin)] = (ep.name, dist, version)
                self._plugins.append(PluginInfo(ep.name, dist, version, "ok"))
            self._collect()

    def _mark_broken(self, name: str, dist: str, version: str, exc: BaseException) -> None:
        self._broken[name] = exc
        self._plugins = [p for p in self._plugins if p.name != name or p.distribution != dist]
        self._plugins.append(PluginInfo(name, dist, version, "broken", error=repr(exc)))
        warnings.warn(
            f"curator-exec plugin {name!r} from {dist} {version} could not be loaded and is skipped: {exc!r}",
            PluginLoadWarning,
            stacklevel=3,
        )

    def _collect(self) -> None:
        """Ask every registered plugin for its executors, one plugin at a time."""
        self._specs.clear()
        self._conflicts.clear()
        claims: dict[str, list[ExecutorSpec]] = {}
        for impl in self.pm.hook.curator_exec_register_executors.get_hookimpls():
            name, dist, version = self._origin.get(id(impl.plugin), (impl.plugin_name, "<registered>", ""))
            try:
                returned: Any = impl.function()  # a plugin's answer, checked below
                specs: list[ExecutorSpec] = list(returned or [])
                for spec in specs:
                    if not isinstance(spec, ExecutorSpec):
                        raise TypeError(f"curator_exec_register_executors returned {spec!r}, not an ExecutorSpec")
            except Exception as exc:
                self._mark_broken(name, dist, version, exc)
                continue
            for spec in specs:
                spec = attrs.evolve(spec, distribution=spec.distribution or dist, version=spec.version or version)
                bucket = claims.setdefault(spec.name, [])
                if not any(s.distribution == spec.distribution and s.factory == spec.factory for s in bucket):
                    bucket.append(spec)
            self._plugins = [
                attrs.evolve(p, executors=tuple(s.name for s in specs)) if (p.name, p.distribution) == (name, dist) else p
                for p in self._plugins
            ]
        for exec_name, bucket in claims.items():
            if len(bucket) == 1:
                self._specs[exec_name] = bucket[0]
            else:
                self._conflicts[exec_name] = bucket
                owners = " and ".join(f"{s.distribution} {s.version} ({s.factory})" for s in bucket)
                warnings.warn(f"executor name {exec_name!r} is claimed by {owners}; it cannot be used until one is "
                              "uninstalled", PluginLoadWarning, stacklevel=3)

    # -- queries -----------------------------------------------------------
    def specs(self) -> dict[str, ExecutorSpec]:
        self._load()
        return dict(self._specs)

    def plugins(self) -> list[PluginInfo]:
        self._load()
        out: list[PluginInfo] = []
        for p in self._plugins:  # an entry point whose executor is claimed twice is shown once, as a conflict
            clash = [e for e in p.executors if e in self._conflicts]
            if p.status == "ok" and clash:
                p = attrs.evolve(p, status="conflict", error="; ".join(
                    f"{e!r} claimed by " + ", ".join(b.distribution for b in self._conflicts[e]) for e in clash))
            out.append(p)
        listed = {(e, p.distribution) for p in out for e in p.executors}
        for name, bucket in self._conflicts.items():
            for s in bucket:
                if (name, s.distribution) not in listed:
                    out.append(PluginInfo(name, s.distribution, s.version, "conflict", (name,),
                                          error="claimed by " + ", ".join(b.distribution for b in bucket)))
        registered = {(p.name, p.distribution) for p in out}
        for spec in self._specs.values():
            if spec.distribution == "<registered>" and (spec.name, spec.distribution) not in registered:
                out.append(PluginInfo(spec.name, spec.distribution, spec.version, "ok", (spec.name,)))
        return out

    def spec(self, name: str) -> ExecutorSpec:
        self._load()
        if name in self._specs:
            return self._specs[name]
        if name in self._conflicts:
            owners = " and ".join(f"{s.distribution} {s.version}" for s in self._conflicts[name])
            raise PluginError(
                f"executor {name!r} is provided by two distributions: {owners}. Uninstall one of them "
                f"(or block one entry point with {ENV_BLOCK})."
            )
        if name in self._broken:
            info = next(p for p in self._plugins if p.name == name and p.status == "broken")
            raise PluginError(
                f"executor plugin {name!r} from {info.distribution} {info.version} is broken: "
                f"{self._broken[name]!r}"
            ) from self._broken[name]
        raise UnknownExecutorError(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        installed = sorted(self._specs)
        # installed entry points that were not loaded: name -> status (blocked | disabled)
        not_loaded = {p.name: p.status for p in self._plugins if p.status in ("blocked", "disabled")}
        lines = [f"no executor named {name!r}."]
        hint = None
        if name not in KNOWN_BACKENDS and name not in not_loaded:
            hint = did_you_mean(name, (set(installed) | set(KNOWN_BACKENDS) | set(not_loaded)) - {name})
        if hint:
            lines.append(f"Did you mean {hint!r}?")
        lines.append("Installed executors: " + (", ".join(installed) if installed else "none") + ".")
        target = name if (name in KNOWN_BACKENDS or name in not_loaded) else hint
        if target in not_loaded:
            how = (f"blocked by {ENV_BLOCK}" if not_loaded[target] == "blocked"
                   else f"not autoloaded ({ENV_DISABLE_AUTOLOAD} is set; add it to {ENV_PLUGINS})")
            lines.append(f"Plugin {target!r} is installed but {how}.")
        elif target in KNOWN_BACKENDS and target not in self._specs:
            lines.append(f"{target!r} is provided by {KNOWN_BACKENDS[target]}: pip install {KNOWN_BACKENDS[target]}")
        return " ".join(lines)

    # -- programmatic registration ------------------------------------------
    def register(self, plugin: object, name: str | None = None) -> str:
        self._load()
        registered = self.pm.register(plugin, name=name)
        if registered is None:
            raise PluginError(f"plugin {name or plugin!r} is blocked or already registered")
        self._collect_keep_plugins()
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> None:
        self.pm.unregister(plugin=plugin, name=name)
        self._collect_keep_plugins()

    def _collect_keep_plugins(self) -> None:
        with self._lock:
            self._collect()


_REGISTRY: Registry | None = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> Registry:
    global _REGISTRY
    if _REGISTRY is None:
        with _REGISTRY_LOCK:
            if _REGISTRY is None:
                _REGISTRY = Registry()
    return _REGISTRY


def reset_registry() -> None:
    """Forget every loaded plugin; the next call re-reads entry points and the environment."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        _REGISTRY = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The pluggy plugin manager, with entry-point plugins loaded."""
    reg = get_registry()
    reg._load()
    return reg.pm


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a hook-implementing object (an observer, a wrapper, an executor provider)."""
    return get_registry().register(plugin, name)


def unregister_plugin(plugin: object | None = None, name: str | None = None) -> None:
    get_registry().unregister(plugin, name)


def list_executors() -> list[ExecutorSpec]:
    """Every usable executor, sorted by name. Imports no engine."""
    return sorted(get_registry().specs().values(), key=lambda s: s.name)


def list_plugins() -> list[PluginInfo]:
    """Every plugin entry point seen, with its status (ok, broken, blocked, disabled, conflict)."""
    return get_registry().plugins()


def executor_class(name: str) -> type[BaseExecutor]:
    spec = get_registry().spec(name)
    cls = spec.load()
    return cls


def executor_registration(name: str, factory: str, summary: str = "") -> Callable[[], list[ExecutorSpec]]:
    """A ready ``curator_exec_register_executors`` implementation for a plugin module that
    registers one executor (the registration stays lazy: nothing of ``factory`` is imported)::

        curator_exec_register_executors = executor_registration("threads", "pkg.executor:ThreadsExecutor", "...")
    """

    @hookspecs.hookimpl
    def curator_exec_register_executors() -> list[ExecutorSpec]:
        return [ExecutorSpec(name=name, factory=factory, summary=summary)]

    return curator_exec_register_executors


def get_executor(name: str, config: dict[str, Any] | None = None, **options: Any) -> BaseExecutor:
    """Build the executor registered as ``name``. ``config`` and keyword options are merged and validated.

    >>> get_executor("local", ignore_failures=True)  # doctest: +SKIP
    """
    cls = executor_class(name)
    return cls(config=config, **options)

