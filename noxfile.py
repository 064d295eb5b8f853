"""Test sessions. `nox` runs them all (the full test suite); `nox -l` lists them.

Hydra-style monorepo layout: the core is tested with the embedded `local`
backend, each backend plugin is tested in a fresh venv holding only the core and
that plugin (proving it declares its own dependencies), and `integration` runs
the core's tests with every plugin installed at once.
"""

from __future__ import annotations

import ast
import functools
import glob
import os
import shutil
import subprocess

import nox

nox.options.sessions = ["lint", "core", "plugin", "xenna", "integration", "demo"]
nox.options.error_on_missing_interpreters = True
nox.options.default_venv_backend = "venv"

HERE = os.path.dirname(os.path.abspath(__file__))
PY311 = "3.11"
PLUGINS = ["local", "ray", "rayactorpool", "raydata", "io", "slurm"]  # plugins tested on the default Python
#: plugin directories that are libraries (no executor entry point): the Ray layer, the io stages
LIBRARIES = {"ray", "io"}
#: what a plugin directory needs from this repository besides the core (not on any index); io's and
#: slurm's tests run pipelines on the `local` executor
LOCAL_DEPS = {"rayactorpool": ["ray"], "raydata": ["ray"], "xenna": ["ray"], "io": ["local"], "slurm": ["local"]}
ALL_PLUGINS = ["local", "ray", "rayactorpool", "raydata", "xenna", "io", "slurm"]
XENNA_PINS = {"3.11": "cosmos-xenna==0.3.0", "3.12": "cosmos-xenna>=0.5,<0.6"}
TEST_DEPS = ["pytest>=8", "pytest-timeout>=2.2", "psutil"]


def _python(version: str) -> str:
    """An interpreter for `version`: on PATH if it works, else a pyenv install (its shims may refuse)."""
    exe = shutil.which(f"python{version}")
    if exe and subprocess.run([exe, "--version"], capture_output=True).returncode == 0:
        return exe
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    return found[-1] if found else version


def _plugin_path(name: str) -> str:
    return os.path.join(HERE, "plugins", name)


def _with_test_extra(name: str) -> str:
    """The plugin's path, with its `[test]` extra when its pyproject declares one."""
    with open(os.path.join(_plugin_path(name), "pyproject.toml")) as f:
        return _plugin_path(name) + ("[test]" if "\ntest = [" in f.read() else "")


def _install_args(name: str) -> list[str]:
    """The plugin (with its test extra) and the repository's libraries it depends on."""
    return [_plugin_path(dep) for dep in LOCAL_DEPS.get(name, [])] + [_with_test_extra(name)]


def _has_tests(name: str) -> bool:
    return os.path.isdir(os.path.join(_plugin_path(name), "tests"))


@nox.session(python=_python(PY311))
def lint(session: nox.Session) -> None:
    """ruff, then mypy (``[tool.mypy]`` in pyproject.toml: the core, strict on what a plugin author codes
    against, and the Ray layer's context and executor base, found through ``mypy_path``). Ray is not
    installed: mypy treats every engine as ``Any``. The core brings attrs and pluggy, pytest the kit's types."""
    session.install("ruff", "mypy>=2.4,<3", ".", "pytest>=8")
    session.run("ruff", "check", ".")
    session.run("mypy")


@nox.session(python=_python(PY311))
def core(session: nox.Session) -> None:
    """The core's tests, with the embedded `local` backend."""
    session.install(".", _plugin_path("local"), *TEST_DEPS)
    session.run("pytest", "tests", *session.posargs)


@nox.session(python=_python(PY311))
@nox.parametrize("name", [p for p in PLUGINS if os.path.isdir(_plugin_path(p))])
def plugin(session: nox.Session, name: str) -> None:
    """One plugin in a fresh venv holding only the core, that plugin and the libraries it declares."""
    session.install(".", *_install_args(name), *TEST_DEPS)
    if name in LIBRARIES:  # a library, not an executor: it only has to import
        session.run("python", "-c", f"import curator_exec_{name}")
    else:
        session.run("python", "-c", f"import curator_exec_core as c; print(c.get_executor({_exec_name(name)!r}))")
    if _has_tests(name):
        session.run("pytest", os.path.join("plugins", name, "tests"), *session.posargs)


@nox.session
@nox.parametrize("python", [_python(v) for v in XENNA_PINS], ids=list(XENNA_PINS))
def xenna(session: nox.Session) -> None:
    """The Cosmos-Xenna plugin on 3.11 (cosmos-xenna 0.3.0) and 3.12 (newest 0.5.x)."""
    if not os.path.isdir(_plugin_path("xenna")):
        session.skip("plugins/xenna does not exist yet")
    version = session.run("python", "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
                          silent=True).strip()
    session.install(".", *_install_args("xenna"), XENNA_PINS[version], *TEST_DEPS)
    if _has_tests("xenna"):
        # the kit's engine-independent mixins (shuffle, gang, resume, config) once, on the first version
        env = {} if version == next(iter(XENNA_PINS)) else {"CURATOR_EXEC_XENNA_KIT": "engine"}
        session.run("pytest", os.path.join("plugins", "xenna", "tests"), *session.posargs, env=env)


@nox.session(python=_python(PY311))
def integration(session: nox.Session) -> None:
    """The core's tests with every plugin installed together (registry, docs, CLI see them all)."""
    present = [_with_test_extra(p) for p in ALL_PLUGINS if os.path.isdir(_plugin_path(p))]
    session.install(".", *present, *TEST_DEPS)
    session.run("pytest", "tests", *session.posargs)


@nox.session(python=_python(PY311))
def demo(session: nox.Session) -> None:
    """The README's demo: the example pipeline on the embedded backend."""
    session.install(".", _plugin_path("local"))
    session.run("curator-exec", "demo")


@nox.session(python=_python(PY311))
def bench(session: nox.Session) -> None:
    """Benchmarks (not part of the default run): `nox -s bench -- local ray_actor_pool`."""
    present = [_plugin_path(p) for p in ALL_PLUGINS if os.path.isdir(_plugin_path(p))]
    session.install(".", *present, "psutil")
    session.run("python", "benchmarks/run.py", *(session.posargs or ["local"]))


@functools.lru_cache(maxsize=1)
def _known_backends() -> dict[str, str]:
    """``curator_exec_core.registry.KNOWN_BACKENDS`` (executor name -> distribution), read from the
    source: nox's own interpreter does not have the core (nor attrs, pluggy) installed."""
    path = os.path.join(HERE, "curator_exec_core", "registry.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "KNOWN_BACKENDS" and node.value is not None:
            return dict(ast.literal_eval(node.value))
    raise RuntimeError(f"{path} has no literal KNOWN_BACKENDS table")


def _distribution(plugin_dir: str) -> str:
    """The distribution name in the plugin's pyproject.toml (``[project] name``)."""
    import tomllib  # Python >= 3.11, as the project

    with open(os.path.join(_plugin_path(plugin_dir), "pyproject.toml"), "rb") as f:
        return str(tomllib.load(f)["project"]["name"])


def _exec_name(plugin_dir: str) -> str:
    """The executor the plugin in ``plugins/<plugin_dir>`` provides: the name whose distribution in
    ``KNOWN_BACKENDS`` is the plugin's (``rayactorpool`` -> ``ray_actor_pool``)."""
    dist = _distribution(plugin_dir)
    names = [name for name, d in _known_backends().items() if d == dist]
    if len(names) != 1:
        raise RuntimeError(f"plugins/{plugin_dir} ({dist}) is {'not' if not names else 'twice'} in "
                           "curator_exec_core.registry.KNOWN_BACKENDS: list its executor there")
    return names[0]
