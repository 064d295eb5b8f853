"""docs/io.md and docs/data-plane.md stay true: their ``python`` blocks run (in a fresh interpreter, in a
temporary folder) on the embedded backend; the data-plane example runs a second time on the same folder
(a resume: the same files, nothing redone)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[3] / "docs"
PAGES = ("io.md", "data-plane.md")


def _blocks() -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        path = DOCS / page
        if path.exists():
            blocks = re.findall(r"^```python[^\n]*\n(.*?)^```", path.read_text(), re.S | re.M)
            out += [(page, i, code) for i, code in enumerate(blocks)]
    return out


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CURATOR_EXEC_EXECUTOR": "local"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=110, env=env)


@pytest.mark.skipif(not _blocks(), reason="docs/ is not next to this checkout")
@pytest.mark.parametrize("page,index,code", _blocks() or [("", 0, "")], ids=lambda v: str(v)[:20])
@pytest.mark.timeout(240)
def test_docs_examples_run(page, index, code, tmp_path):
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr
    if page == "data-plane.md":  # resumable: again on the same checkpoint and output directory
        again = _run(code, tmp_path)
        assert again.returncode == 0, again.stderr
