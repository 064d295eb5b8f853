"""docs/io.md stays true: its ``python`` blocks run (in a fresh interpreter, in a temporary folder)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[3] / "docs" / "io.md"


def _blocks() -> list[str]:
    if not PAGE.exists():
        return []
    return re.findall(r"^```python[^\n]*\n(.*?)^```", PAGE.read_text(), re.S | re.M)


@pytest.mark.skipif(not PAGE.exists(), reason="docs/io.md is not next to this checkout")
@pytest.mark.parametrize("index", range(len(_blocks()) or 1))
@pytest.mark.timeout(120)
def test_io_md_example_runs(index, tmp_path):
    code = _blocks()[index]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr
