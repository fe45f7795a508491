"""Generation code stays readable: no function longer than 60 lines (def line through last body line)."""

import ast
from pathlib import Path

import pytest

GENERATION = Path(__file__).resolve().parents[2] / "assets" / "generation"
MAX_LINES = 60


@pytest.mark.parametrize("path", sorted(GENERATION.glob("*.py")), ids=lambda p: p.name)
def test_no_function_is_longer_than_60_lines(path):
    tree = ast.parse(path.read_text())
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, f"{path.name}: split {long}"
