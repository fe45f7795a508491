"""`decontaminated_conversations`: eval-set overlap removed, with a blocking check that re-verifies the table
independently before training may use it."""

from contextlib import nullcontext

import dagster as dg

from assets.common.data.report import markdown_table
from assets.common.orchestration.resources import (
    DEDUPLICATED_CONVERSATIONS,
    EMBEDDING_CACHE,
    EVAL_SETS,
    GPU_POOL,
    REBUILD_ON_UPSTREAM_CHANGE,
    DataStorage,
    VLLMEngine,
    judge_model_info,
)
from assets.common.text.embeddings import DEFAULT_MODEL
from assets.common.text.minhash.config import MinHashConfig
from assets.decontamination.config import (
    DEFAULT_MINHASH,
    PROMPT_FIELDS,
    DecontamConfig,
    RephraseVerifyConfig,
    SemanticConfig,
)
from assets.decontamination.incremental import decontaminate_shards
from assets.decontamination.index import EvalIndex
from assets.decontamination.rephrase import RephraseJudge
from assets.decontamination.verify import CHECK_FLOORS, verify_decontaminated
from assets.decontamination.verify_semantic import CHECK_SEMANTIC_FLOORS

VERDICTS = "verdicts"  # the table of judged semantic pairs the blocking check reads


class RephraseVerifySettings(dg.Config):
    enabled: bool = False
    """Ask the judge model of each semantic candidate pair "is this a rephrasing of that test item?" (JSON schema);
    a pair judged not a rephrasing removes nothing. Starts a vLLM engine when there are candidates to judge."""
    judge_model_path: str | None = None
    """Any local chat model directory as the judge; unset = the teacher (the `teacher_model` manifest)."""
    prompt: str = "rephrase-v1"
    """A prompt file in assets/decontamination/prompts/ (without .yaml); its SHA-256 names every verdict."""
    max_tokens: int = 128
    batch_size: int = 64
    max_chars: int = 2000

    def to_core(self) -> RephraseVerifyConfig:
        return RephraseVerifyConfig(**self.model_dump(exclude={"enabled", "judge_model_path"}))


class SemanticSettings(dg.Config):
    enabled: bool = True
    """The semantic detector: embedding cosine of every message against the eval prompts (rephrasings, translations)."""
    model: str = DEFAULT_MODEL
    """A registered embedding model (multilingual-e5-small-q4, all-minilm-l6-v2, wordllama-l2-supercat-256) or a local
    sentence-transformers directory (then set `threshold`)."""
    threshold: float | None = None
    """Cosine at or above which a neighbour is a candidate; unset = the registered model's tuned threshold."""
    top_k: int = 5
    """Nearest eval texts looked at per message."""
    eval_fields: list[str] | None = list(PROMPT_FIELDS)
    """Eval fields compared (the test items' inputs); unset = every eval text, reference answers included."""
    batch_size: int = 32
    verify: RephraseVerifySettings = RephraseVerifySettings()

    def to_core(self) -> SemanticConfig:
        fields = self.model_dump(exclude={"enabled", "verify", "eval_fields"})
        return SemanticConfig(**fields, eval_fields=tuple(self.eval_fields) if self.eval_fields is not None else None,
                              judge=self.verify.to_core() if self.verify.enabled else None)


class DecontamSettings(dg.Config):
    ngram: int = 13
    """Word n-gram length of the overlap detector (normalized text)."""
    min_words: int = 8
    """Eval texts shorter than `ngram` words are matched whole, down to this many words (shorter: ignored)."""
    max_ngram_items: int = 3
    """An eval n-gram (or whole short eval text) found in at least this many distinct eval items is boilerplate,
    not evidence of contamination; 0 disables this cut-off."""
    max_train_rows: int = 10
    """An eval n-gram (or whole short eval text) found in at least this many distinct conversations of the table
    being decontaminated is generic text too ("i hope this helps let me know if you have any other questions"
    shared with a single eval answer) and not evidence; 0 disables this cut-off. Trade-off: a real leak repeated
    in this many rows that are not near-duplicates of each other is ignored by the n-gram detector."""
    similarity_threshold: float = DEFAULT_MINHASH.threshold
    """MinHash similarity (word 3-grams) at or above which a message matches an eval item; 0 disables it."""
    semantic: SemanticSettings = SemanticSettings()

    def to_core(self) -> DecontamConfig:
        minhash = None
        if self.similarity_threshold > 0:
            minhash = MinHashConfig(**{**DEFAULT_MINHASH.to_json(), "threshold": self.similarity_threshold,
                                       "weights": DEFAULT_MINHASH.weights})
        semantic = self.semantic.to_core() if self.semantic.enabled else None
        return DecontamConfig(ngram=self.ngram, min_words=self.min_words, max_ngram_items=self.max_ngram_items,
                              max_train_rows=self.max_train_rows, minhash=minhash, semantic_detector=semantic)


def _judge(config: DecontamSettings, core: DecontamConfig, storage: DataStorage, engine: VLLMEngine):
    """The rephrase judge when verification is on (its engine starts on the first pair to judge), else nothing."""
    semantic = core.semantic_detector
    if semantic is None or semantic.judge is None:
        return nullcontext(None)
    model = judge_model_info(config.semantic.verify.judge_model_path, storage)
    return RephraseJudge(model, semantic.judge, engine.engine_config(),
                         storage.asset_dir("decontaminated_conversations") / "verdict_cache")


@dg.asset(
    group_name="data",
    kinds={"polars", "parquet"},
    deps=[DEDUPLICATED_CONVERSATIONS, EVAL_SETS],
    automation_condition=REBUILD_ON_UPSTREAM_CHANGE,
    # the semantic detector's LLM check starts a vLLM engine (when it is on and has pairs to judge); no retry policy:
    # the engine is optional here, and a bad input (most failures of this step) would only be retried in vain
    pool=GPU_POOL,
)
def decontaminated_conversations(
    context: dg.AssetExecutionContext, config: DecontamSettings, storage: DataStorage, engine: VLLMEngine
) -> dg.MaterializeResult:
    """Deduplicated conversations minus every row whose prompt or response overlaps an eval set: a normalized word
    n-gram (13) in common, a whole short eval item contained, MinHash similarity to an eval item, or an eval prompt
    among its nearest by embedding cosine above the model's threshold (a rephrasing or translation; optionally
    confirmed by the judge model, a pair judged "not a rephrasing" removing nothing). Removed rows go
    to `rejected.parquet` with the matched benchmark, item and n-gram; the report is per benchmark. Generic text is
    not evidence: n-grams shared by 3+ eval items, or found in 10+ conversations of this table (defaults).
    Incremental over shards: per-shard results and the table-wide counts behind the 10-conversation cut-off are kept
    with the asset, a new shard is checked alone and only earlier rows whose keys it pushes over the cut-off are
    re-checked; the output equals a full check. A changed eval set or config (or a changed shard) checks it all."""
    df = storage.read_conversations(DEDUPLICATED_CONVERSATIONS)
    eval_df = storage.read_table(EVAL_SETS)
    core = config.to_core()
    state_dir = storage.asset_dir("decontaminated_conversations") / "state"
    with _judge(config, core, storage, engine) as judge:
        index = EvalIndex.build(eval_df, core, embedding_cache=storage.root_path / EMBEDDING_CACHE, judge=judge)
        embedded_eval = index.semantic.vectors.computed if index.semantic is not None else 0
        result = decontaminate_shards(df, index, state_dir, log=context.log.info)
    kept, rejected_df, report = result.kept, result.rejected, result.report
    stored = storage.write_table("decontaminated_conversations", kept)
    rejected = storage.write_table("decontaminated_conversations", rejected_df, name="rejected")
    storage.write_table("decontaminated_conversations", result.verdicts, name=VERDICTS)
    storage.write_json("decontaminated_conversations", "report", report)
    per_benchmark = [
        {"benchmark": name, "rows_removed": b["rows_removed"], "ngram_matches": b["matches"]["ngram"],
         "minhash_matches": b["matches"]["minhash"], "semantic_matches": b["matches"]["semantic"],
         "semantic_cleared": b["semantic_cleared"], "matched_items": ", ".join(b["matched_item_ids"][:5]),
         "example_ngram": b["example_ngram"] or "", "train_frequent_keys": b["train_frequent_keys"]}
        for name, b in sorted(report["benchmarks"].items())
    ]
    semantic = report["semantic"] or {}
    context.log.info(f"kept {kept.height} of {df.height}; {rejected_df.height} contaminated rows removed; new shards "
                     f"{result.new_shards}, reused {len(result.reused_shards)}, re-checked {result.rechecked_rows} rows"
                     + (f"; full check: {result.rebuild_reason}" if result.rebuilt else ""))
    return dg.MaterializeResult(
        metadata={
            **stored.metadata(),
            "rows_in": df.height,
            "rows_removed": rejected_df.height,
            "rejected_path": dg.MetadataValue.path(str(rejected.path)),
            "per_benchmark": dg.MetadataValue.md(markdown_table(per_benchmark)),
            "parameters": dg.MetadataValue.json(core.to_json()),
            "new_shards": dg.MetadataValue.json(result.new_shards),
            "reused_shards": len(result.reused_shards),
            "crossed_keys": result.crossed_keys,
            "rechecked_rows": result.rechecked_rows,
            "rebuilt": result.rebuilt,
            "rebuild_reason": result.rebuild_reason or "",
            "semantic": dg.MetadataValue.json(semantic),
            "semantic_eval_texts_embedded": embedded_eval,  # eval texts not found in the embedding cache
            "semantic_messages_embedded": index.semantic.embedded if index.semantic is not None else 0,
            "semantic_pairs_judged": judge.judged if judge is not None else 0,  # sent to the engine (not cached)
            "semantic_verdicts": result.verdicts.height,
        },
        data_version=dg.DataVersion(stored.content_hash),
    )


@dg.asset_check(asset=decontaminated_conversations, blocking=True,
                description="Re-reads the decontaminated table and the eval sets and re-checks them with an "
                "independent implementation: no normalized 13-gram (or whole short eval item) in common, "
                "boilerplate found in many eval items or in many training conversations excepted; and no kept message "
                "as close as a rephrasing to an eval prompt (embedding cosine at or above the check's own floor for "
                "the removal's model, on the cached vectors once the model's hash is checked) without a stored 'not a "
                "rephrasing' verdict of the judge. Its parameters are the stricter of its own floors "
                "(assets/decontamination/verify.py: CHECK_FLOORS; verify_semantic.py: CHECK_SEMANTIC_FLOORS) and "
                "the removal's settings: configuring the removal weakly cannot weaken this check.")
def no_eval_overlap(storage: DataStorage) -> dg.AssetCheckResult:
    df = storage.read_table("decontaminated_conversations")
    eval_df = storage.read_table(EVAL_SETS)
    verdicts = (storage.read_table("decontaminated_conversations", VERDICTS)
                if storage.has("decontaminated_conversations", VERDICTS) else None)
    verdict = verify_decontaminated(df, storage.read_table("decontaminated_conversations", "rejected"), eval_df,
                                    storage.read_json("decontaminated_conversations", "report"), verdicts,
                                    storage.root_path / EMBEDDING_CACHE)
    leaks = [leak.__dict__ for leak in verdict.leaks]
    semantic = verdict.semantic
    semantic_leaks = [leak.__dict__ for leak in semantic.leaks] if semantic else []
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict.description,
        metadata={
            "rows_checked": df.height,
            "eval_texts": eval_df.height,
            "leaks_found": len(leaks),
            "parameters": dg.MetadataValue.json(verdict.parameters),
            "check_floors": dg.MetadataValue.json(CHECK_FLOORS),
            "removal_settings": dg.MetadataValue.json(verdict.removal_settings),
            "floors_applied": dg.MetadataValue.json(verdict.overridden),
            "problem": verdict.problem,
            "leaks": dg.MetadataValue.md(markdown_table(leaks) if leaks else "none"),
            "semantic_checked": bool(semantic and semantic.checked),
            "semantic_parameters": dg.MetadataValue.json(semantic.parameters if semantic else {}),
            "semantic_check_floors": dg.MetadataValue.json(CHECK_SEMANTIC_FLOORS),
            "semantic_leaks": dg.MetadataValue.md(markdown_table(semantic_leaks) if semantic_leaks else "none"),
            "semantic_cleared_by_verdicts": semantic.cleared if semantic else 0,
        },
    )
