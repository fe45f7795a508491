"""The one serializer of configs for reports, metadata and lineage (no Dagster here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON values: every field by name, tuples as lists, nested dataclasses and mappings
    as dicts (keys sorted), so equal configs serialize to equal JSON whatever containers they were built with."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_dict expects a dataclass instance, got {type(config).__name__}")
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_dict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_plain(v) for v in items]
    return value
