"""ruff and mypy on the code inside the lab notebooks (source with solutions, and the student copies).

The rules are the repository's, less what notebook cells do by design: each check cell imports what it uses
again (F811, F401: hidden cells are removed from the student copy), a stub leaves the scaffold's variables
unused (F841), imports sit in later cells (E402), and student-facing code uses ``zip`` without ``strict=``
(B905). mypy runs without ``--strict`` (students' functions are untyped) on all code cells of a notebook joined
into one module, as the kernel runs them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.labs.test_labs import LABS, LABS_DIR

MAGIC = re.compile(r"^\s*(%|!(?!=))")  # an IPython magic or shell escape, not a line that starts with !=
RUFF_RULES = ["--select", "E4,E7,E9,E501,F,B,SIM,UP", "--ignore", "F811,F401,F841,B905,E402", "--line-length", "120"]


def _param(lab: str) -> object:
    marks: list[pytest.MarkDecorator] = []
    return pytest.param(lab, marks=marks, id=f"lab{lab}")


def _ruff() -> str:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed")
    return found


@pytest.mark.parametrize("lab", [_param(lab) for lab in LABS])
def test_ruff_is_clean_on_the_notebook_code(lab: str) -> None:
    paths = [str(LABS[lab]), str(LABS_DIR / LABS[lab].name)]
    done = subprocess.run([_ruff(), "check", "--no-cache", *RUFF_RULES, *paths], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _module(notebook: Path) -> str:
    """The notebook's code cells as one module (IPython magics and shell escapes blanked)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    parts = ["from IPython.display import display  # an IPython builtin in a kernel"]
    for index, cell in enumerate(cells):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] != "code" or source.lstrip().startswith("%%"):  # a cell magic: not Python
            continue
        lines = ["" if MAGIC.match(line) else line for line in source.split("\n")]
        parts.append(f"# cell {index}\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


@pytest.mark.parametrize("lab", [_param(lab) for lab in LABS])
def test_mypy_is_clean_on_the_notebook_code(lab: str, tmp_path: Path) -> None:
    module = tmp_path / f"lab{lab}.py"
    module.write_text(_module(LABS[lab]), encoding="utf-8")
    config = tmp_path / "mypy.ini"  # not the repository's --strict: students' functions are untyped
    config.write_text("[mypy]\nfollow_imports = silent\nignore_missing_imports = True\n", encoding="utf-8")
    command = [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-error-summary"]
    command += ["--allow-redefinition", "--check-untyped-defs", "--disable-error-code=no-redef"]
    command += ["--cache-dir", str(tmp_path / "cache"), str(module)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=LABS_DIR.parent)
    assert done.returncode == 0, done.stdout + done.stderr
