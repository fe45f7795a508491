"""No module of the project's code is longer than 500 lines (STYLE.md, "Rooms stay small"): every ``*.py`` the
project tracks in ``assets/``, ``training/``, ``pipelines/``, ``tests/``, ``benchmarks/`` and ``deploy/``, the Dagster
modules and the tests included. A module that grows past it is split by purpose (as ``assets/evaluation/`` is: prompts,
scoring, statistics, report, end_of_turn)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500
CHECKED = ("assets", "training", "pipelines", "tests", "benchmarks", "deploy")


def module_lengths(root: Path = ROOT) -> dict[str, int]:
    """Lines per module under the checked folders (relative path -> lines)."""
    return {path.relative_to(root).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
            for folder in CHECKED for path in sorted((root / folder).rglob("*.py"))}


def test_no_module_is_longer_than_500_lines():
    lengths = module_lengths()
    assert len(lengths) > 100, "the checked folders should hold the project's modules"
    offenders = {rel: lines for rel, lines in lengths.items() if lines > MAX_LINES}
    assert not offenders, f"modules over {MAX_LINES} lines (split them by purpose): {offenders}"


def test_a_long_module_is_found(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "assets" / "short.py").write_text("x = 1\n" * MAX_LINES)
    assert module_lengths(tmp_path) == {"assets/long.py": MAX_LINES + 1, "assets/short.py": MAX_LINES}
