"""`sft_mixture`: the training mixture: sources, categories, row or token targets, caps and floors, split, manifest."""

import base64
from typing import Literal

import dagster as dg

from assets.common.data.report import markdown_table
from assets.common.data.schema import DIFFICULTY_COLUMNS
from assets.common.models.token_cache import CACHE_FOLDER as TOKEN_CACHE_FOLDER
from assets.common.orchestration.resources import (
    BASE_MODEL,
    EMBEDDING_CACHE,
    INSTRUCTION_DIFFICULTY,
    MODEL_MANIFEST,
    REBUILD_ON_UPSTREAM_CHANGE,
    SFT_MIXTURE,
    TAGGED_CONVERSATIONS,
    DataStorage,
    input_error,
)
from assets.common.text.embeddings import DEFAULT_MODEL, Embedder, EmbeddingConfig
from assets.mixture.core import MixtureConfig, build_mixture
from assets.mixture.manifest import manifest_png, manifest_table
from assets.mixture.select import SelectionConfig
from assets.mixture.split import MIN_ROWS_FOR_VALIDATION
from assets.mixture.tokens import CachedTokenCounts


class SelectSettings(dg.Config):
    by: Literal["ifd"] = "ifd"
    """The score to select by: the student's Instruction-Following Difficulty (instruction_difficulty)."""
    keep: float = 0.5
    """Share of each (source, task)'s train-pool rows to keep: the highest-IFD ones."""
    max_ifd: float = 1.0
    """Rows at or above are dropped (1: the answer is no easier with its instruction than without)."""
    diversity: bool = True
    """Skip a row whose instruction is too close to one already selected in its (source, task)."""
    diversity_threshold: float | None = None
    """The cosine that is too close; unset: the embedding model's paraphrase threshold."""
    embedding_model: str = DEFAULT_MODEL
    """A registered embedding model (assets/common/text/embeddings) or a local sentence-transformers directory."""

    def to_core(self) -> SelectionConfig:
        return SelectionConfig(**self.model_dump())


class MixtureSettings(dg.Config):
    unit: Literal["rows", "tokens"] = "rows"
    """What shares and sizes count: rows, or tokens of the student's chat template (needs base_model)."""
    source_shares: dict[str, float] | None = None
    """Share of the training mix per source ("generated" = the generated pool, user sources by name); unlisted
    sources split the rest in proportion to their size. Unset: every source in proportion to its size."""
    weights: dict[str, float] | None = None
    """Target share per task within the generated pool; unset = the natural distribution, temperature-scaled."""
    temperature: float = 1.0
    """p_i ∝ n_i^(1/T) across the generated pool's categories: 1 = natural, large = uniform."""
    category_caps: dict[str, float] = {}
    """At most this share of the training mix per task (all sources)."""
    category_floors: dict[str, float] = {}
    """At least this share of the training mix per task (all sources)."""
    language_targets: dict[str, float] | None = None
    """Share per instruction language (tagging's instruction_language); unlisted languages split the rest."""
    refusal_share: float | None = None
    """Share of the training mix of rows the tagging stage flagged as refusals; unset = as they come."""
    multi_turn_floor: float = 0.0
    system_prompt_floor: float = 0.0
    max_rows: int | None = None
    """Output size (train + validation) with unit rows; unset = as large as the plan allows without repeats."""
    max_tokens: int | None = None
    """Output size in tokens with unit tokens."""
    validation_fraction: float = 0.1
    min_rows_for_validation: int = MIN_ROWS_FOR_VALIDATION
    """A (source, task) stratum with at least this many rows gets a validation row whatever the fraction (0: rounding
    alone decides); the manifest's validation_strata lists every stratum without one and why."""
    seed: int = 0
    allow_upsampling: bool = False
    select: SelectSettings | None = None
    """Keep the highest-IFD rows of each category of the train pool (e.g. {by: ifd, keep: 0.5}); unset: all rows."""

    def to_core(self) -> MixtureConfig:
        return MixtureConfig(**self.model_dump())


def _rounded(rows: list[dict]) -> list[dict]:
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def _png(data: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})"


def _selection_md(selection: dict | None) -> str:
    if selection is None:
        return "(no selection: every train-pool row is drawn from)"
    totals = selection["totals"]
    head = (f"by **{selection['by']}**, keep {selection['keep']} of each (source, task), IFD >= {selection['max_ifd']}"
            f" dropped ({totals['dropped_ifd_at_least_max']}), not scored {totals['not_scored']}, diversity floor "
            f"cosine {selection['diversity_threshold']} ({selection['embedding_model']}): "
            f"{totals['skipped_by_diversity']} skipped; {totals['selected']} of {totals['rows']} selected")
    skips = markdown_table(selection["diversity_skips"]) if selection["diversity_skips"] else ""
    return "\n\n".join(p for p in (head, markdown_table(_rounded(selection["per_group"])), skips) if p)


@dg.asset(group_name="data", kinds={"polars", "parquet"},
          deps=[TAGGED_CONVERSATIONS, INSTRUCTION_DIFFICULTY, BASE_MODEL],
          automation_condition=REBUILD_ON_UPSTREAM_CHANGE)
def sft_mixture(
    context: dg.AssetExecutionContext, config: MixtureSettings, storage: DataStorage
) -> dg.MaterializeResult:
    """The SFT mixture: tagged conversations of every source (generated and user), drawn to per-source shares of the
    training mix in rows or student tokens, temperature-scaled categories, caps and floors, language, refusal,
    multi-turn and system-prompt targets (one documented order decides conflicts), split train/validation
    stratified by source and category by a seeded hash of each row. The manifest (target vs realized share per
    source × category × language in rows and tokens, constraints, repeats) is written as JSON beside the table.
    Token counts are kept by row content and tokenizer (`token_counts/`): a rebuild counts only rows not seen."""
    df = storage.read_conversations(TAGGED_CONVERSATIONS)
    counter = None
    if storage.has(BASE_MODEL, MODEL_MANIFEST):
        counter = CachedTokenCounts(storage.read_json(BASE_MODEL, MODEL_MANIFEST)["path"],
                                    storage.asset_dir(SFT_MIXTURE) / TOKEN_CACHE_FOLDER)
    else:
        context.log.warning("no base_model manifest: tokens are not counted (unit rows only)")
    core = config.to_core()
    # the IFD columns travel with the rows only when they select them: without selection, a new student (new scores)
    # leaves the mixture's bytes, hence the training data, unchanged
    if core.select is not None and storage.has(INSTRUCTION_DIFFICULTY, "data"):
        scores = storage.read_table(INSTRUCTION_DIFFICULTY).select("conversation_id", *DIFFICULTY_COLUMNS)
        df = df.join(scores, on="conversation_id", how="left")
    embed = None
    if core.select is not None and core.select.threshold is not None:
        embedder = Embedder(EmbeddingConfig(model=core.select.embedding_model), storage.root_path / EMBEDDING_CACHE)
        embed = embedder.embed
    try:
        result = build_mixture(df, core, count_tokens=counter, embed=embed)
    except ValueError as error:
        raise input_error(error) from error
    manifest = result.manifest
    if manifest["train_rows"] == 0:
        raise ValueError(f"sft_mixture: no training rows from {df.height} tagged conversations; generate more "
                         "conversations, loosen the filters (see filtered_conversations' and tagged_conversations' "
                         "rejected_by_reason) or the mixture's shares (see its constraints)")
    stored = storage.write_table(SFT_MIXTURE, result.mixture)
    manifest_path = storage.write_json(SFT_MIXTURE, "manifest", manifest)
    context.log.info(f"mixture: {manifest['train_rows']} train, {manifest['validation_rows']} validation rows")
    sources = _rounded([{"source": name, **{k: s.get(k) for k in ("target_share", "planned_share", "realized_share",
                                                                    "rows", "tokens", "repeats", "instead")}}
                        for name, s in manifest["sources"].items()])
    return dg.MaterializeResult(
        metadata={
            **stored.metadata(),
            "train_rows": manifest["train_rows"],
            "validation_rows": manifest["validation_rows"],
            "validation_strata": dg.MetadataValue.json(manifest["validation_strata"]),
            "train_tokens": manifest["train_tokens"],
            "train_trainable_tokens": manifest["train_trainable_tokens"],
            "token_rows_counted": counter.rows_counted if counter else 0,
            "token_rows_reused": counter.rows_reused if counter else 0,
            "manifest_path": dg.MetadataValue.path(str(manifest_path)),
            "manifest": dg.MetadataValue.md(markdown_table(manifest_table(manifest)) + "\n\n"
                                            + _png(manifest_png(manifest), "target vs realized")),
            "sources": dg.MetadataValue.md(markdown_table(sources)),
            "constraints": dg.MetadataValue.md(markdown_table(_rounded(manifest["constraints"]))
                                               if manifest["constraints"] else "(none configured)"),
            "constraint_order": manifest["order"],
            "shortfall": dg.MetadataValue.json(manifest["shortfall"]),
            "selection": dg.MetadataValue.md(_selection_md(manifest["selection"])),
            "parameters": dg.MetadataValue.json(config.model_dump()),
        },
        data_version=dg.DataVersion(stored.content_hash),
    )
