"""What the UI shows a person about each asset, set in one place for every stage (the stage modules stay thin):
owners and tags per stage, and a code version per stage. The stage is the asset's folder (``assets/<stage>/``), read
from the module that defines it, not from its group: the group is the phase the asset belongs to (``PHASES``: models,
data, training, evaluation), so the UI's global lineage shows the pipeline in four boxes, the stage as a tag.

Code version = a hash of the stage's source: every file of its folder ``assets/<stage>/`` (and of ``training/`` for
the `sft` stage), Python files as their token stream without comments and line breaks (so reformatting or a comment
does not bump it; a docstring does), other files (prompts, templates) by their bytes. It changes exactly when the
stage's code does, with nothing to remember to bump; a changed code version makes the automation rebuild the asset
(`REBUILD_ON_UPSTREAM_CHANGE`), and downstream follows only if its output changed. Shared code in ``assets/common``
is not part of any stage's version (a change there would rebuild everything): after a behaviour change in the shared
leaf, rematerialize what it affects.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType

import dagster as dg

from assets.common.models.code_version import source_version

ROOT = Path(__file__).resolve().parent.parent

# The asset groups: the phases of the pipeline, as the UI's global lineage shows them (STYLE.md: group = phase).
PHASES = ("models", "data", "training", "evaluation")
# Owners per stage (Dagster owners: an email or "team:<name>").
DATA_TEAM, TRAINING_TEAM = "team:sft-data", "team:sft-training"
STAGE_OWNERS = {
    "teacher_model": [TRAINING_TEAM], "base_model": [TRAINING_TEAM], "eval_sets": [DATA_TEAM],
    "generation": [DATA_TEAM], "dedup": [DATA_TEAM], "decontamination": [DATA_TEAM], "filtering": [DATA_TEAM],
    "tagging": [DATA_TEAM], "mixture": [DATA_TEAM], "sft": [TRAINING_TEAM], "evaluation": [TRAINING_TEAM],
    "promotion": [TRAINING_TEAM],
}
# What a stage produces, as a tag to filter the asset graph by (e.g. `layer=data`).
STAGE_LAYER = {"teacher_model": "model", "base_model": "model", "eval_sets": "reference", "sft": "model",
               "evaluation": "evaluation", "promotion": "model"}  # every other stage: "data"
# Folders besides assets/<stage>/ whose code a stage runs.
STAGE_EXTRA_SOURCES = {"sft": ["training"]}


@cache
def stage_code_version(stage: str) -> str:
    """The stage's code version (see the module docstring)."""
    return source_version([ROOT / "assets" / stage, *(ROOT / extra for extra in STAGE_EXTRA_SOURCES.get(stage, []))])


def stage_of(module: ModuleType) -> str:
    """The stage of a stage's ``assets.py`` module: its folder (``assets.<stage>.assets`` -> ``<stage>``)."""
    parts = module.__name__.split(".")
    if len(parts) < 3 or parts[0] != "assets":
        raise ValueError(f"{module.__name__}: not a stage module (expected assets.<stage>.assets)")
    return parts[1]


def with_stage_metadata(stage: str) -> Callable[[dg.AssetSpec], dg.AssetSpec]:
    """A spec mapper giving every asset of ``stage`` (its folder) that stage's owners, tags and code version (a stage
    not listed above is owned by the data team). The asset's group must be one of ``PHASES``."""

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.group_name not in PHASES:
            raise ValueError(f"asset {spec.key.to_user_string()} (assets/{stage}/): group_name "
                             f"{spec.group_name!r} is not a phase; use one of {list(PHASES)}")
        return spec.replace_attributes(
            owners=STAGE_OWNERS.get(stage, [DATA_TEAM]), code_version=stage_code_version(stage),
        ).merge_attributes(tags={"stage": stage, "layer": STAGE_LAYER.get(stage, "data")})

    return apply
