"""The student model, prepared for fine-tuning with its chat template chosen once (no Dagster here).

The source is the embedded gemma-3-270m base (``gemma.py``) or a local Hugging Face directory; it is never
modified. From it a *prepared student directory* is written under the data root, named by a key of the source's
content hash, the template's SHA-256 and the preparation version (written atomically, reused when identical):

- ``chat_template.jinja``: the chosen template, byte for byte (``tokenizer_config.json`` holds none);
- the tokenizer, with every template marker that is not yet a special token registered as one (a marker the
  vocabulary lacks becomes a new token) and ``eos_token`` = the template's end-of-turn token; ``pad_token``
  unchanged (set to the original EOS only when missing);
- ``generation_config.json``: ``eos_token_id`` = [end-of-turn id, original EOS id], the way Gemma and Llama 3
  instruct checkpoints list both: transformers and vLLM stop on the end-of-turn token the model is trained to
  emit, and still stop if it emits the EOS it ended texts with in pretraining; ``config.json`` names the
  end-of-turn id as its EOS, as the tokenizer does;
- the weights: hard-linked (copied across file systems) when no token was added; otherwise loaded, the embedding
  matrix resized so transformers and vLLM load it, the new rows set to the mean of the existing rows, and saved;
- ``chat_markers.json``: the template, the end-of-turn and original EOS ids, and each marker's id, whether it was
  added, and whether it existed but is *untrained-suspect* (the original model ships no template writing it, as
  gemma-3-270m base's ``<start_of_turn>``/``<end_of_turn>``, single tokens whose rows were never trained). Training
  reads it to give those rows a deliberate start (``training/markers.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from assets.common.data.storage import make_tree_readable, sha256_text
from assets.common.models.chat_template import special_token_strings
from assets.common.models.directories import PreparedModel, describe_model
from assets.common.models.templates import (
    CHAT_MARKERS_FILE,
    KEEP_TOKENIZER,
    ChatMarkers,
    ChosenTemplate,
    MarkerToken,
    TemplateChoiceError,
    choose_template,
    read_chat_markers,
    registry_names,
    template_markers,
)

STUDENT_PREPARATION = "student/2"  # bumped whenever the preparation changes, so a prepared directory is redone
EMBEDDED_TEMPLATE = "gemma"  # the embedded Gemma base: its vocabulary already has Gemma's turn markers
TEMPLATE_FIELD = "base_model config `chat_template`"
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")


@dataclass(frozen=True)
class PreparedStudent:
    model: PreparedModel  # the prepared directory: what is fine-tuned
    original: PreparedModel  # the source directory, untouched
    template: ChosenTemplate
    markers: ChatMarkers
    generation_eos_token_ids: list[int]
    pad_token: str | None
    weights: str  # "hard-linked", "copied", "rewritten (embeddings resized)" or "reused"

    def manifest(self) -> dict:
        markers = self.markers
        return {
            "path": str(self.model.path),
            "name": self.model.name,
            "source": self.original.source,
            "content_hash": self.model.content_hash,
            "eos_token": markers.end_of_turn,
            "pad_token": self.pad_token,
            "num_parameters": self.model.num_parameters,
            "template": {"name": markers.template_name, "source": markers.template_source,
                         "sha256": markers.template_sha256},
            "end_of_turn": {"token": markers.end_of_turn, "id": markers.end_of_turn_id},
            "text_end": {"token": markers.text_end, "id": markers.text_end_id},
            "generation_eos_token_ids": self.generation_eos_token_ids,
            "markers": [m.__dict__ for m in markers.markers],
            "added_token_ids": [m.id for m in markers.markers if m.added],
            "untrained_suspect_token_ids": [m.id for m in markers.markers if m.untrained_suspect],
            "special_tokens": list(markers.special_tokens),
            "weights": self.weights,
            "original": {"path": str(self.original.path), "name": self.original.name, "source": self.original.source,
                         "content_hash": self.original.content_hash, "eos_token": self.original.eos_token,
                         "had_chat_template": bool(self.original.chat_template)},
        }


def template_choice(configured: str | None, original: PreparedModel, embedded: bool) -> str:
    """The configured choice, or when unset: ``gemma`` for the embedded Gemma base, the model's own template for a
    local model that has one; a local base model without one must choose (the error says how)."""
    if configured:
        return configured
    if embedded:
        return EMBEDDED_TEMPLATE
    if original.chat_template:
        return KEEP_TOKENIZER
    raise TemplateChoiceError(
        f"{TEMPLATE_FIELD} is unset and {original.path} has no chat template (a base model): choose one. Set it to "
        f"a registry name ({', '.join(registry_names())}), preferably the one whose markers the vocabulary already "
        "has, or a path to a .jinja file.")


def student_dir_key(original: PreparedModel, template: ChosenTemplate) -> str:
    return sha256_text(f"{STUDENT_PREPARATION}|{original.content_hash}|{template.sha256}")[:16]


def prepare_student(original: PreparedModel, choice: str, out_root: str | Path) -> PreparedStudent:
    """Write (or reuse) the prepared student directory for ``original`` under the template ``choice``."""
    template = choose_template(choice, original.path, TEMPLATE_FIELD)
    out_dir = Path(out_root) / f"{original.name}-{student_dir_key(original, template)}"
    weights = "reused"
    if read_chat_markers(out_dir) is None:
        weights = _write_student_dir(original, template, out_dir)
    markers = read_chat_markers(out_dir)
    model = describe_model(out_dir, original.name, f"prepared:{original.source}")
    generation = json.loads((out_dir / "generation_config.json").read_text())
    eos_ids = generation["eos_token_id"]
    tokenizer_config = json.loads((out_dir / "tokenizer_config.json").read_text())
    return PreparedStudent(
        model=model, original=original, template=template, markers=markers,
        generation_eos_token_ids=eos_ids if isinstance(eos_ids, list) else [eos_ids],
        pad_token=_token_string(tokenizer_config.get("pad_token")), weights=weights,
    )


def _token_string(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _single_token_id(tokenizer, token: str) -> int:
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or tokenizer.convert_ids_to_tokens(ids[0]) != token:
        raise TemplateChoiceError(f"marker {token!r} is not a single token after registering it (ids {ids})")
    return ids[0]


def _write_student_dir(original: PreparedModel, template: ChosenTemplate, out_dir: Path) -> str:
    """Build the prepared directory beside ``out_dir`` and rename it into place; returns how weights were placed."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(original.path))
    found = template_markers(tokenizer, template)
    original_size = len(tokenizer)
    text_end, text_end_id = tokenizer.eos_token, tokenizer.eos_token_id
    special = set(special_token_strings(tokenizer))
    unregistered = [m for m in found.markers if m not in special]
    if unregistered:  # an existing vocabulary piece keeps its id; a missing one gets a new id
        tokenizer.add_tokens([AddedToken(m, special=True, normalized=False) for m in unregistered],
                             special_tokens=True)
    ids = {m: _single_token_id(tokenizer, m) for m in found.markers}
    markers = tuple(MarkerToken(token=m, id=ids[m], added=ids[m] >= original_size,
                                untrained_suspect=ids[m] < original_size and m not in original.chat_template)
                    for m in found.markers)
    tokenizer.eos_token = found.end_of_turn
    if tokenizer.pad_token is None:
        tokenizer.pad_token = text_end or found.end_of_turn
    tokenizer.chat_template = template.text
    end_id = ids[found.end_of_turn]
    eos_ids = list(dict.fromkeys(i for i in (end_id, text_end_id) if i is not None))
    record = ChatMarkers(
        template_name=template.name, template_source=template.source, template_sha256=template.sha256,
        end_of_turn=found.end_of_turn, end_of_turn_id=end_id, text_end=text_end, text_end_id=text_end_id,
        markers=markers, original_content_hash=original.content_hash,
        special_tokens=tuple(sorted({*tokenizer.all_special_tokens, *found.markers, text_end} - {None})),
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        added = [m.id for m in markers if m.added]
        if added:
            _save_resized(original.path, tmp, added, original_size, len(tokenizer))
        else:
            shutil.copy2(original.path / "config.json", tmp / "config.json")
        tokenizer.save_pretrained(str(tmp))
        _finish_tokenizer_files(tmp, template)
        _write_generation_config(original.path, tmp, eos_ids, tokenizer)
        _align_model_config(tmp, end_id, tokenizer)
        (tmp / CHAT_MARKERS_FILE).write_text(json.dumps(record.to_dict(), indent=2) + "\n")
        _verify(tmp, template, record)
        make_tree_readable(tmp)  # before linking: a hard link shares the source file's mode
        weights = "rewritten (embeddings resized)" if added else _place_weights(original.path, tmp)
        if out_dir.exists():  # prepared meanwhile by another run: identical by construction
            shutil.rmtree(tmp)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return weights


def _save_resized(source: Path, out: Path, new_ids: list[int], existing: int, vocabulary: int) -> None:
    """Load the model, make room for the new token ids, set their rows to the mean of the existing rows (input and,
    when untied, output embeddings), and save it as safetensors in its stored dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(source), dtype="auto")
    if model.get_input_embeddings().weight.shape[0] < vocabulary:
        model.resize_token_embeddings(vocabulary, mean_resizing=False)
    index = torch.tensor(new_ids)
    with torch.no_grad():
        tables = [model.get_input_embeddings().weight]
        output = model.get_output_embeddings()
        if output is not None and output.weight.data_ptr() != tables[0].data_ptr():
            tables.append(output.weight)
        for weight in tables:
            mean = weight[:existing].double().mean(dim=0).to(weight.dtype)
            weight[index] = mean
    model.save_pretrained(str(out), safe_serialization=True)


def _finish_tokenizer_files(out: Path, template: ChosenTemplate) -> None:
    """The template lives in chat_template.jinja only, byte for byte."""
    (out / "chat_template.jinja").write_bytes(template.text.encode("utf-8"))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.pop("chat_template", None) is not None:
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _write_generation_config(source: Path, out: Path, eos_ids: list[int], tokenizer) -> None:
    path = source / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    config.pop("_from_model_config", None)
    config["eos_token_id"] = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    if tokenizer.bos_token_id is not None:
        config["bos_token_id"] = tokenizer.bos_token_id
    if tokenizer.pad_token_id is not None:
        config["pad_token_id"] = tokenizer.pad_token_id
    (out / "generation_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _align_model_config(out: Path, end_id: int, tokenizer) -> None:
    """config.json names the tokenizer's EOS (the end-of-turn token) and pad, as transformers expects: otherwise it
    rewrites them on load, with a warning, in whatever loads the model for training."""
    path = out / "config.json"
    config = json.loads(path.read_text())
    config["eos_token_id"] = end_id
    if tokenizer.pad_token_id is not None:
        config["pad_token_id"] = tokenizer.pad_token_id
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _verify(out: Path, template: ChosenTemplate, record: ChatMarkers) -> None:
    """The saved tokenizer, as transformers loads it, uses the chosen template and the recorded ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    problems = []
    if tokenizer.chat_template != template.text:
        problems.append("the loaded chat template differs from the chosen one")
    if tokenizer.eos_token != record.end_of_turn:
        problems.append(f"eos_token is {tokenizer.eos_token!r}, not {record.end_of_turn!r}")
    for marker in record.markers:
        if tokenizer(marker.token, add_special_tokens=False)["input_ids"] != [marker.id]:
            problems.append(f"{marker.token!r} does not encode to [{marker.id}]")
    if problems:
        raise RuntimeError(f"{out}: the prepared student directory does not load as written: {'; '.join(problems)}")


def _place_weights(source: Path, out: Path) -> str:
    """Hard-link the weight files (the source is never written through them), or copy across file systems."""
    how = "hard-linked"
    for pattern in WEIGHT_PATTERNS:
        for file in sorted(source.glob(pattern)):
            try:
                os.link(file, out / file.name)
            except OSError:
                shutil.copy2(file, out / file.name)
                how = "copied"
    return how
