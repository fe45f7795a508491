"""The scale benchmark's pieces on 200 rows (its figures are measured by hand, never here): the synthetic shard is a
function of (seed, shard, row) alone, and the harness materializes one stage through the project's Definitions on a
real instance, which removes the planted near-duplicates."""

from benchmarks.scale import materialize
from benchmarks.scale_data import Generator
from tests.asset_runs import DataStorage

EVAL = ("Write a function that returns the sum of the squares of the odd numbers in a list of integers, "
        "ignoring any value that is not an integer.")


def test_synthetic_shard_is_deterministic_and_the_harness_removes_its_planted_near_duplicates(tmp_path):
    table, shape = Generator([EVAL]).shard(0, 200)
    again, _ = Generator([EVAL]).shard(0, 200)
    assert table.equals(again)
    assert shape.rows == table.height == 200 and set(shape.turns) == {1, 2, 3} and shape.system_prompts > 0
    assert len(shape.languages) >= 5 and shape.kinds["truncated"] > 0
    generator = Generator([EVAL])
    planted = {f"00000-{i:07d}" for i in range(200) if generator.row(0, i)[2] == "near_duplicate"}
    assert planted and shape.kinds["near_duplicate"] == len(planted)

    storage = DataStorage(root=str(tmp_path / "data"))
    storage.write_table("magpie_conversations", table, name="shard-00000")
    result = materialize(tmp_path / "data", ["deduplicated_conversations"])
    assert result["success"], result["errors"]
    rejected = set(storage.read_table("deduplicated_conversations", "rejected")["conversation_id"])
    assert planted <= rejected
    assert result["metadata"]["deduplicated_conversations"]["dagster/row_count"] == 200 - len(rejected)
