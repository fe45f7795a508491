"""`magpie_conversations`: instructions and answers generated Magpie-style by the teacher model on vLLM."""


import shutil

import dagster as dg

from assets.common.data.config import config_dict
from assets.common.data.shards import shard_index
from assets.common.models.engine import SamplingConfig, VLLMGenerator, engine_distribution
from assets.common.orchestration.resources import (
    ENGINE_RETRY,
    GENERATION_SHARDS,
    GPU_POOL,
    MAGPIE_CONVERSATIONS,
    MODEL_MANIFEST,
    TEACHER_MODEL,
    DataStorage,
    StoredTable,
    VLLMEngine,
)
from assets.generation.magpie import MagpieConfig, pre_query_prefixes, pre_query_report
from assets.generation.shards import ShardResult, run_shard


class Sampling(dg.Config):
    temperature: float = 1.0
    top_p: float = 1.0
    """Nucleus sampling; below 1 it sorts the whole vocabulary at every step on a CPU (min_p and top_k do not)."""
    max_tokens: int = 256
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    """Keep tokens with at least min_p x the most likely token's probability; 0: off."""
    top_k: int = 0
    """Keep the k most likely tokens; 0: off."""

    def to_core(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              repetition_penalty=self.repetition_penalty, min_p=self.min_p, top_k=self.top_k)


class SystemPrompt(dg.Config):
    text: str = ""
    """The system message; empty = none (the chat template's default, if any, applies)."""
    weight: float = 1.0


class MagpieGenerationConfig(dg.Config):
    num_conversations: int = 1000
    num_turns: int = 1
    instruction: Sampling = Sampling(temperature=1.0, top_p=1.0, max_tokens=256)
    """Magpie's defaults: sample instructions at temperature 1.0, top_p 1.0."""
    response: Sampling = Sampling(temperature=0.7, min_p=0.05, max_tokens=1024)
    system_prompts: list[SystemPrompt] = []
    """Weighted system prompts to sample per conversation; empty = no system message (the template's default)."""
    response_system_prompt: str = ""
    """A system message the teacher answers under, not stored in the conversation and not used when instructions
    are sampled (context distillation: the stored rows look like what a user sends, the answers take the style it
    asks for, e.g. brevity so that answers end within `response.max_tokens`). Joined after a row's own system
    prompt, if it has one; recorded in every row's `sampling_params` and in the shard's report. Empty: none."""
    pre_query_template: str | None = None
    """Replaces the pre-query prefix derived from the chat template, for the first turn of conversations without a
    system prompt only (e.g. a template whose prefix cannot be cut automatically). It cannot stand for a prefix
    that holds a system message or earlier turns, so conversations drawn with a system prompt and turns 2..N keep
    the derived prefix. Each row's `pre_query_template_hash` is the SHA-256 of the first-turn prefix that row
    really used, and the report's `pre_query_template_usage` lists every first-turn prefix with its hash, source
    (override or derived), system prompt and row count."""
    seed: int = 0
    batch_size: int = 256
    """Rows per checkpointed batch: a killed run resumes from the last finished batch, losing nothing; checkpoints
    are row ranges, so the re-run may use another batch_size."""

    def to_core(self, shard: int = 0) -> MagpieConfig:
        return MagpieConfig(
            num_conversations=self.num_conversations,
            num_turns=self.num_turns,
            instruction=self.instruction.to_core(),
            response=self.response.to_core(),
            system_prompts=tuple((p.text, p.weight) for p in self.system_prompts) or (("", 1.0),),
            response_system_prompt=self.response_system_prompt,
            pre_query_template=self.pre_query_template,
            seed=self.seed,
            shard=shard,
        )


@dg.asset(group_name="data", kinds={"vllm", "parquet"}, deps=[TEACHER_MODEL], partitions_def=GENERATION_SHARDS,
          pool=GPU_POOL, retry_policy=ENGINE_RETRY)
def magpie_conversations(
    context: dg.AssetExecutionContext, config: MagpieGenerationConfig, storage: DataStorage, engine: VLLMEngine
) -> dg.MaterializeResult:
    """Conversations generated Magpie-style: the teacher sees only its pre-query template (derived from its own chat
    template) and writes an instruction, then answers it; N turns. Every row carries its provenance.

    One partition is one shard (`python -m pipelines.shards next` adds one): rows are seeded by (seed, shard, row),
    so shards never repeat each other and N workers can generate N shards in parallel. Within a shard, finished
    batches are checkpointed: a killed run resumes where it stopped."""
    from transformers import AutoTokenizer

    model = storage.read_json(TEACHER_MODEL, MODEL_MANIFEST)
    tokenizer = AutoTokenizer.from_pretrained(model["path"])
    key = context.partition_key
    core = config.to_core(shard=shard_index(key))
    engine_name, engine_version = engine_distribution()
    engine_config = engine.engine_config()
    context.log.info(f"shard {key}: {core.num_conversations} conversations x {core.num_turns} turn(s) in batches of "
                     f"{config.batch_size}; instruction {core.instruction.to_dict()}, response "
                     f"{core.response.to_dict()}; engine {engine_config}")

    devices = []  # where the engine ran (its slot's cores or GPUs), when one was started

    def start_engine() -> VLLMGenerator:
        context.log.info(f"starting {engine_name}=={engine_version} on {model['name']}")
        generator = VLLMGenerator(model["path"], engine_config, seed=core.seed)
        devices.append(generator.devices)
        context.log.info(f"engine up in {generator.startup_seconds:.0f}s on {generator.devices}")
        return generator

    work_dir = storage.asset_dir(MAGPIE_CONVERSATIONS) / "checkpoints" / f"shard-{key}"
    result = run_shard(start_engine, tokenizer, core, model["name"], model["content_hash"], work_dir,
                       config.batch_size, engine_key=f"{engine_name}=={engine_version}", log=context.log.info)
    stored = storage.write_table(MAGPIE_CONVERSATIONS, result.table, name=f"shard-{key}")
    shutil.rmtree(work_dir, ignore_errors=True)  # the shard is complete: its checkpoints are no longer needed
    report = _report(model, tokenizer, core, result,
                     {"name": engine_name, "version": engine_version, **config_dict(engine_config),
                      "devices": devices[0] if devices else None})
    storage.write_json(MAGPIE_CONVERSATIONS, f"report-{key}", report)
    return dg.MaterializeResult(metadata=_metadata(stored, result, report),
                                data_version=dg.DataVersion(stored.content_hash))


def _report(model: dict, tokenizer, core: MagpieConfig, result: ShardResult, engine: dict) -> dict:
    """The shard's generation report: model, prompts (with the rows that used each), sampling, engine, stats."""
    return {
        "model": model["name"],
        "model_hash": model["content_hash"],
        "pre_query_templates": pre_query_prefixes(tokenizer, core),
        "pre_query_template_usage": pre_query_report(tokenizer, core, result.table),
        "sampling": {"instruction": core.instruction.to_dict(), "response": core.response.to_dict()},
        "num_turns": core.num_turns,
        "system_prompts": [list(p) for p in core.system_prompts],
        "response_system_prompt": core.response_system_prompt,
        "seed": core.seed,
        "shard": core.shard,
        "engine": engine,
        "stats": result.stats.to_dict(),
        "batches": result.batches,
        "resumed_batches": result.resumed_batches,
    }


def _metadata(stored: StoredTable, result: ShardResult, report: dict) -> dict:
    stats = report["stats"]
    return {
        **stored.metadata(),
        "attempted": stats["attempted"],
        "dropped": dg.MetadataValue.json(stats["dropped"]),
        "tokens_generated": stats["tokens_generated"],
        "tokens_per_second": stats["tokens_per_second"],
        "engine": f"{report['engine']['name']}=={report['engine']['version']}",
        "batches": result.batches,
        "resumed_batches": result.resumed_batches,
        "seed": report["seed"],
        "sampling": dg.MetadataValue.json(report["sampling"]),
        "pre_query_templates": dg.MetadataValue.md(_prefixes_markdown(report["pre_query_template_usage"])),
        "sample": dg.MetadataValue.md(_sample_markdown(result.table)),
    }


def _sample_markdown(df, n: int = 3) -> str:
    blocks = []
    for row in df.head(n).iter_rows(named=True):
        turns = "\n".join(f"**{m['role']}**: {m['content'][:300]}" for m in row["messages"])
        blocks.append(f"`{row['conversation_id']}`\n\n{turns}")
    return "\n\n---\n\n".join(blocks) or "(no rows)"


def _prefixes_markdown(usage: list[dict]) -> str:
    return "\n\n".join(f"{u['source']} prefix `{u['hash'][:12]}` for system prompt {u['system_prompt']!r}: "
                       f"{u['rows']} rows\n```\n{u['prefix']}\n```" for u in usage)
