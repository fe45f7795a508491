"""Prompt files of the stages that ask an LLM (the tagging judge, decontamination's rephrase check): one reader, one
error for a missing or malformed file (no Dagster here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml


def read_prompt_file(folder: Path, name: str, what: str, placeholders: Sequence[str]) -> tuple[dict, bytes]:
    """``folder/<name>.yaml``: a mapping with a ``user`` text holding every one of ``placeholders`` (e.g.
    ``"{conversation}"``) and an optional ``system``; returns (the mapping, the file's bytes, for its hash). A missing
    file names the known prompts; a malformed one names the file and what it must hold."""
    path = folder / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise FileNotFoundError(f"{what} prompt '{name}': no file {path}; known prompts: {known}")
    raw = path.read_bytes()
    doc = yaml.safe_load(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("user"), str) or any(p not in doc["user"]
                                                                               for p in placeholders):
        raise ValueError(f"{path}: expected keys 'system' and 'user', the user text containing "
                         + " and ".join(f"'{p}'" for p in placeholders))
    return doc, raw
