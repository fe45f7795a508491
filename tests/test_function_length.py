"""No function in a stage core, the shared leaf, the trainer or the assembly is longer than 60 lines: one job per
function.

A function's length runs from its ``def`` line to the last line of its body, docstring and comments included
(decorators not counted); methods and nested functions count on their own. Every ``assets/**/*.py``,
``training/*.py`` and ``pipelines/*.py`` is checked except the Dagster modules: each stage's ``assets.py`` and
``assets/common/orchestration/resources.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 60
CHECKED = ("assets", "training", "pipelines")
EXEMPT = {"assets/common/orchestration/resources.py"}  # and every assets.py


def _functions() -> list[tuple[str, int, str, int]]:
    """(path, def line, name, length in lines) of every function of the checked modules."""
    found = []
    for path in sorted(p for folder in CHECKED for p in (ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "assets.py" or rel in EXEMPT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((rel, node.lineno, node.name, node.end_lineno - node.lineno + 1))
    return sorted(found)


def test_no_function_is_longer_than_60_lines():
    offenders = [
        f"{rel}:{line} {name} ({length} lines)"
        for rel, line, name, length in _functions()
        if length > MAX_LINES
    ]
    assert not offenders, (
        f"functions over {MAX_LINES} lines (split them into well-named helpers):\n" + "\n".join(offenders)
    )
