"""The Dagster code location: assembles assets, checks, jobs, schedules and resources (no logic here)."""

from __future__ import annotations

import os

import dagster as dg

from assets.base_model.assets import base_model
from assets.common.resources import DataStorage, VLLMEngine
from assets.decontamination.assets import decontaminated_conversations, no_eval_overlap
from assets.dedup.assets import deduplicated_conversations
from assets.eval_sets.assets import eval_sets
from assets.filtering.assets import filtered_conversations
from assets.generation.assets import magpie_conversations
from assets.mixture.assets import sft_mixture
from assets.promotion.assets import promoted_model
from assets.sft.assets import answers_stop_on_eos, general_text_forgetting, sft_model
from assets.tagging.assets import tagged_conversations
from pipelines.automation import jobs, schedules

ASSETS = [
    base_model,
    eval_sets,
    magpie_conversations,
    deduplicated_conversations,
    decontaminated_conversations,
    filtered_conversations,
    tagged_conversations,
    sft_mixture,
    sft_model,
    promoted_model,
]
ASSET_CHECKS = [no_eval_overlap, general_text_forgetting, answers_stop_on_eos]

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
