"""Selection by IFD (assets/mixture/select.py): top-by-IFD within each category with IFD >= 1 dropped, the diversity
floor on real embeddings (WordLlama, the fastest wheel-shipped model), and `sft_mixture` through Dagster."""

from __future__ import annotations

import polars as pl
import pytest

from assets.common.orchestration.resources import INSTRUCTION_DIFFICULTY, SFT_MIXTURE, TAGGED_CONVERSATIONS, DataStorage
from assets.common.text.embeddings import MODELS, Embedder, EmbeddingConfig
from assets.mixture.assets import sft_mixture
from assets.mixture.core import MixtureConfig, build_mixture
from tests.asset_runs import conversation, failure_text, frame, materialization, materialize

MODEL = "wordllama-l2-supercat-256"
TOPICS = ["volcanoes", "tax law", "knitting", "jazz harmony", "orbital mechanics", "sourdough", "chess openings",
          "tide pools", "medieval castles", "solar panels", "bird migration", "poker odds"]
# (task, instruction, ifd): per task, IFDs in a known order; two at or above 1
ROWS = [("coding", f"Write a Python script about {topic}.", ifd) for topic, ifd in
        zip(TOPICS, [0.95, 0.2, 1.3, 0.9, 0.5, 0.85, 0.1, 0.7, 1.0, 0.6, 0.3, 0.4], strict=True)]
ROWS += [("math", f"Compute a probability about {topic}.", ifd) for topic, ifd in
         zip(TOPICS[:8], [0.3, 0.9, 0.1, 0.8, 0.2, 0.7, 0.4, 0.6], strict=True)]


def _table(rows=ROWS) -> pl.DataFrame:
    df = frame([conversation(i, text, f"An answer about item {i}.") for i, (_, text, _) in enumerate(rows)])
    return df.with_columns(pl.Series("task", [t for t, _, _ in rows]))


def _scores(df: pl.DataFrame, rows=ROWS) -> pl.DataFrame:
    return pl.DataFrame({"conversation_id": df["conversation_id"], "ifd": [v for *_, v in rows],
                         "ifd_loss_conditioned": [1.0] * len(rows), "ifd_loss_unconditioned": [1.0] * len(rows),
                         "ifd_answer_tokens": [5] * len(rows), "ifd_status": ["scored"] * len(rows)})


@pytest.fixture(scope="module")
def embed():
    return Embedder(EmbeddingConfig(model=MODEL)).embed


def _select(df, embed=None, **select):
    cfg = MixtureConfig(validation_fraction=0.0, select={"embedding_model": MODEL, **select})
    return build_mixture(df.join(_scores(df), on="conversation_id"), cfg, embed=embed)


def test_keeps_the_highest_ifd_of_each_category_and_drops_ifd_at_least_one():
    df = _table()
    result = _select(df, keep=0.5, diversity=False)  # the ranking alone (the templated instructions are close)
    ifd = {task: sorted(result.mixture.filter(pl.col("task") == task)["ifd"].to_list(), reverse=True)
           for task in ("coding", "math")}
    assert ifd == {"coding": [0.95, 0.9, 0.85, 0.7, 0.6, 0.5], "math": [0.9, 0.8, 0.7, 0.6]}  # 1.3 and 1.0 dropped
    assert set(result.mixture["mix_selected_by"]) == {"ifd"}
    selection = result.manifest["selection"]
    assert selection["totals"] == {"rows": 20, "scored": 20, "dropped_ifd_at_least_max": 2, "not_scored": 0,
                                   "skipped_by_diversity": 0, "selected": 10}
    assert selection["diversity_threshold"] is None

    few = _select(df, keep=0.9, diversity=False)  # more than the rows below 1: every one of them, none at or above
    coding = few.mixture.filter(pl.col("task") == "coding")["ifd"]
    assert coding.len() == 10 and coding.max() < 1


def test_diversity_floor_skips_a_near_identical_instruction(embed):
    rows = [*ROWS[:4], ("coding", "Write a Python script about volcanoes!", 0.93)]  # a copy of the best row, 2nd best
    df = _table(rows)
    scores = _scores(df, rows)
    cfg = MixtureConfig(validation_fraction=0.0, select={"embedding_model": MODEL, "keep": 0.4})
    result = build_mixture(df.join(scores, on="conversation_id"), cfg, embed=embed)
    assert sorted(result.mixture["ifd"].to_list(), reverse=True) == [0.95, 0.9]  # 0.93 skipped: too close to 0.95
    (skip,) = result.manifest["selection"]["diversity_skips"]
    assert skip["conversation_id"] == df["conversation_id"][4] and skip["too_close_to"] == df["conversation_id"][0]
    assert result.manifest["selection"]["diversity_threshold"] == MODELS[MODEL].threshold  # the model's own
    assert skip["cosine"] >= result.manifest["selection"]["diversity_threshold"]
    off = MixtureConfig(validation_fraction=0.0, select={"keep": 0.4, "diversity": False})
    assert 0.93 in build_mixture(df.join(scores, on="conversation_id"), off).mixture["ifd"].to_list()


def test_selection_needs_scores_and_validation_rows_do_not_move(embed):
    df = _table()
    with pytest.raises(ValueError, match="instruction_difficulty"):
        build_mixture(df, MixtureConfig(select={"keep": 0.5, "diversity": False}))
    cfg = {"validation_fraction": 0.2}
    plain = build_mixture(df, MixtureConfig(**cfg)).mixture.filter(pl.col("split") == "validation")
    chosen = build_mixture(df.join(_scores(df), on="conversation_id"),
                           MixtureConfig(**cfg, select={"keep": 0.5, "embedding_model": MODEL}), embed=embed).mixture
    validation = chosen.filter(pl.col("split") == "validation")
    assert validation["conversation_id"].to_list() == plain["conversation_id"].to_list()
    assert set(validation["mix_selected_by"]) == {"all"} and set(chosen.filter(
        pl.col("split") == "train")["mix_selected_by"]) == {"ifd"}


def test_sft_mixture_selects_by_the_stored_scores(tmp_path):
    storage = DataStorage(root=str(tmp_path / "data"))
    df = _table()
    storage.write_table(TAGGED_CONVERSATIONS, df)
    asset, select = SFT_MIXTURE.to_user_string(), {"keep": 0.5, "embedding_model": MODEL}
    storage.write_table(INSTRUCTION_DIFFICULTY, _scores(df))
    result = materialize([sft_mixture], storage, tmp_path / "d1", {asset: {"select": select, "validation_fraction": 0}})
    assert result.success, failure_text(result)
    mixture, metadata = storage.read_table(asset), materialization(result, asset)
    assert mixture.height == 10 and mixture["ifd"].max() < 1 and "ifd_loss_conditioned" in mixture.columns
    assert "10 of 20 selected" in metadata["selection"]
    assert storage.read_json(asset, "manifest")["selection"]["embedding_model_hash"]
    assert any((tmp_path / "data" / "embeddings").rglob("*.parquet"))  # the cache under the data root
