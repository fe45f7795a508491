"""The semantic detector and its blocking check, with the real WordLlama model from its wheel (the fastest registered
one), real Parquet and real Dagster: a hand-written paraphrase of an IFEval prompt (assets/eval_sets/planted_pairs.yaml)
is removed by it and by neither string detector, a same-topic hard negative is kept; a weakened removal leaves the
paraphrase in and the check fails; a stored "not a rephrasing" verdict of the report's judge and prompt lets the pair
pass, one naming another prompt hash does not; a model hash or a cache that is not the model's is refused; a new shard
embeds only its own texts and the outputs equal a full rebuild."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest

from assets.common.orchestration.resources import (
    DECONTAMINATED_CONVERSATIONS,
    DEDUPLICATED_CONVERSATIONS,
    EMBEDDING_CACHE,
    EVAL_SETS,
    DataStorage,
)
from assets.common.text.embeddings import MODELS
from assets.decontamination.assets import decontaminated_conversations, no_eval_overlap
from assets.decontamination.config import DecontamConfig, SemanticConfig
from assets.decontamination.removal import decontaminate
from assets.decontamination.rephrase import (
    NOT_REPHRASING,
    PROMPTS_DIR,
    REPHRASING,
    UNPARSED,
    load_rephrase_prompt,
    parse_verdict,
)
from assets.decontamination.semantic import VERDICT_SCHEMA
from assets.decontamination.verify import verify_decontaminated
from assets.decontamination.verify_semantic import (
    CHECK_SEMANTIC_CROSS_LINGUAL,
    CHECK_SEMANTIC_FLOORS,
    CHECK_SEMANTIC_MARGINS,
    check_semantic,
)
from assets.eval_sets.core import EVAL_SET_SCHEMA
from assets.eval_sets.planted import planted_pairs
from tests.asset_runs import conversation, frame, materialization, materialize

ASSET = DECONTAMINATED_CONVERSATIONS.to_user_string()
MODEL = "wordllama-l2-supercat-256"
ITEMS = ("3376", "1325", "227", "1005")  # IFEval prompts: the eval table
WITH_MODEL = {ASSET: {"semantic": {"model": MODEL}}}


@pytest.fixture(scope="module")
def texts() -> dict:
    pairs = planted_pairs().filter(pl.col("item_id").is_in(list(ITEMS)) & (pl.col("benchmark") == "ifeval"))
    evals = pairs.unique("item_id").sort("item_id").select(
        pl.lit("ifeval").alias("benchmark"), "item_id", pl.lit("prompt").alias("field"),
        pl.col("eval_text").alias("text"), pl.lit("test").alias("source"))

    def planted(kind: str, item_id: str) -> str:
        return pairs.filter((pl.col("kind") == kind) & (pl.col("item_id") == item_id))["text"][0]

    return {"eval": evals.cast({k: v for k, v in EVAL_SET_SCHEMA.items() if k in evals.columns}),
            "paraphrase": planted("paraphrase", "3376"), "second": planted("paraphrase", "1325"),
            "hard": planted("hard_negative", "227"), "hard_same_item": planted("hard_negative", "3376")}


def _table(texts: dict, shard: int = 0) -> pl.DataFrame:
    if shard:
        return frame([conversation(0, texts["second"], "Here is the article.", shard=1),
                      conversation(1, "Name three rivers of Spain.", "The Ebro, the Tagus and the Douro.", shard=1)])
    return frame([conversation(0, texts["paraphrase"], "What has an eye but cannot see? A needle.", shard=shard),
                  conversation(1, texts["hard"], "Walk both of them every day.", shard=shard),
                  conversation(2, texts["hard_same_item"], "Satin stitch covers an area; cross-stitch makes Xs.",
                               shard=shard),
                  conversation(3, "What is the capital of France?", "Paris.", shard=shard)])


def _storage(root, texts: dict, table: pl.DataFrame) -> DataStorage:
    storage = DataStorage(root=str(root))
    storage.write_table(DEDUPLICATED_CONVERSATIONS, table)
    storage.write_table(EVAL_SETS, texts["eval"])
    return storage


def _run(storage: DataStorage, home, config: dict | None = None, check: bool = True):
    selection = [decontaminated_conversations, no_eval_overlap] if check else [decontaminated_conversations]
    result = materialize(selection, storage, home, config=config or WITH_MODEL)
    checks = result.get_asset_check_evaluations()
    return materialization(result, ASSET), checks[0] if checks else None


def _stored(storage: DataStorage):
    return (storage.read_table(ASSET), storage.read_table(ASSET, "rejected"), storage.read_table(EVAL_SETS),
            storage.read_json(ASSET, "report"))


@pytest.fixture(scope="module")
def runs(texts, tmp_path_factory) -> dict:
    """Default threshold (A, then A with a second shard), a weakened threshold (B), and a full rebuild of A's table."""
    root = tmp_path_factory.mktemp("semantic")
    a = _storage(root / "a", texts, _table(texts))
    first = _run(a, root / "d1")
    first_tables = _stored(a)
    both = pl.concat([_table(texts), _table(texts, shard=1)])
    a.write_table(DEDUPLICATED_CONVERSATIONS, both)
    second = _run(a, root / "d2")
    weak = _storage(root / "b", texts, _table(texts))
    weakened = _run(weak, root / "d3", {ASSET: {"semantic": {"model": MODEL, "threshold": 0.99}}})
    full = _storage(root / "c", texts, both)
    rebuilt = _run(full, root / "d4", check=False)
    return {"a": a, "first": first, "first_tables": first_tables, "second": second, "weak": weak,
            "weakened": weakened, "full": full, "rebuilt": rebuilt}


def test_the_paraphrase_is_removed_by_the_semantic_detector_and_the_hard_negatives_kept(runs):
    metadata, check = runs["first"]
    kept, rejected, _, report = runs["first_tables"]
    assert rejected["conversation_id"].to_list() == ["00000-0000000"]
    assert rejected["detail"][0].startswith("semantic ifeval/3376:prompt in prompt: cosine 0.8")
    assert kept["conversation_id"].to_list() == [f"00000-{i:07d}" for i in (1, 2, 3)]
    assert report["benchmarks"]["ifeval"]["matches"] == {"ngram": 0, "minhash": 0, "semantic": 1}
    assert report["semantic"]["model"] == MODEL
    assert (report["semantic"]["threshold"], report["semantic"]["margin"]) == (MODELS[MODEL].threshold,
                                                                               MODELS[MODEL].margin)
    assert "| ifeval | 1 | 0 | 0 | 1 | 0 |" in metadata["per_benchmark"]
    assert metadata["semantic_eval_texts_embedded"] == 4 and metadata["semantic_messages_embedded"] == 8
    assert check.passed and check.metadata["semantic_checked"].value, check.description
    assert check.metadata["semantic_parameters"].value["floor"] == CHECK_SEMANTIC_FLOORS[MODEL]


def test_the_string_detectors_alone_miss_the_paraphrase(texts):
    kept, rejected, _ = decontaminate(_table(texts), texts["eval"], DecontamConfig())
    assert rejected.height == 0 and kept.height == 4


def test_a_paraphrase_left_in_the_table_fails_the_blocking_check(runs):
    metadata, check = runs["weakened"]
    assert metadata["rows_removed"] == 0  # the removal, configured above the floor, left the paraphrase in
    assert not check.passed
    assert "as close as a rephrasing to an eval text" in check.description and "ifeval 3376" in check.description
    assert "00000-0000000" in check.metadata["semantic_leaks"].value


def _verdicts(storage: DataStorage, texts: dict, prompt_hash: str) -> pl.DataFrame:
    """A stored "not a rephrasing" verdict for the paraphrase and its eval prompt, as the asset writes them."""
    eval_text = texts["eval"].filter(pl.col("item_id") == "3376")["text"][0]
    row = {"message_hash": hashlib.sha256(texts["paraphrase"].encode()).hexdigest(),
           "eval_hash": hashlib.sha256(eval_text.encode()).hexdigest(), "benchmark": "ifeval", "item_id": "3376",
           "field": "prompt", "similarity": 0.87, "verdict": NOT_REPHRASING, "judge_model": "judge",
           "judge_model_hash": "j" * 64, "prompt": "rephrase-v1", "prompt_hash": prompt_hash}
    storage.write_table(ASSET, pl.DataFrame([row], schema=VERDICT_SCHEMA), name="verdicts")
    return storage.read_table(ASSET, "verdicts")


def test_a_stored_not_a_rephrasing_verdict_passes_the_pair_only_under_the_current_prompt(runs, texts):
    storage = runs["weak"]
    kept, rejected, eval_df, report = _stored(storage)
    prompt = load_rephrase_prompt("rephrase-v1")
    report["semantic"]["judge"] = {"model": "judge", "model_hash": "j" * 64, "prompt": prompt.name,
                                   "prompt_hash": prompt.hash}
    cache = storage.root_path / EMBEDDING_CACHE
    cleared = verify_decontaminated(kept, rejected, eval_df, report, _verdicts(storage, texts, prompt.hash), cache)
    assert cleared.passed and cleared.semantic.cleared == 1, cleared.description
    other = verify_decontaminated(kept, rejected, eval_df, report, _verdicts(storage, texts, "0" * 64), cache)
    assert not other.passed and other.semantic.leaks[0].item_id == "3376"


def test_an_unregistered_model_is_refused_unless_the_check_has_its_floor(texts):
    report = {"semantic": {"model": "/models/my-sentence-model", "model_hash": "a" * 64, "threshold": 0.5,
                           "eval_fields": ["prompt"], "chunk_tokens": 256}}
    result = check_semantic(_table(texts), texts["eval"], report, None, None)
    assert "has no floor in the check" in result.problem
    with pytest.raises(ValueError, match="set semantic threshold"):
        SemanticConfig(model="/models/my-sentence-model")


def test_the_checks_floors_are_at_least_the_registered_thresholds():
    """The removal's defaults pass their own check: a floor below a model's threshold (or a margin below its margin)
    would fail every run whose kept rows score between the two."""
    assert set(CHECK_SEMANTIC_FLOORS) == set(CHECK_SEMANTIC_MARGINS) == set(MODELS)
    assert all(CHECK_SEMANTIC_FLOORS[name] >= MODELS[name].threshold for name in MODELS)
    assert all(CHECK_SEMANTIC_MARGINS[name] >= MODELS[name].margin for name in MODELS)
    tiers = {name: (spec.cross_threshold, spec.cross_margin) for name, spec in MODELS.items() if spec.cross_threshold}
    assert set(CHECK_SEMANTIC_CROSS_LINGUAL) == set(tiers)  # a model's cross-lingual tier is checked by its own floor
    assert all(CHECK_SEMANTIC_CROSS_LINGUAL[name][0] >= t and CHECK_SEMANTIC_CROSS_LINGUAL[name][1] >= g
               for name, (t, g) in tiers.items())


def test_a_new_shard_embeds_only_its_rows_and_equals_a_full_rebuild(runs):
    metadata, check = runs["second"]
    assert metadata["new_shards"] == ["1"] and not metadata["rebuilt"] and check.passed
    assert metadata["semantic_eval_texts_embedded"] == 0 and metadata["semantic_messages_embedded"] == 4
    assert runs["a"].read_table(ASSET, "rejected")["conversation_id"].to_list() == ["00000-0000000",
                                                                                   "00001-0000000"]
    full, _ = runs["rebuilt"]
    assert full["rebuilt"] and full["new_shards"] == ["0", "1"]
    for name in ("data", "rejected", "verdicts", "report"):
        mine, theirs = (s.asset_dir(ASSET) / name for s in (runs["a"], runs["full"]))
        assert (mine / "CURRENT").read_text() == (theirs / "CURRENT").read_text(), name


@pytest.mark.parametrize(("answer", "finish", "verdict"), [
    ('{"reason":"same riddle, reworded","rephrasing":true}', "stop", REPHRASING),
    ('{"reason":"a different task","rephrasing":false}', "stop", NOT_REPHRASING),
    ('{"reason":"cut', "length", UNPARSED),
    ('{"reason":"no flag"}', "stop", UNPARSED),
])
def test_the_judges_answer_is_parsed_into_a_verdict(answer, finish, verdict):
    assert parse_verdict(answer, finish)[0] == verdict


def test_the_prompt_hash_is_the_files_sha256():
    prompt = load_rephrase_prompt("rephrase-v1")
    assert prompt.hash == hashlib.sha256((PROMPTS_DIR / "rephrase-v1.yaml").read_bytes()).hexdigest()
    assert prompt.schema["required"] == ["reason", "rephrasing"]


def test_a_model_hash_or_cache_that_is_not_the_models_is_refused(runs):
    storage = runs["full"]  # (it rewrites the cache: last in the file)
    kept, rejected, eval_df, report = _stored(storage)
    cache = storage.root_path / EMBEDDING_CACHE
    wrong = {**report, "semantic": {**report["semantic"], "model_hash": "f" * 64}}
    refused = verify_decontaminated(kept, rejected, eval_df, wrong, None, cache)
    assert not refused.passed and "but the removal recorded ffffffffffff" in refused.description
    folder = cache / report["semantic"]["model_hash"]
    for shard in sorted(folder.rglob("*.parquet")):  # another model's vectors under this model's hash
        table = pl.read_parquet(shard)
        vectors = np.asarray(table["vector"].to_list(), dtype=np.float32)
        shard.write_bytes(b"")
        table.with_columns(pl.Series("vector", -vectors, dtype=table.schema["vector"])).write_parquet(shard)
    poisoned = verify_decontaminated(kept, rejected, eval_df, report, None, cache)
    assert not poisoned.passed and "holds vectors that model does not compute" in poisoned.description


def test_the_checks_margin_rule_is_the_removals():
    """The check's own numpy rule: a pair at the floor counts only when it stands out by the margin from every eval
    text that is not its twin (a same-topic message close to two unrelated items is not a leak)."""
    from assets.decontamination.verify_semantic import _distinct

    per_message = np.array([[0.95, 0.94, 0.10], [0.95, 0.50, 0.10]])
    apart = ~np.eye(3, dtype=bool)  # no twins
    assert [tuple(map(int, pair)) for pair in zip(*_distinct(per_message, apart, 0.9, 0.02), strict=True)] == [(1, 0)]
    apart[0, 1] = apart[1, 0] = False  # items 0 and 1 are twins: the first message stands out from the rest
    rows, items = _distinct(per_message, apart, 0.9, 0.02)
    assert sorted(zip(rows.tolist(), items.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 0)]


def test_the_checks_cross_lingual_tier_adds_pairs_of_two_languages():
    """Its own numpy version of the removal's second tier: a message and an eval text in two identified, different
    languages count at the tier's lower floor when they stand out by its larger margin."""
    from assets.decontamination.verify_semantic import _distinct

    per_message = np.array([[0.89, 0.30, 0.10], [0.89, 0.87, 0.10], [0.89, 0.30, 0.10]])
    apart = ~np.eye(3, dtype=bool)

    def found(*args) -> list[tuple[int, int]]:
        rows, items = _distinct(per_message, apart, 0.9, 0.02, *args)
        return sorted(zip(rows.tolist(), items.tolist(), strict=True))

    assert found() == []
    messages, evals = np.array(["fr", "fr", "und"], dtype=object), np.array(["en", "en", "en"], dtype=object)
    # message 1 leads its rival by 0.02 (0.03 asked); message 2's language is not identified
    assert found([0.888, 0.03], (messages, evals)) == [(0, 0)]
    assert found([0.888, 0.03], (messages, np.array(["fr", "en", "en"], dtype=object))) == []  # the same language
    assert found([0.895, 0.03], (messages, evals)) == []


def test_the_check_scores_cross_lingual_pairs_at_the_recorded_tier(runs, texts):
    """The check's scan identifies the languages itself: with a cross-lingual tier recorded by the removal (here a
    deliberately low one, WordLlama has none of its own), a French message's best eval text counts, English ones
    do not, nor an answer whose language is not identified."""
    storage = runs["a"]
    kept, _, eval_df, report = _stored(storage)
    french = planted_pairs().filter(pl.col("id") == "translated-ifeval-00")["text"][0]
    table = pl.concat([kept.select("conversation_id", "messages"),
                       frame([conversation(9, french, "- 1990-2024: ...")]).select("conversation_id", "messages")])
    cache = storage.root_path / EMBEDDING_CACHE
    assert check_semantic(table, eval_df, report, None, cache).leaks == []  # WordLlama's first tier alone
    tier = {**report, "semantic": {**report["semantic"], "cross_lingual": {"threshold": 0.1, "margin": 0.0}}}
    result = check_semantic(table, eval_df, tier, None, cache)
    assert result.parameters["cross_lingual"] == [0.1, 0.0]  # its best eval text: 0.17 (WordLlama)
    assert [leak.conversation_id for leak in result.leaks] == ["00000-0000009"]
    assert "(fr vs en)" in result.leaks[0].evidence
