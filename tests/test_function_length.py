"""No function in a stage core or in the shared leaf is longer than 60 lines: one job per function.

A function's length runs from its ``def`` line to the last line of its body, docstring and comments included
(decorators not counted); methods and nested functions count on their own. Every ``assets/**/*.py`` is checked
except the Dagster modules: each stage's ``assets.py`` and ``assets/common/resources.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 60
EXEMPT = {"assets/common/resources.py"}  # and every assets.py

# Offenders in stages being shortened in parallel work (generation, base_model, sft, evaluation), as
# "path::function". Temporary: delete each entry when its function is split; the list must end up empty.
# Nothing outside those stages may be listed.
ALLOWED_FOR_NOW: set[str] = set()
PENDING_STAGES = ("assets/generation/", "assets/base_model/", "assets/sft/", "assets/evaluation/")


def _functions() -> list[tuple[str, int, str, int]]:
    """(path, def line, name, length in lines) of every function of the checked modules."""
    found = []
    for path in sorted((ROOT / "assets").rglob("*.py")):
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
        if length > MAX_LINES and f"{rel}::{name}" not in ALLOWED_FOR_NOW
    ]
    assert not offenders, (
        f"functions over {MAX_LINES} lines (split them into well-named helpers):\n" + "\n".join(offenders)
    )


def test_allow_list_is_temporary_and_outside_the_finished_stages():
    lengths = {f"{rel}::{name}": length for rel, _line, name, length in _functions()}
    outside = sorted(entry for entry in ALLOWED_FOR_NOW if not entry.startswith(PENDING_STAGES))
    assert not outside, f"ALLOWED_FOR_NOW may only name functions under {PENDING_STAGES}: {outside}"
    stale = sorted(
        f"{entry} ({lengths[entry]} lines)" if entry in lengths else f"{entry} (no such function)"
        for entry in ALLOWED_FOR_NOW
        if lengths.get(entry, 0) <= MAX_LINES
    )
    assert not stale, f"these functions are no longer over {MAX_LINES} lines; delete them from ALLOWED_FOR_NOW: {stale}"
