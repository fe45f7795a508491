"""P(end-of-turn): the probability a model gives its end-of-turn token right after an answer's text (no Dagster
here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from assets.common.models.chat_template import TemplateError, render
from assets.evaluation.prompts import EvaluationInputError

# --------------------------------------------------------------------------------------------------------
# P(end-of-turn) right after the answer


@dataclass(frozen=True)
class EndOfTurnProbabilities:
    """Mean and per-conversation probability of the end-of-turn token right after the assistant's answer."""

    mean: float
    per_row: list[float]


def _prompt_and_answer(tokenizer: Any, chat_template: str, conversation: Sequence[Mapping[str, str]],
                       end_of_turn: str, index: int) -> tuple[str, str]:
    """The rendered prompt (with the generation prompt) and the answer text as the template renders it."""
    if not conversation or conversation[-1].get("role") != "assistant":
        raise EvaluationInputError(f"conversation {index}: the last message must be the assistant's answer")
    prompt = render(tokenizer, conversation[:-1], add_generation_prompt=True, chat_template=chat_template)
    full = render(tokenizer, conversation, chat_template=chat_template)
    if not full.startswith(prompt):
        raise TemplateError(f"conversation {index}: the rendered conversation does not start with the rendered "
                            "prompt + generation prompt, so the answer's position is ambiguous")
    tail = full[len(prompt):]
    end = tail.rfind(end_of_turn)
    if end < 0:
        raise TemplateError(f"conversation {index}: the template writes no {end_of_turn!r} after the assistant's "
                            "answer; pass the token that ends an assistant turn in this template")
    return prompt, tail[:end]


def end_of_turn_probabilities(model: Any, tokenizer: Any, chat_template: str,
                              conversations: Sequence[Sequence[Mapping[str, str]]], end_of_turn: str,
                              batch_size: int = 8) -> EndOfTurnProbabilities:
    """P(``end_of_turn`` | prompt + answer) for each conversation (last message = the assistant's answer).

    Each conversation's prompt is rendered with ``chat_template`` and its generation prompt, followed by the answer
    as the template renders it; prompt and answer are tokenized separately (as generation produced them) and the
    model's next-token distribution after the answer's last token gives the end-of-turn probability. A model that
    learned to end its turns gives a high value; one that rambles on (turn completion failing) a low one.
    """
    import torch

    eot_ids = tokenizer(end_of_turn, add_special_tokens=False)["input_ids"]
    if len(eot_ids) != 1:
        raise TemplateError(f"end-of-turn {end_of_turn!r} is {len(eot_ids)} tokens for this tokenizer, expected "
                            "exactly one (pass the special token that ends an assistant turn)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sequences = []
    for index, conversation in enumerate(conversations):
        prompt, answer = _prompt_and_answer(tokenizer, chat_template, conversation, end_of_turn, index)
        ids = (tokenizer(prompt, add_special_tokens=False)["input_ids"]
               + tokenizer(answer, add_special_tokens=False)["input_ids"])
        sequences.append(ids)
    if not sequences:
        raise EvaluationInputError("no conversations: P(end-of-turn) of zero answers is undefined")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot_ids[0]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_row: list[float] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start:start + batch_size]
                width = max(len(ids) for ids in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, ids in enumerate(batch):  # right padding: real tokens keep positions 0..len-1
                    input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                    attention[row, :len(ids)] = 1
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
                last = torch.tensor([len(ids) - 1 for ids in batch], device=logits.device)
                final = logits[torch.arange(len(batch), device=logits.device), last].float()
                per_row += torch.softmax(final, dim=-1)[:, eot_ids[0]].tolist()
    finally:
        model.train(was_training)
    return EndOfTurnProbabilities(mean=float(np.mean(per_row)), per_row=per_row)
