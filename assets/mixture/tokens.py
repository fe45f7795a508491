"""Token counts with the student's tokenizer and chat template (no Dagster here): what a row costs in training
(every token of the rendered conversation) and what is trained (assistant tokens and their end-of-turn token), as
``training`` masks them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from assets.common.models.chat_template import read_chat_template
from training.masking import assistant_end_of_turn, tokenize_conversation


def student_token_counter(model_dir: str | Path) -> Callable[[Sequence[dict]], tuple[int, int]]:
    """messages -> (tokens, trainable tokens) under the model directory's tokenizer and chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    template = read_chat_template(model_dir)
    end_of_turn = assistant_end_of_turn(tokenizer, template)

    def count(messages: Sequence[dict]) -> tuple[int, int]:
        tokenized = tokenize_conversation(tokenizer, list(messages), template, end_of_turn)
        return len(tokenized.input_ids), sum(tokenized.assistant_masks)

    return count
