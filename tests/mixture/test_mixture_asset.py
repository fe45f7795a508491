"""`sft_mixture` through Dagster on a tiny tagged table written through `DataStorage`."""

import polars as pl
import pytest

from assets.common.orchestration.resources import SFT_MIXTURE, TAGGED_CONVERSATIONS, DataStorage
from assets.mixture.assets import sft_mixture
from tests.asset_runs import assert_names_its_tables, conversation, failure_text, frame, materialization, materialize

ASSET = SFT_MIXTURE.to_user_string()
PROMPTS = {
    "coding": "Write a Python function that returns the {i}th Fibonacci number.",
    "math": "Solve for x: 3x + {i} = 20.",
    "creative_writing": "Write a short poem about harbour number {i}.",
}
COUNTS = {"coding": 12, "math": 8, "creative_writing": 4}
CONFIG = {"sft_mixture": {"validation_fraction": 0.2, "seed": 3}}


@pytest.fixture
def filtered(tmp_path):
    storage = DataStorage(root=str(tmp_path / "data"))
    rows = [conversation(row, PROMPTS[task].format(i=i), f"A careful answer number {row}.")
            for row, (task, i) in enumerate((t, i) for t, n in COUNTS.items() for i in range(n))]
    storage.write_table(TAGGED_CONVERSATIONS, frame(rows))
    return storage, tmp_path


def test_every_row_is_tagged_and_split_and_metadata_matches_the_table(filtered):
    storage, tmp_path = filtered
    result = materialize([sft_mixture], storage, tmp_path / "dagster", CONFIG)
    assert result.success
    metadata = materialization(result, ASSET)
    mixture = storage.read_table(ASSET)
    assert_names_its_tables(metadata, storage, ASSET, rows=mixture.height, rejected=False)
    assert mixture.height == 24  # natural distribution: every row, once
    splits = dict(mixture.group_by("split").len().iter_rows())
    assert (metadata["train_rows"], metadata["validation_rows"]) == (splits["train"], splits["validation"])
    assert splits["validation"] >= 1 and mixture["conversation_id"].is_unique().all()
    assert dict(mixture.group_by("task").len().iter_rows()) == COUNTS
    manifest = storage.read_json(ASSET, "manifest")
    assert {t: s["available_rows"] + s["validation_rows"] for t, s in manifest["tasks"].items()} == COUNTS
    assert metadata["shortfall"] == manifest["shortfall"] == {}
    assert metadata["validation_strata"] == manifest["validation_strata"]  # every stratum validates here
    assert manifest["validation_strata"]["with_validation"] == 3 and not manifest["validation_strata"][
        "without_validation"]
    assert set(mixture.columns) >= {"task", "split", "messages", "conversation_id"}


def test_rerun_writes_the_same_bytes(filtered):
    storage, tmp_path = filtered
    first = materialization(materialize([sft_mixture], storage, tmp_path / "dagster", CONFIG), ASSET)
    second = materialization(materialize([sft_mixture], storage, tmp_path / "dagster2", CONFIG), ASSET)
    assert (second["path"], second["content_hash"]) == (first["path"], first["content_hash"])


def test_missing_input_column_fails_naming_asset_column_and_type(filtered):
    storage, tmp_path = filtered
    bad = storage.write_table(TAGGED_CONVERSATIONS, storage.read_table(TAGGED_CONVERSATIONS).drop("finish_reasons"))
    result = materialize([sft_mixture], storage, tmp_path / "dagster", CONFIG)
    assert not result.success
    text = failure_text(result)
    assert (f"asset 'tagged_conversations', table 'data' ({bad.path}): missing column 'finish_reasons' "
            "(expected type List(String))") in text, text
    assert not storage.has(ASSET, "data")


def test_bad_input_row_fails_naming_asset_row_and_field(filtered):
    storage, tmp_path = filtered
    df = storage.read_table(TAGGED_CONVERSATIONS)
    messages = df["messages"].to_list()
    messages[7] = []
    bad = storage.write_table(TAGGED_CONVERSATIONS,
                              df.with_columns(pl.Series("messages", messages, dtype=df.schema["messages"])))
    result = materialize([sft_mixture], storage, tmp_path / "dagster", CONFIG)
    assert not result.success
    assert (f"asset 'tagged_conversations', table 'data' ({bad.path}): row 7 (conversation_id '00000-0000007'): "
            "messages: empty or null") in failure_text(result)


def test_the_tagging_stages_task_is_used(filtered):
    """Rows carry the judge's category from tagged_conversations: the mixture samples by it, not by its own guess."""
    storage, tmp_path = filtered
    df = storage.read_table(TAGGED_CONVERSATIONS)
    judged = ["tool_use" if i % 2 else "coding" for i in range(df.height)]
    storage.write_table(TAGGED_CONVERSATIONS, df.with_columns(pl.Series("task", judged)))
    assert materialize([sft_mixture], storage, tmp_path / "dagster", CONFIG).success
    assert dict(storage.read_table(ASSET).group_by("task").len().sort("task").iter_rows()) == {"coding": 12,
                                                                                               "tool_use": 12}


def test_token_mix_with_the_students_tokenizer_manifest_json_table_and_chart(filtered, tiny_model_dir):
    """With a base_model manifest the mixture counts the student's tokens; the manifest is written as JSON beside the
    table (so sft_model's lineage.json, which snapshots every upstream JSON document, includes it), its realized
    shares equal shares recomputed here from the written Parquet, and the metadata has the table and the PNG."""
    from assets.common.orchestration.resources import BASE_MODEL, MODEL_MANIFEST

    storage, tmp_path = filtered
    storage.write_json(BASE_MODEL, MODEL_MANIFEST, {"path": str(tiny_model_dir), "content_hash": "h"})
    df = storage.read_table(TAGGED_CONVERSATIONS)
    storage.write_table(TAGGED_CONVERSATIONS, df.with_columns(
        pl.Series("source", ["mine" if i % 3 == 0 else None for i in range(df.height)], dtype=pl.Utf8)))
    config = {"sft_mixture": {"unit": "tokens", "source_shares": {"mine": 0.5}, "validation_fraction": 0.2,
                              "seed": 3, "category_caps": {"coding": 0.4}}}
    result = materialize([sft_mixture], storage, tmp_path / "dagster", config)
    assert result.success, failure_text(result)
    metadata = materialization(result, ASSET)
    manifest = storage.read_json(ASSET, "manifest")
    assert "manifest" in storage.snapshot(ASSET)["documents"]
    assert metadata["manifest_path"] == str(storage._current(ASSET, "manifest"))
    assert "data:image/png;base64," in metadata["manifest"] and "| source | task | language |" in metadata["manifest"]
    assert "category_cap[coding]" in metadata["constraints"]
    train = pl.read_parquet(metadata["path"]).filter(pl.col("split") == "train")
    total = sum(train["mix_tokens"].to_list())
    by_source: dict[str, int] = {}
    for source, tokens in zip(train["source"].to_list(), train["mix_tokens"].to_list(), strict=True):
        by_source[source or "generated"] = by_source.get(source or "generated", 0) + tokens
    for name, entry in manifest["sources"].items():
        assert entry["realized_share"] == pytest.approx(by_source[name] / total, rel=1e-12)
    assert manifest["train_tokens"] == total == metadata["train_tokens"]
    # every row counted once and kept for the next build (tests/mixture/test_mixture_tokens.py: the cache hit)
    assert (metadata["token_rows_counted"], metadata["token_rows_reused"]) == (df["messages"].n_unique(),
                                                                              df.height - df["messages"].n_unique())
    assert list((storage.asset_dir(ASSET) / "token_counts").glob("*/*.parquet"))
