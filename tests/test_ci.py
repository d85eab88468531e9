"""`.ci/run`: it runs exactly the README's test command, and a run that collects no test fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CI = os.path.join(REPO, ".ci", "run")


def readme_test_command() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    block = re.search(r"Install and run the tests[^\n]*\n+(?:<!--[^\n]*-->\n)?```bash\n(.*?)\n```",
                      text, re.S)
    assert block, "README.md has no 'Install and run the tests' bash block"
    (line,) = block.group(1).strip().splitlines()
    return line


def test_ci_runs_the_readme_command():
    with open(CI) as f:
        lines = [line.strip() for line in f]
    assert readme_test_command() in lines


FAKE_PYTHON3 = """#!/usr/bin/env bash
# Stands in for python3: `-m venv DIR` makes DIR/bin/{pip,python}; that python exits $FAKE_PYTEST_RC.
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  printf '#!/usr/bin/env bash\\nexit 0\\n' > "$3/bin/pip"
  printf '#!/usr/bin/env bash\\nexit "$FAKE_PYTEST_RC"\\n' > "$3/bin/python"
  chmod +x "$3/bin/pip" "$3/bin/python"
fi
"""


@pytest.mark.parametrize("pytest_rc, want", [(0, 0), (1, 1), (5, 5)], ids=["pass", "fail", "no-tests"])
def test_ci_exit_code(tmp_path, pytest_rc, want):
    """.ci/run on a copy of the repo whose python3 is a stub: pytest's code is CI's code, and 5
    (no tests collected) is not turned into success."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(CI, tmp_path / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON3)
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_PYTEST_RC": str(pytest_rc)}
    proc = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == want, proc.stderr
    assert ("no tests" in proc.stderr) == (pytest_rc == 5)
