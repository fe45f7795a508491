"""`magpie_conversations` through Dagster with the deterministic fake engine in place of vLLM: the table and the
report agree on which pre-query prefix each row used."""

import dagster as dg
import pytest

from assets.common.data.storage import sha256_text
from assets.common.orchestration.resources import (
    GENERATION_SHARDS,
    MODEL_MANIFEST,
    TEACHER_MODEL,
    DataStorage,
    VLLMEngine,
)
from assets.generation import assets as generation_assets
from tests.fake_generator import FakeGenerator

SHARD = "00002"
OVERRIDE = "<|im_start|>user\n"


@pytest.fixture
def fake_engine(monkeypatch):
    monkeypatch.setattr(generation_assets, "VLLMGenerator", lambda *args, **kwargs: FakeGenerator())


def test_report_lists_the_prefix_each_row_used(fake_engine, tiny_model_dir, tmp_path):
    storage = DataStorage(root=str(tmp_path / "data"))
    storage.write_json(TEACHER_MODEL, MODEL_MANIFEST, {"path": str(tiny_model_dir), "name": "tiny",
                                                    "content_hash": "tiny-hash"})
    config = {"num_conversations": 24, "num_turns": 2, "batch_size": 10, "pre_query_template": OVERRIDE,
              "system_prompts": [{"text": ""}, {"text": "You answer briefly."}]}
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        instance.add_dynamic_partitions(GENERATION_SHARDS.name, [SHARD])
        result = dg.materialize([generation_assets.magpie_conversations], partition_key=SHARD, instance=instance,
                                resources={"storage": storage, "engine": VLLMEngine()},
                                run_config={"ops": {"magpie_conversations": {"config": config}}})
    assert result.success
    table = storage.read_table("magpie_conversations", f"shard-{SHARD}")
    report = storage.read_json("magpie_conversations", f"report-{SHARD}")
    usage = {u["hash"]: u for u in report["pre_query_template_usage"]}
    assert [u["source"] for u in report["pre_query_template_usage"]] == ["override", "derived"]
    assert sum(u["rows"] for u in usage.values()) == table.height > 0
    for row in table.iter_rows(named=True):
        entry = usage[row["pre_query_template_hash"]]
        has_system = row["messages"][0]["role"] == "system"
        assert entry["system_prompt"] == (row["messages"][0]["content"] if has_system else "")
        assert (entry["source"], entry["prefix"] == OVERRIDE) == (("derived", False) if has_system
                                                                  else ("override", True))
        assert entry["hash"] == sha256_text(entry["prefix"])
    assert not (storage.asset_dir("magpie_conversations") / "checkpoints" / f"shard-{SHARD}").exists()
