"""The ``curator-exec`` command: ``main([...])`` in process, and the installed console script."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from curator_exec_core import ExecutorSpec, hookimpl, list_executors, register_plugin, unregister_plugin
from curator_exec_core.cli import main, parse_settings
from curator_exec_core.config import describe_options, parse_setting_value
from curator_exec_core.config import parse_settings as config_parse_settings
from curator_exec_core.demo import GenerateDocuments, build_pipeline, reference
from curator_exec_core.errors import ConfigError
from curator_exec_core.importing import import_object
from curator_exec_core.registry import ENV_BLOCK, ENV_DISABLE_AUTOLOAD, ENV_PLUGINS, reset_registry

STAGES = ["generate_documents", "normalize_text", "quality_filter", "split_sentences", "count_words"]

# A third party's executor in NeMo Curator's documented shape: only ``execute`` is overridden.
THIRD_PARTY_IMPL = """
    from curator_exec_core import BaseExecutor, EmptyTask

    class ThirdPartyExecutor(BaseExecutor):
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


class Workdir:
    """A folder on ``sys.path`` for throwaway modules and distributions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def write_module(self, name: str, source: str) -> None:
        (self.root / f"{name}.py").write_text(textwrap.dedent(source))
        self.modules.append(name)
        importlib.invalidate_caches()

    def write_dist(self, name: str, version: str, entry_points: dict[str, str]) -> None:
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(
            "[curator_exec.executors]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
        importlib.invalidate_caches()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A :class:`Workdir` in ``tmp_path``, no CURATOR_EXEC_* variables, a fresh registry."""
    for var in (ENV_DISABLE_AUTOLOAD, ENV_PLUGINS, ENV_BLOCK):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_registry()
    work = Workdir(tmp_path)
    yield work
    reset_registry()
    for name in work.modules:
        sys.modules.pop(name, None)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("curator-exec: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


# -- plugins -------------------------------------------------------------------------------


def test_plugins_table(workdir, capsys):
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "DISTRIBUTION", "VERSION", "STATUS", "EXECUTORS", "ERROR"]
    [local] = [r.split() for r in rows if r.startswith("local ")]
    assert local[:5] == ["local", "curator-exec-local", "0.1.0", "ok", "local"]


def test_plugins_json(workdir, capsys):
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    plugins = json.loads(out)
    assert all(set(p) == {"name", "distribution", "version", "status", "executors", "error"} for p in plugins)
    [local] = [p for p in plugins if p["name"] == "local"]
    assert local["status"] == "ok" and local["executors"] == ["local"]


def test_plugins_shows_a_broken_plugin_and_warns_in_one_line(workdir, capsys):
    workdir.write_module("cli_broken_plugin", "import curator_exec_no_such_engine_cli\n")
    workdir.write_dist("cli-broken-dist", "0.3.0", {"cli_broken": "cli_broken_plugin"})
    code, out, err = run(capsys, "plugins")
    assert code == 0
    [row] = [r for r in out.splitlines() if r.startswith("cli_broken ")]
    assert "cli-broken-dist" in row and "0.3.0" in row and "broken" in row and "curator_exec_no_such_engine_cli" in row
    warning = [line for line in err.splitlines() if "cli_broken" in line]
    assert warning and warning[0].startswith("curator-exec: warning: ") and "cli-broken-dist 0.3.0" in warning[0]
    assert "Traceback" not in err


# -- info ---------------------------------------------------------------------------------------


def test_info_overview(workdir, capsys):
    from curator_exec_core import __version__

    code, out, _ = run(capsys, "info")
    assert code == 0
    assert f"curator-exec-core {__version__}" in out
    for spec in list_executors():
        assert spec.name in out and spec.distribution in out


def test_info_overview_json(workdir, capsys):
    code, out, _ = run(capsys, "info", "--json")
    assert code == 0
    data = json.loads(out)
    assert "local" in [e["name"] for e in data["executors"]]
    installed = {e["name"] for e in data["executors"]}
    assert not installed & set(data["not_installed"])


def test_info_executor(workdir, capsys):
    code, out, _ = run(capsys, "info", "local")
    assert code == 0
    assert "Executor 'local' from curator-exec-local" in out
    assert "curator_exec_local.executor:LocalExecutor" in out
    assert "Capacity:" in out and "node(s): cpus=" in out
    from curator_exec_local.executor import LocalExecutor

    for row in describe_options(LocalExecutor.Options):
        assert f"{row['name']}: {row['type']} = {row['default']!r}" in out
        assert row["doc"][:40] in out


def test_info_executor_json(workdir, capsys):
    code, out, _ = run(capsys, "info", "local", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["executor"]["name"] == "local"
    assert data["executor"]["distribution"] == "curator-exec-local"
    assert data["capacity"]["nodes"] and data["capacity"]["nodes"][0]["cpus"] > 0
    assert {o["name"] for o in data["options"]} >= {"ignore_failures", "max_retries", "ignore_head_node"}


def test_info_unknown_executor(workdir, capsys):
    code, out, err = run(capsys, "info", "lokal")
    assert code == 2 and out == ""
    assert_one_line_error(err, "no executor named 'lokal'", "Did you mean 'local'?", "Installed executors:")


# -- plan --------------------------------------------------------------------------------------


def test_plan_default_is_the_demo_pipeline(workdir, capsys):
    code, out, _ = run(capsys, "plan")
    assert code == 0
    assert "Pipeline 'demo_text_curation'" in out
    assert "Plan for executor 'local'" in out
    for stage in STAGES:
        assert out.count(stage) == 2, stage  # in the stage list and in the plan
    assert out.strip() == build_pipeline(100).describe("local").strip()


def test_plan_json(workdir, capsys):
    code, out, _ = run(capsys, "plan", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["pipeline"] == "demo_text_curation"
    assert [s["name"] for s in data["plan"]["stages"]] == STAGES
    assert all(s["workers"] == 1 for s in data["plan"]["stages"])  # local: one worker per stage


PIPELINE_MODULE = """
    from curator_exec_core import Pipeline, ProcessingStage, Resources

    class Upper(ProcessingStage):
        name = "upper_case"
        def process(self, task):
            return task

    class Greedy(ProcessingStage):
        name = "greedy_stage"
        resources = Resources(cpus=100000)
        def process(self, task):
            return task

    def make():
        return Pipeline("custom_pipe", [Upper()])

    READY = Pipeline("ready_made", [Upper()])

    def infeasible():
        return Pipeline("too_big", [Greedy()])

    def not_a_pipeline():
        return 42

    def with_tasks():
        from curator_exec_core import Task

        return Pipeline("paired_pipe", [Upper()]), [Task(data=i) for i in range(3)]
    """


def test_plan_custom_pipeline(workdir, capsys):
    workdir.write_module("cli_pipelines", PIPELINE_MODULE)
    code, out, _ = run(capsys, "plan", "--pipeline", "cli_pipelines:make")
    assert code == 0
    assert "Pipeline 'custom_pipe'" in out and "upper_case" in out and "Plan for executor 'local'" in out
    code, out, _ = run(capsys, "plan", "--pipeline", "cli_pipelines:READY", "--executor", "local")
    assert code == 0 and "Pipeline 'ready_made'" in out


def test_plan_accepts_a_pipeline_and_tasks_pair(workdir, capsys):
    """``plan --pipeline`` takes the ``(Pipeline, initial_tasks)`` factory shape that ``run`` takes."""
    workdir.write_module("cli_pipelines", PIPELINE_MODULE)
    code, out, err = run(capsys, "plan", "--pipeline", "cli_pipelines:with_tasks")
    assert code == 0, err
    assert "Pipeline 'paired_pipe'" in out and "upper_case" in out and "Plan for executor 'local'" in out
    code, out, err = run(capsys, "plan", "--pipeline", "cli_pipelines:with_tasks", "--json")
    assert code == 0, err
    assert json.loads(out)["pipeline"] == "paired_pipe"
    code, out, err = run(capsys, "run", "--pipeline", "cli_pipelines:with_tasks", "--json")
    assert code == 0, err
    assert json.loads(out)["outputs"] == 3


def test_run_output_without_the_io_library_says_what_to_install(workdir, capsys):
    try:
        import curator_exec_io  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("curator-exec-io is installed here (plugins/io/tests cover --output with it)")
    workdir.write_module("cli_pipelines", PIPELINE_MODULE)
    code, out, err = run(capsys, "run", "--pipeline", "cli_pipelines:with_tasks", "--output", "out/")
    assert code == 2
    assert_one_line_error(err, "--output", "pip install curator-exec-io")


def test_plan_infeasible_pipeline_is_a_plan_error(workdir, capsys):
    workdir.write_module("cli_pipelines", PIPELINE_MODULE)
    code, out, err = run(capsys, "plan", "--pipeline", "cli_pipelines:infeasible")
    assert code == 2
    assert_one_line_error(err, "greedy_stage", "cpus=100000")


@pytest.mark.parametrize("target, fragment", [
    ("no_colon_here", "module:factory"),
    ("cli_no_such_module_xyz:make", "cli_no_such_module_xyz"),
    ("cli_pipelines:missing", "missing"),
    ("cli_pipelines:not_a_pipeline", "not a Pipeline"),
])
def test_plan_bad_pipeline_argument(workdir, capsys, target, fragment):
    workdir.write_module("cli_pipelines", PIPELINE_MODULE)
    code, _, err = run(capsys, "plan", "--pipeline", target)
    assert code == 2
    assert_one_line_error(err, fragment)


# -- demo --------------------------------------------------------------------------------------


def expected_counts(n: int) -> dict[str, tuple[int, int]]:
    rows = reference(n)
    kept = len({r[1] for r in rows})
    return {"generate_documents": (1, n), "normalize_text": (n, n), "quality_filter": (n, kept),
            "split_sentences": (kept, len(rows)), "count_words": (len(rows), len(rows))}


def test_demo_local(workdir, capsys):
    code, out, err = run(capsys, "demo", "--tasks", "40")
    assert code == 0, err
    counts = expected_counts(40)
    lines = out.splitlines()
    assert "executor 'local' (curator-exec-local" in lines[0]
    for i, stage in enumerate(STAGES):
        [row] = [line.split() for line in lines if line.split()[:2] == [str(i), stage]]
        tasks_in, tasks_out, failed, planned, worker = row[2:7]
        assert (int(tasks_in), int(tasks_out), int(failed)) == (*counts[stage], 0)
        assert planned == "1"
        assert worker.startswith("local:") and worker.endswith(f":{i}")
    assert "Sample outputs (3 of" in out
    assert "Check: outputs match the in-process reference" in out
    assert "Time:" in out
    assert counts["quality_filter"][1] < 40  # the filter does drop documents


def test_demo_json_is_deterministic_and_matches_the_reference(workdir, capsys):
    reports = []
    for _ in range(2):
        code, out, _ = run(capsys, "demo", "--tasks", "25", "--json", "--samples", "5")
        assert code == 0
        reports.append(json.loads(out))
    first, second = reports
    for report in reports:
        report.pop("run_seconds"), report.pop("total_seconds")
    assert first == second
    assert first["matches_reference"] is True
    assert first["executor"] == "local"
    counts = expected_counts(25)
    assert {s["name"]: (s["tasks_in"], s["tasks_out"]) for s in first["stages"]} == counts
    assert first["summary"]["sentences"] == len(reference(25)) == first["expected_outputs"]
    assert [s["task_id"] for s in first["samples"]] == [r[0] for r in reference(25)[:5]]
    assert first["failed_tasks"] == []


def test_demo_zero_documents(workdir, capsys):
    code, out, _ = run(capsys, "demo", "--tasks", "0", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["summary"]["sentences"] == 0 and report["matches_reference"] is True


def test_demo_set_options(workdir, capsys):
    code, out, _ = run(capsys, "demo", "--tasks", "5", "--json", "--set", "max_retries=2",
                       "--set", "ignore_failures=true", "-s", "show_progress=False")
    assert code == 0
    options = json.loads(out)["options"]
    assert (options["max_retries"], options["ignore_failures"], options["show_progress"]) == (2, True, False)


def test_demo_option_typo(workdir, capsys):
    code, out, err = run(capsys, "demo", "--set", "max_retrys=1")
    assert code == 2 and out == ""
    assert_one_line_error(err, "'max_retrys'", "did you mean 'max_retries'")


def test_demo_bad_option_value(workdir, capsys):
    code, _, err = run(capsys, "demo", "--set", "max_retries=-1")
    assert code == 2
    assert_one_line_error(err, "max_retries")


def test_demo_unknown_executor(workdir, capsys):
    code, out, err = run(capsys, "demo", "--executor", "no_such_executor_here")
    assert code == 2 and out == ""
    assert_one_line_error(err, "no executor named 'no_such_executor_here'", "Installed executors:")


def test_demo_plugin_error(workdir, capsys):
    workdir.write_module("cli_lazy_plugin", """
        from curator_exec_core import ExecutorSpec, hookimpl

        @hookimpl
        def curator_exec_register_executors():
            return [ExecutorSpec(name="cli_lazy", factory="cli_lazy_impl:Executor")]
        """)
    workdir.write_module("cli_lazy_impl", "raise RuntimeError('engine not available here')\n")
    workdir.write_dist("cli-lazy-dist", "1.0.0", {"cli_lazy": "cli_lazy_plugin"})
    code, _, err = run(capsys, "demo", "--executor", "cli_lazy")
    assert code == 2
    assert_one_line_error(err, "cli-lazy-dist 1.0.0", "engine not available here")


def test_demo_runs_on_any_executor_name(workdir, capsys):
    """A third-party executor registered by name runs the demo and gets the same outputs."""
    workdir.write_module("cli_third_party_impl", THIRD_PARTY_IMPL)

    class Provider:
        @hookimpl
        def curator_exec_register_executors(self):
            return [ExecutorSpec(name="third_party", factory="cli_third_party_impl:ThirdPartyExecutor",
                                 summary="a custom executor")]

    provider = Provider()
    register_plugin(provider, name="cli-third-party")
    try:
        code, out, _ = run(capsys, "demo", "--executor", "third_party", "--tasks", "15", "--json")
    finally:
        unregister_plugin(provider)
    assert code == 0
    report = json.loads(out)
    assert report["executor"] == "third_party" and report["distribution"] == "<registered>"
    assert report["matches_reference"] is True
    assert {s["name"]: (s["tasks_in"], s["tasks_out"]) for s in report["stages"]} == expected_counts(15)
    assert all(len(s["workers_seen"]) == 1 for s in report["stages"])


# -- arguments ------------------------------------------------------------------------------------


def test_usage_errors_and_help(workdir, capsys):
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err
    assert main(["demo", "--tasks", "many"]) == 2
    assert "invalid int value" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert "curator-exec" in capsys.readouterr().out
    assert main(["demo", "--tasks", "-1"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--tasks")


@pytest.mark.parametrize("item", ["novalue", "=3", ""])
def test_set_needs_key_and_value(workdir, capsys, item):
    assert main(["demo", "--set", item]) == 2
    assert_one_line_error(capsys.readouterr().err, "--set expects key=value")


def test_parse_settings():
    assert parse_settings(["a=1", "b=true", "c=2.5", "d=hello", "e=null", "f=False", "g=[1, 2]", "h="]) == {
        "a": 1, "b": True, "c": 2.5, "d": "hello", "e": None, "f": False, "g": [1, 2], "h": "",
    }
    assert parse_settings(["a=1", "a=2"]) == {"a": 2}
    assert parse_settings(None) == {}
    assert parse_settings is config_parse_settings  # one parser, shared with benchmarks/run.py


@pytest.mark.parametrize("text, value", [
    # 1. words, any case
    ("true", True), ("True", True), ("YES", True), ("on", True), ("false", False), ("No", False), ("OFF", False),
    ("none", None), ("None", None), ("NULL", None), ("  yes  ", True),
    # 2. JSON
    ("2", 2), ("-3", -3), ("2.5", 2.5), ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}), ('"yes"', "yes"), (" 7 ", 7),
    # 3. Python literals
    ("(1, 2)", (1, 2)), ("{'a': 1}", {"a": 1}), ("'quoted'", "quoted"), ("1_000", 1000), ("[1, 'x', None]", [1, "x", None]),
    # 4. else the string
    ("hello", "hello"), ("ray://head:10001", "ray://head:10001"), ("", ""), ("a b", "a b"), ("yes please", "yes please"),
    ("__import__('os')", "__import__('os')"), ("[1, 2", "[1, 2"),
])
def test_setting_value_rule(text, value):
    got = parse_setting_value(text)
    assert got == value and type(got) is type(value)


def test_parse_settings_splits_at_the_first_equals_sign():
    assert parse_settings([" key = a=b ", "x=="]) == {"key": "a=b", "x": "="}
    for bad in ("novalue", "=3", " =3", ""):
        with pytest.raises(ConfigError, match="--set expects key=value"):
            parse_settings([bad])


def test_import_object():
    assert import_object("curator_exec_core.config:parse_settings") is config_parse_settings
    assert import_object("curator_exec_core.demo:GenerateDocuments.process") is GenerateDocuments.process
    for bad in ("no_colon", ":attr", "module:"):
        with pytest.raises(ValueError, match="module:attr"):
            import_object(bad)
    with pytest.raises(ImportError):
        import_object("curator_exec_no_such_module_xyz:x")
    with pytest.raises(AttributeError):
        import_object("curator_exec_core.config:no_such_name")


# -- the installed console script ----------------------------------------------------------------


def console_script() -> Path:
    script = Path(sys.executable).parent / ("curator-exec.exe" if os.name == "nt" else "curator-exec")
    if not script.exists():
        pytest.skip(f"the curator-exec console script is not installed next to {sys.executable}")
    return script


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CURATOR_EXEC_")}


def test_console_script_demo_end_to_end(tmp_path):
    proc = subprocess.run([str(console_script()), "demo", "--tasks", "12"], capture_output=True, text=True,
                          env=clean_env(), cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "executor 'local'" in proc.stdout
    for stage in STAGES:
        assert stage in proc.stdout
    assert "Check: outputs match the in-process reference" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_console_script_error_exit_code(tmp_path):
    proc = subprocess.run([str(console_script()), "demo", "--executor", "no_such_executor_here"],
                          capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, "no executor named 'no_such_executor_here'")


def test_console_script_imports_the_pipeline_from_the_current_directory(tmp_path):
    """The console script (unlike ``python -m``) gets no current directory on ``sys.path`` from Python:
    ``--pipeline`` and ``--executor module:Class`` still find a module in it."""
    (tmp_path / "cli_cwd_pipeline.py").write_text(textwrap.dedent("""
        from curator_exec_core import Pipeline, ProcessingStage, Task

        class Double(ProcessingStage):
            name = "double"
            def process(self, task):
                return Task(data=task.data * 2)

        def build():
            return Pipeline("cwd_pipe", [Double()]), [Task(data=i) for i in range(4)]
        """))
    (tmp_path / "cli_cwd_executor.py").write_text(textwrap.dedent(THIRD_PARTY_IMPL))
    env = clean_env()
    for argv in (["run", "--pipeline", "cli_cwd_pipeline:build", "--json"],
                 ["run", "--pipeline", "cli_cwd_pipeline:build", "--executor", "cli_cwd_executor:ThirdPartyExecutor",
                  "--json"],
                 ["plan", "--pipeline", "cli_cwd_pipeline:build"]):
        proc = subprocess.run([str(console_script()), *argv], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300, check=False)
        assert proc.returncode == 0, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
        if argv[0] == "run":
            report = json.loads(proc.stdout)
            assert report["pipeline"] == "cwd_pipe" and report["outputs"] == 4
            assert report["stages"] == [{"index": 0, "name": "double", "tasks_in": 4, "tasks_out": 4,
                                         "tasks_failed": 0}]
        else:
            assert "Pipeline 'cwd_pipe'" in proc.stdout


def test_cli_demo_imports_no_engine(tmp_path):
    code = ("import sys; from curator_exec_core.cli import main; rc = main(['demo', '--tasks', '5']); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'cosmos_xenna')); "
            "print('ENGINES', bad); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(),
                          cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "ENGINES []" in proc.stdout
