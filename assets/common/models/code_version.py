"""Code versions read from source (no Dagster here): each stage's code version (pipelines/metadata.py) and the
training code's, part of a trained model directory's key (training/model_dir.py).

A version hashes every file under the given paths: Python as its token stream without comments and non-logical
line breaks (reformatting or a comment does not change it; a docstring does), other files (templates, prompts) by
their bytes.
"""

from __future__ import annotations

import ast
import hashlib
import io
import tokenize
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository: the folder holding assets/ and training/


def _python_tokens(text: str) -> str:
    """The token stream of Python source without comments and non-logical line breaks."""
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return "\x00".join(f"{t.type}:{t.string}" for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL))


def source_version(paths: Iterable[Path]) -> str:
    """16 hex digits of SHA-256 over every file under ``paths`` (folders or files): relative path + content."""
    digest = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*")
                                                      if p.is_file() and "__pycache__" not in p.parts)
        for path in files:
            content = (_python_tokens(path.read_text()).encode() if path.suffix == ".py" else path.read_bytes())
            digest.update(f"{path.relative_to(root.parent)}\x00".encode() + hashlib.sha256(content).digest())
    return digest.hexdigest()[:16]


def _module_path(module: str) -> Path | None:
    """The file (a module) or folder (a package) of a module of this repository, None for anything else."""
    base = ROOT.joinpath(*module.split("."))
    if base.is_dir():
        return base
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def _imports(path: Path) -> set[str]:
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    names: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
    return names


def imported_sources(roots: Iterable[Path], package: str) -> list[Path]:
    """The modules (files) and packages (folders) of ``package`` (e.g. "assets.common") that the code under ``roots``
    imports, directly or through each other, in sorted order: what else that code runs."""
    found: set[Path] = set()
    todo = list(roots)
    while todo:
        for name in _imports(todo.pop()):
            path = _module_path(name) if name == package or name.startswith(f"{package}.") else None
            if path is not None and path not in found and path != ROOT.joinpath(*package.split(".")):
                found.add(path)
                todo.append(path)
    return sorted(found)
