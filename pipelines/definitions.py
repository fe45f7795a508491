"""The Dagster code location: assembles assets, checks, jobs, schedules and resources (no logic here).

Every stage's ``assets.py`` is listed once below; its assets and asset checks are collected from the module, so a
new asset or check in a stage needs no edit here, and a new stage is one more line.
"""

from __future__ import annotations

import os

import dagster as dg

import assets.base_model.assets
import assets.decontamination.assets
import assets.dedup.assets
import assets.eval_sets.assets
import assets.evaluation.assets
import assets.filtering.assets
import assets.generation.assets
import assets.mixture.assets
import assets.promotion.assets
import assets.sft.assets
import assets.tagging.assets
import assets.teacher_model.assets
import assets.user_sources.assets
from assets.common.resources import DataStorage, VLLMEngine
from pipelines.automation import jobs, schedules

STAGES = [
    assets.teacher_model.assets,
    assets.base_model.assets,
    assets.eval_sets.assets,
    assets.generation.assets,
    assets.user_sources.assets,
    assets.dedup.assets,
    assets.decontamination.assets,
    assets.filtering.assets,
    assets.tagging.assets,
    assets.mixture.assets,
    assets.sft.assets,
    assets.evaluation.assets,
    assets.promotion.assets,
]
ASSETS = dg.load_assets_from_modules(STAGES)
ASSET_CHECKS = dg.load_asset_checks_from_modules(STAGES)

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=jobs,
    schedules=schedules,
    resources={
        # The data root is not a secret: SFT_DATA_ROOT moves it (default ./data, git-ignored).
        "storage": DataStorage(root=os.environ.get("SFT_DATA_ROOT", "data")),
        "engine": VLLMEngine(),
    },
)
