"""The executor registry, tested with real (throwaway) distributions.

Every test that needs a plugin writes a real ``<name>-<version>.dist-info`` folder
(``METADATA`` + ``entry_points.txt``) and its module into ``tmp_path`` and puts
``tmp_path`` on ``sys.path``, so ``importlib.metadata`` finds it exactly as it
finds an installed plugin. Nothing in the registry is mocked. Other plugins that
happen to be installed (``xenna``, ``ray_*``) are tolerated: assertions are about
the names the tests control.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from importlib import metadata
from pathlib import Path

import pytest

from curator_exec_core import (
    BaseExecutor,
    ConfigError,
    ExecutorSpec,
    Pipeline,
    PluginError,
    ProcessingStage,
    Task,
    UnknownExecutorError,
    get_executor,
    hookimpl,
    list_executors,
    list_plugins,
    register_plugin,
    unregister_plugin,
)
from curator_exec_core.registry import (
    ENTRY_POINT_GROUP,
    ENV_BLOCK,
    ENV_DISABLE_AUTOLOAD,
    ENV_PLUGINS,
    PluginLoadWarning,
    reset_registry,
)

# -- throwaway distributions --------------------------------------------------------------


class FakeDists:
    """Writes distributions and modules into one folder that is on ``sys.path``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def module(self, name: str, source: str) -> None:
        (self.root / f"{name}.py").write_text(textwrap.dedent(source))
        self.modules.append(name)
        importlib.invalidate_caches()

    def dist(self, name: str, version: str = "1.0.0", entry_points: dict[str, str] | None = None,
             modules: dict[str, str] | None = None) -> Path:
        """A distribution ``name`` whose ``curator_exec.executors`` entry points are ``entry_points``."""
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        if entry_points is not None:
            lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in entry_points.items()]
            (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for mod, source in (modules or {}).items():
            self.module(mod, source)
        importlib.invalidate_caches()
        return info

    def hide(self, name: str) -> None:
        """Shadow an installed distribution ``name`` with an empty one of the same name.

        ``importlib.metadata.entry_points()`` keeps the first distribution of each
        name on ``sys.path``, and ours comes first, so the real one's entry points
        become invisible (whether or not it is installed).
        """
        self.dist(name, "0.0.0.dev0", entry_points={})


@pytest.fixture
def dists(tmp_path, monkeypatch):
    for var in (ENV_DISABLE_AUTOLOAD, ENV_PLUGINS, ENV_BLOCK):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_registry()
    fake = FakeDists(tmp_path)
    yield fake
    reset_registry()
    for name in fake.modules:
        sys.modules.pop(name, None)
    importlib.invalidate_caches()


def provider_source(*specs: tuple[str, str]) -> str:
    """An entry-point module that registers ``(name, factory)`` executors."""
    items = ", ".join(f"ExecutorSpec(name={n!r}, factory={f!r}, summary='test executor {n}')" for n, f in specs)
    return f"""
        from curator_exec_core import ExecutorSpec, hookimpl

        @hookimpl
        def curator_exec_register_executors():
            return [{items}]
        """


# A third party's executor in NeMo Curator's documented shape: only ``execute`` is overridden.
ACME_IMPL = """
    from curator_exec_core import BaseExecutor, EmptyTask

    class AcmeExecutor(BaseExecutor):
        def execute(self, stages, initial_tasks=None):
            tasks = initial_tasks or [EmptyTask()]
            for stage in stages:
                stage.setup({})
                new_tasks = []
                for task in tasks:
                    result = stage.process(task)
                    if result is not None:
                        new_tasks.extend(result if isinstance(result, list) else [result])
                stage.teardown()
                tasks = new_tasks
            return tasks
    """


def install_acme(dists: FakeDists, version: str = "1.2.3") -> None:
    dists.dist("acme-curator-exec", version, {"acme": "acme_exec_plugin"},
               {"acme_exec_plugin": provider_source(("acme", "acme_exec_impl:AcmeExecutor")),
                "acme_exec_impl": ACME_IMPL})


def install_broken_import(dists: FakeDists) -> None:
    dists.dist("broken-import-dist", "0.0.1", {"broken_import": "broken_import_plugin"},
               {"broken_import_plugin": "import curator_exec_no_such_engine_xyz\n"})


# -- stages used to run pipelines ---------------------------------------------------------


class Explode(ProcessingStage):
    """``n`` -> ``n`` tasks with data 0..n-1."""

    name = "explode"

    def process(self, task: Task) -> list[Task]:
        return [Task(data=i) for i in range(task.data)]


class DropOdd(ProcessingStage):
    name = "drop_odd"

    def process(self, task: Task) -> Task | None:
        return task if task.data % 2 == 0 else None


def tiny_pipeline() -> Pipeline:
    return Pipeline("tiny", [Explode(), DropOdd()])


def check_tiny_run(executor) -> None:
    result = tiny_pipeline().run(executor, initial_tasks=[Task(data=5)])
    assert sorted((t.task_id, t.data) for t in result) == [("0.0", 0), ("0.2", 2), ("0.4", 4)]
    assert result.failed_tasks == []


def names() -> list[str]:
    return [s.name for s in list_executors()]


def plugin_rows(name: str) -> list:
    return [p for p in list_plugins() if p.name == name]


@contextlib.contextmanager
def no_plugin_warnings(about: str):
    """Fail on a PluginLoadWarning that mentions ``about`` (other installed plugins may warn)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        yield
    mine = [str(w.message) for w in record if issubclass(w.category, PluginLoadWarning) and about in str(w.message)]
    assert not mine, mine


# -- a third-party executor ---------------------------------------------------------------


def test_third_party_executor_found_by_name_and_runs(dists):
    install_acme(dists)

    specs = {s.name: s for s in list_executors()}
    assert "local" in specs and "acme" in specs
    acme = specs["acme"]
    assert (acme.distribution, acme.version) == ("acme-curator-exec", "1.2.3")
    assert acme.factory == "acme_exec_impl:AcmeExecutor"
    assert "acme_exec_impl" not in sys.modules, "listing executors must not import the executor module"
    [row] = plugin_rows("acme")
    assert (row.distribution, row.version, row.status, row.executors) == ("acme-curator-exec", "1.2.3", "ok", ("acme",))

    executor = get_executor("acme")
    assert type(executor).__module__ == "acme_exec_impl"
    assert isinstance(executor, BaseExecutor)
    check_tiny_run(executor)
    # by name, through Pipeline.run
    check_tiny_run("acme")


def test_local_found_through_its_entry_point(dists):
    [spec] = [s for s in list_executors() if s.name == "local"]
    assert spec.distribution == "curator-exec-local"
    assert spec.version == metadata.version("curator-exec-local")
    check_tiny_run(get_executor("local"))


# -- unknown names ------------------------------------------------------------------------


def installed_in_message(message: str) -> list[str]:
    match = re.search(r"Installed executors: (.*?)\.(?: |$)", message)
    assert match, message
    return [] if match.group(1) == "none" else match.group(1).split(", ")


def test_unknown_name_did_you_mean_and_installed_names(dists):
    install_acme(dists)
    with pytest.raises(UnknownExecutorError) as info:
        get_executor("lokal")
    message = str(info.value)
    assert "no executor named 'lokal'" in message
    assert "Did you mean 'local'?" in message
    assert installed_in_message(message) == names()
    assert {"local", "acme"} <= set(installed_in_message(message))
    assert "pip install" not in message
    assert isinstance(info.value, LookupError)


def test_unknown_name_without_anything_close(dists):
    with pytest.raises(UnknownExecutorError) as info:
        get_executor("qqqqzzzz")
    assert "Did you mean" not in str(info.value)
    assert "local" in installed_in_message(str(info.value))


@pytest.mark.parametrize("asked", ["ray_actor_pool", "ray_actr_pool"])
def test_known_backend_not_installed_gives_pip_line(dists, asked):
    # Make the test hold even where curator-exec-rayactorpool IS installed: an empty
    # distribution of the same name, first on sys.path, hides its entry points.
    dists.hide("curator-exec-rayactorpool")
    install_acme(dists)
    visible = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == "ray_actor_pool"]
    assert not visible, f"another distribution provides ray_actor_pool: {visible}"

    with pytest.raises(UnknownExecutorError) as info:
        get_executor(asked)
    message = str(info.value)
    assert f"no executor named {asked!r}" in message
    assert "pip install curator-exec-rayactorpool" in message
    assert installed_in_message(message) == names()
    if asked == "ray_actr_pool":
        assert "Did you mean 'ray_actor_pool'?" in message
    else:  # never "did you mean" the very name that was asked for
        assert "Did you mean" not in message


def test_installed_but_blocked_backend_is_not_a_pip_hint(dists, monkeypatch):
    # A distribution that does provide ray_data (shadowing any real one), blocked.
    dists.dist("curator-exec-raydata", "9.9.9", {"ray_data": "fake_raydata_plugin"},
               {"fake_raydata_plugin": provider_source(("ray_data", "acme_exec_impl:AcmeExecutor"))})
    monkeypatch.setenv(ENV_BLOCK, "ray_data")
    with pytest.raises(UnknownExecutorError) as info:
        get_executor("ray_data")
    message = str(info.value)
    assert "blocked by CURATOR_EXEC_BLOCK_PLUGINS" in message
    assert "pip install" not in message
    [row] = plugin_rows("ray_data")
    assert (row.status, row.distribution) == ("blocked", "curator-exec-raydata")


# -- broken plugins -------------------------------------------------------------------------


def test_plugin_import_error_is_isolated(dists):
    install_broken_import(dists)
    install_acme(dists)

    with pytest.warns(PluginLoadWarning) as record:
        listed = names()
    messages = [str(w.message) for w in record if issubclass(w.category, PluginLoadWarning)]
    [message] = [m for m in messages if "broken_import" in m]
    assert "broken-import-dist 0.0.1" in message
    assert "curator_exec_no_such_engine_xyz" in message

    assert "local" in listed and "acme" in listed and "broken_import" not in listed
    check_tiny_run(get_executor("local"))
    check_tiny_run(get_executor("acme"))

    [row] = plugin_rows("broken_import")
    assert (row.distribution, row.version, row.status) == ("broken-import-dist", "0.0.1", "broken")
    assert "curator_exec_no_such_engine_xyz" in row.error

    with pytest.raises(PluginError) as info:
        get_executor("broken_import")
    assert "broken-import-dist 0.0.1" in str(info.value)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert info.value.__cause__.name == "curator_exec_no_such_engine_xyz"


BAD_HOOKS = {
    "not-a-spec": ("return [{'name': 'badspec', 'factory': 'x:Y'}]", TypeError),
    "a-string": ("return 'badspec'", TypeError),
    "invalid-spec": ("return [ExecutorSpec(name='bad spec', factory='x:Y')]", ValueError),
    "raises": ("raise RuntimeError('registration exploded')", RuntimeError),
}


@pytest.mark.parametrize("case", sorted(BAD_HOOKS))
def test_plugin_returning_a_bad_spec_is_isolated(dists, case):
    body, error_type = BAD_HOOKS[case]
    dists.dist("badspec-dist", "3.1.4", {"badspec": "badspec_plugin"}, {"badspec_plugin": f"""
        from curator_exec_core import ExecutorSpec, hookimpl

        @hookimpl
        def curator_exec_register_executors():
            {body}
        """})
    install_acme(dists)

    with pytest.warns(PluginLoadWarning, match=r"badspec-dist 3\.1\.4"):
        listed = names()
    assert "local" in listed and "acme" in listed and "badspec" not in listed
    check_tiny_run(get_executor("local"))
    check_tiny_run(get_executor("acme"))
    [row] = plugin_rows("badspec")
    assert row.status == "broken" and row.distribution == "badspec-dist" and row.version == "3.1.4"

    with pytest.raises(PluginError, match=r"badspec-dist 3\.1\.4") as info:
        get_executor("badspec")
    assert isinstance(info.value.__cause__, error_type)


@pytest.mark.parametrize("impl, error_type, text", [
    ("raise RuntimeError('the engine needs a driver that is not here')\n", RuntimeError,
     "the engine needs a driver that is not here"),
    ("import curator_exec_missing_engine_abc\n", ModuleNotFoundError, "curator_exec_missing_engine_abc"),
    ("class SomethingElse: pass\n", AttributeError, "Executor"),
])
def test_factory_failing_only_when_asked(dists, impl, error_type, text):
    dists.dist("lazy-dist", "2.0.0", {"lazybroken": "lazybroken_plugin"},
               {"lazybroken_plugin": provider_source(("lazybroken", "lazybroken_impl:Executor")),
                "lazybroken_impl": impl})

    with no_plugin_warnings(about="lazy"):
        listed = names()
        plugins = plugin_rows("lazybroken")
    assert "lazybroken" in listed and "local" in listed
    assert plugins[0].status == "ok"
    assert "lazybroken_impl" not in sys.modules

    with pytest.raises(PluginError) as info:
        get_executor("lazybroken")
    assert text in str(info.value)
    assert "lazy-dist 2.0.0" in str(info.value)
    assert isinstance(info.value.__cause__, error_type)
    check_tiny_run(get_executor("local"))


# -- two distributions, one name ----------------------------------------------------------------


@pytest.mark.parametrize("second_entry_point", ["dupe", "dupe_alias"])
def test_two_distributions_claiming_one_name(dists, second_entry_point):
    dists.dist("dupe-one", "1.0", {"dupe": "dupe_one_plugin"},
               {"dupe_one_plugin": provider_source(("dupe", "acme_exec_impl:AcmeExecutor")),
                "acme_exec_impl": ACME_IMPL})
    dists.dist("dupe-two", "2.0", {second_entry_point: "dupe_two_plugin"},
               {"dupe_two_plugin": provider_source(("dupe", "acme_exec_impl:AcmeExecutor"))})

    with pytest.warns(PluginLoadWarning, match="dupe-one.*dupe-two|dupe-two.*dupe-one"):
        listed = names()
    assert "dupe" not in listed and "local" in listed

    with pytest.raises(PluginError) as info:
        get_executor("dupe")
    message = str(info.value)
    assert "dupe-one 1.0" in message and "dupe-two 2.0" in message

    rows = [p for p in list_plugins() if "dupe" in p.executors]
    assert sorted((p.distribution, p.status) for p in rows) == [("dupe-one", "conflict"), ("dupe-two", "conflict")]
    assert all("dupe-one" in p.error and "dupe-two" in p.error for p in rows)
    check_tiny_run(get_executor("local"))


# -- environment controls ------------------------------------------------------------------------


def test_disable_autoload_loads_only_listed_plugins(dists, monkeypatch):
    install_acme(dists)
    install_broken_import(dists)
    monkeypatch.setenv(ENV_DISABLE_AUTOLOAD, "1")

    with no_plugin_warnings(about="broken"):  # the broken plugin is not even imported
        assert names() == []
        assert {p.name: p.status for p in list_plugins()}["acme"] == "disabled"
        with pytest.raises(UnknownExecutorError, match=ENV_PLUGINS):
            get_executor("local")

        monkeypatch.setenv(ENV_PLUGINS, "local")
        reset_registry()  # the environment is read on first use
        assert names() == ["local"]
        with pytest.raises(UnknownExecutorError, match="not autoloaded"):
            get_executor("acme")

        monkeypatch.setenv(ENV_PLUGINS, " local , acme ")
        reset_registry()
        assert names() == ["acme", "local"]
        check_tiny_run(get_executor("acme"))
        assert "curator_exec_no_such_engine_xyz" not in sys.modules


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_disable_autoload_off_values(dists, monkeypatch, value):
    install_acme(dists)
    monkeypatch.setenv(ENV_DISABLE_AUTOLOAD, value)
    assert {"acme", "local"} <= set(names())


def test_block_plugins(dists, monkeypatch):
    install_acme(dists)
    install_broken_import(dists)
    monkeypatch.setenv(ENV_BLOCK, "acme,broken_import")

    with no_plugin_warnings(about="broken"):  # blocking a broken plugin silences it
        listed = names()
        status = {p.name: p.status for p in list_plugins()}
    assert "acme" not in listed and "local" in listed
    assert status["acme"] == "blocked" and status["broken_import"] == "blocked"
    with pytest.raises(UnknownExecutorError, match="blocked by CURATOR_EXEC_BLOCK_PLUGINS"):
        get_executor("acme")
    check_tiny_run(get_executor("local"))

    monkeypatch.setenv(ENV_BLOCK, "local")
    reset_registry()
    with pytest.warns(PluginLoadWarning, match="broken-import-dist"), pytest.raises(UnknownExecutorError) as info:
        get_executor("local")
    assert "blocked" in str(info.value) and "pip install" not in str(info.value)
    check_tiny_run(get_executor("acme"))


# -- programmatic registration -----------------------------------------------------------------


class InlineProvider:
    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def curator_exec_register_executors(self):
        return [ExecutorSpec(name=self.name, factory="acme_exec_impl:AcmeExecutor", summary="registered in code")]


def test_register_and_unregister_plugin(dists):
    dists.module("acme_exec_impl", ACME_IMPL)
    provider = InlineProvider("inline")

    assert "inline" not in names()
    registered_name = register_plugin(provider, name="inline-provider")
    assert registered_name == "inline-provider"
    [spec] = [s for s in list_executors() if s.name == "inline"]
    assert spec.distribution == "<registered>" and spec.summary == "registered in code"
    assert [p.status for p in list_plugins() if "inline" in p.executors] == ["ok"]
    check_tiny_run(get_executor("inline"))

    with pytest.raises(ValueError):  # pluggy refuses the same object twice
        register_plugin(provider, name="again")

    unregister_plugin(provider)
    assert "inline" not in names()
    assert not [p for p in list_plugins() if "inline" in p.executors]
    with pytest.raises(UnknownExecutorError):
        get_executor("inline")


def test_registered_plugin_cannot_take_over_an_entry_point_name(dists):
    dists.module("acme_exec_impl", ACME_IMPL)
    impostor = InlineProvider("local")
    with pytest.warns(PluginLoadWarning, match="'local'"):
        register_plugin(impostor, name="impostor")
    try:
        with pytest.raises(PluginError) as info:
            get_executor("local")
        assert "curator-exec-local" in str(info.value) and "<registered>" in str(info.value)
    finally:
        unregister_plugin(name="impostor")
    check_tiny_run(get_executor("local"))


def test_registered_observer_sees_the_run(dists):
    events = []

    class Observer:
        @hookimpl
        def curator_exec_progress(self, event):
            events.append(event.kind)

    observer = Observer()
    register_plugin(observer)
    try:
        check_tiny_run(get_executor("local", show_progress=False))
    finally:
        unregister_plugin(observer)
    assert events[0] == "run_started" and events[-1] == "run_finished"
    events.clear()
    check_tiny_run(get_executor("local", show_progress=False))
    assert events == []


# -- laziness: no engine import --------------------------------------------------------------


NO_ENGINE_SCRIPT = """
import json, sys
import curator_exec_core
from curator_exec_core import Pipeline, ProcessingStage, Task, get_executor, list_executors, list_plugins

class Double(ProcessingStage):
    def process(self, task):
        return Task(data=task.data * 2)

names = [s.name for s in list_executors()]
list_plugins()
executor = get_executor("local", show_progress=False)
out = Pipeline("p", [Double()]).run(executor, initial_tasks=[Task(data=i) for i in range(4)])
engines = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "cosmos_xenna"))
print(json.dumps({"names": names, "out": sorted(t.data for t in out), "engines": engines}))
"""


def test_get_local_imports_no_engine_in_a_fresh_interpreter():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATOR_EXEC_")}
    proc = subprocess.run([sys.executable, "-c", NO_ENGINE_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "local" in report["names"]
    assert report["out"] == [0, 2, 4, 6]
    assert report["engines"] == [], f"importing the core and using 'local' imported {report['engines']}"


# -- options -----------------------------------------------------------------------------------


def test_get_executor_merges_config_and_keywords(dists):
    executor = get_executor("local", config={"max_retries": 1}, ignore_failures=True)
    assert executor.options.max_retries == 1
    assert executor.options.ignore_failures is True
    assert executor.config == {"max_retries": 1}

    assert get_executor("local", config={"max_retries": 1}, max_retries=3).options.max_retries == 3
    assert get_executor("local").options.max_retries == 0


@pytest.mark.parametrize("kwargs, hint", [
    ({"config": {"max_retires": 1}}, "max_retries"),
    ({"ignore_failure": True}, "ignore_failures"),
    ({"config": {"show_progres": False}}, "show_progress"),
])
def test_get_executor_option_typo(dists, kwargs, hint):
    with pytest.raises(ConfigError) as info:
        get_executor("local", **kwargs)
    assert f"did you mean {hint!r}" in str(info.value)
    assert "Valid options:" in str(info.value)


@pytest.mark.parametrize("kwargs", [{"max_retries": "3"}, {"max_retries": -1}, {"ignore_failures": "yes"}])
def test_get_executor_bad_option_value(dists, kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        get_executor("local", **kwargs)
