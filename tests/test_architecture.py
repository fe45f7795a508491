"""The architecture is checked, not reviewed: import contracts (pyproject.toml) and the graph named once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

import assets.common.orchestration.resources as keys
from pipelines.definitions import STAGES, defs

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    """Layers run one way (pipelines -> stages -> training -> assets.common), stages are independent of each other,
    no core imports Dagster, and only asset modules import the Dagster-aware leaf module."""
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout or "broken" not in result.stdout.lower(), result.stdout


def test_every_asset_key_constant_names_an_asset_of_the_definitions():
    constants = {value for value in vars(keys).values() if isinstance(value, dg.AssetKey)}
    assert constants == set(defs.resolve_all_asset_keys())


def test_promotion_checks_are_checks_of_the_definitions():
    assert set(keys.PROMOTION_CHECKS) <= set(defs.resolve_asset_graph().asset_check_keys)


def test_stage_is_the_folder_and_group_is_the_phase():
    from pipelines.metadata import PHASES

    declared_in = {key: module.__name__.split(".")[1]  # the stage folder whose assets.py declares the asset
                   for module in STAGES for a in dg.load_assets_from_modules([module]) for key in a.keys}
    groups = set()
    for key in defs.resolve_all_asset_keys():
        assets_def = defs.resolve_assets_def(key)
        code = assets_def.op.compute_fn.decorated_fn.__module__  # the stage's own, or the shared factory's
        folder = declared_in[key]
        assert code in (f"assets.{folder}.assets", "assets.common.orchestration.resources"), (key, code)
        assert assets_def.specs_by_key[key].tags["stage"] == folder, key
        groups.add(assets_def.group_names_by_key[key])
    assert groups == set(PHASES)  # every phase has assets, no asset is outside them
