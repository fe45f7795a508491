"""The Dagster code location: assembles assets, checks, jobs, schedules, the automation sensor and resources.

Every stage's ``assets.py`` is listed once below; its assets and asset checks are collected from the module, so a
new asset or check in a stage needs no edit here, and a new stage is one more line. The user's profile
(``SFT_PROFILE``, pipelines/profiles.py) gives the assets' config defaults and the resources; pipelines/metadata.py
gives every asset its owners, tags and code version.
"""

from __future__ import annotations

import os

import dagster as dg

import assets.base_model.assets
import assets.dataset_export.assets
import assets.decontamination.assets
import assets.dedup.assets
import assets.difficulty.assets
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
from assets.common.orchestration.resources import DataStorage, ExternalInputs, VLLMEngine
from pipelines.automation import automation_sensor, jobs, schedules
from pipelines.metadata import stage_of, with_stage_metadata
from pipelines.profiles import active_profile, apply_profile, external_inputs, resource_config

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
    assets.difficulty.assets,
    assets.mixture.assets,
    assets.dataset_export.assets,
    assets.sft.assets,
    assets.evaluation.assets,
    assets.promotion.assets,
]
STAGE_ASSETS = [a.map_asset_specs(with_stage_metadata(stage_of(module)))
                for module in STAGES for a in dg.load_assets_from_modules([module])]
ASSET_CHECKS = dg.load_asset_checks_from_modules(STAGES)


def resources(profile: dict) -> dict:
    """The resources, from the profile's ``resources`` section (and the input paths of its ``ops``)."""
    unknown = sorted(set(profile.get("resources") or {}) - {"storage", "engine"})
    if unknown:
        raise ValueError(f"profile: resources {unknown} are not resources of this project (storage, engine)")
    storage = resource_config(profile, "storage")
    # The data root is not a secret: SFT_DATA_ROOT moves it (over the profile's; default ./data, git-ignored).
    storage["root"] = os.environ.get("SFT_DATA_ROOT") or storage.get("root", "data")
    return {"storage": DataStorage(**storage), "engine": VLLMEngine(**resource_config(profile, "engine")),
            "inputs": ExternalInputs(**external_inputs(profile))}


def build_definitions(profile: dict, source: str = "profile") -> dg.Definitions:
    """The project's Definitions with ``profile`` applied (its ops' config as the assets' config defaults)."""
    return dg.Definitions(
        assets=apply_profile(STAGE_ASSETS, profile, source),
        asset_checks=ASSET_CHECKS,
        jobs=jobs,
        schedules=schedules,
        sensors=[automation_sensor],
        resources=resources(profile),
    )


PROFILE_SOURCE, PROFILE = active_profile()
defs = build_definitions(PROFILE, PROFILE_SOURCE or "profile")
ASSETS = list(defs.assets)
