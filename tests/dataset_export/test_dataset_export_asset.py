"""`sft_dataset` through Dagster, in the project's asset graph, on a mixture and stage reports written through
`DataStorage`."""

import dagster as dg
import datasets
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from assets.common.data.storage import sha256_dir
from assets.common.orchestration.resources import (
    CURRENT,
    DECONTAMINATED_CONVERSATIONS,
    FILTERED_CONVERSATIONS,
    MAGPIE_CONVERSATIONS,
    MODEL_MANIFEST,
    SFT_DATASET,
    SFT_MIXTURE,
    TEACHER_MODEL,
    DataStorage,
)
from tests.asset_runs import failure_text, materialization
from tests.automation_runs import Automation
from tests.dataset_export.conftest import DECONTAMINATION, EMBEDDED_TEACHER, FILTERING, generation_report

ASSET = SFT_DATASET.to_user_string()


@pytest.fixture
def stored(tmp_path, mixture, monkeypatch):
    monkeypatch.delenv("SFT_DATA_ROOT", raising=False)  # the profile's storage root is the one used
    storage = DataStorage(root=str(tmp_path / "data"))
    table, manifest = mixture
    storage.write_table(SFT_MIXTURE, table)
    storage.write_json(SFT_MIXTURE, "manifest", manifest)
    storage.write_json(TEACHER_MODEL, MODEL_MANIFEST, EMBEDDED_TEACHER)
    storage.write_json(MAGPIE_CONVERSATIONS, "report-00000", generation_report(0, 20, 15))
    storage.write_json(DECONTAMINATED_CONVERSATIONS, "report", DECONTAMINATION)
    storage.write_json(FILTERED_CONVERSATIONS, "report", FILTERING)
    return storage, tmp_path


def export(storage: DataStorage, home):
    """A run of sft_dataset alone, as the automation sensor launches it: a subset of the project's whole asset job
    (so its upstream stages are known), with the project's resources (the engine is configured, never started)."""
    home.mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        profile = {"resources": {"storage": {"config": {"root": storage.root}}}}
        return Automation.from_profile(profile, instance).launch([SFT_DATASET])


def test_export_writes_a_folder_that_loads_as_the_mixture_with_its_card(stored):
    storage, tmp_path = stored
    result = export(storage, tmp_path / "dagster")
    assert result.success, failure_text(result)
    metadata = materialization(result, ASSET)
    path = metadata["path"]
    table = storage.read_table(SFT_MIXTURE)
    loaded = datasets.load_from_disk(path)
    for split in ("train", "validation"):
        expected = table.filter(pl.col("split") == split).drop("split")
        assert metadata[f"{split}_rows"] == expected.height == loaded[split].num_rows
        assert_frame_equal(pl.from_arrow(loaded[split].data.table), expected)
    assert metadata["dagster/row_count"] == table.height
    assert metadata["content_hash"] == sha256_dir(path)
    assert metadata["mixture_content_hash"] == storage.describe_table(SFT_MIXTURE).content_hash
    card = (storage.asset_dir(SFT_DATASET) / "dataset" / (storage.asset_dir(SFT_DATASET) / "dataset" / CURRENT)
            .read_text().strip() / "README.md").read_text()
    assert metadata["card"] == card and metadata["mixture_content_hash"] in card
    assert "| filtered_conversations | 14 | 11 | 3 | truncated: 3 |" in card  # a report of an upstream stage
    assert "| humaneval | 164 | 1 |" in card
    assert (metadata["license"], metadata["size_category"], metadata["languages"]) == ("other", "n<1K", ["de", "en"])
    assert metadata["reused"] is False  # a re-export of the same inputs keeps this folder: test_dataset_export_core


def test_a_mixture_without_split_is_refused_naming_the_field(stored):
    storage, tmp_path = stored
    bad = storage.write_table(SFT_MIXTURE, storage.read_table(SFT_MIXTURE).drop("split"))
    result = export(storage, tmp_path / "dagster")
    assert not result.success
    assert (f"asset 'sft_mixture', table 'data' ({bad.path}): no column 'split' (expected 'train' or 'validation' "
            "on every row") in failure_text(result)
    assert not (storage.asset_dir(SFT_DATASET) / "dataset").exists()
