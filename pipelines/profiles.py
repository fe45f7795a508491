"""Named run-config profiles (profiles/<name>.yaml): the same pipeline, sized for a machine."""

from __future__ import annotations

from pathlib import Path

import yaml

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


def load_profile(name: str) -> dict:
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no such profile; known profiles: {known}")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict) or not set(config) <= {"ops", "resources"}:
        raise ValueError(f"{path}: a profile is run config with top-level keys 'ops' and/or 'resources'")
    return config
