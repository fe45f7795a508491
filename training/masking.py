"""Assistant-only loss masks by rendering the model's own chat template (no Dagster here).

TRL's ``assistant_only_loss`` needs ``{% generation %}`` markers, which most shipped templates lack (SmolLM2's
among them). Rather than rewriting the template, and so training on a template that differs from the one served,
the assistant spans are found by rendering prefixes of the conversation with the unchanged template:

    before_i = render(messages[:i], add_generation_prompt=True)   # everything up to the i-th assistant's words
    upto_i   = render(messages[:i + 1])                            # ... through the i-th assistant turn

The characters in ``[len(before_i), end of the end-of-turn token]`` are the assistant's: its words and the token
that ends its turn (so the model learns to stop). Tokens are mapped to characters with the fast tokenizer's offsets;
a token holding any character of that range is trained (as transformers' ``{% generation %}`` masks do).
A template for which the rendered prefixes do not extend each other cannot be masked this way: that is an error.

:func:`tokenize_conversations` does the same for many conversations at a time, with the same results: each
rendering kind in one ``apply_chat_template`` call, every text in one tokenizer call (the fast tokenizer encodes a
batch on all cores); a conversation's last assistant turn, when it ends the conversation, is not rendered again
(its ``upto`` is the whole rendering).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from assets.common.models.chat_template import TemplateError, end_of_turn_after, render, render_many


@dataclass(frozen=True)
class TokenizedConversation:
    input_ids: list[int]
    assistant_masks: list[int]  # 1 = trained (assistant words and end-of-turn token), 0 = context
    text: str
    assistant_char_spans: list[tuple[int, int]]
    end_of_turn_token_positions: list[int]  # index in input_ids of each assistant turn's end-of-turn token


def assistant_end_of_turn(tokenizer: Any, chat_template: str | None = None) -> str:
    """The token that ends an assistant turn under this template (e.g. <|im_end|>, <|eot_id|>, <end_of_turn>)."""
    token = end_of_turn_after(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
                              chat_template=chat_template)
    token = token or tokenizer.eos_token
    if not token:
        raise TemplateError("the template writes no special token after an assistant message and the tokenizer has "
                            "no eos_token: the model could never learn to stop")
    return token


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict], chat_template: str | None = None,
                          end_of_turn: str | None = None) -> TokenizedConversation:
    """Render ``messages`` with the template, tokenize, and mark the assistant tokens."""
    end_of_turn = end_of_turn or assistant_end_of_turn(tokenizer, chat_template)
    full = render(tokenizer, messages, chat_template=chat_template)
    spans = []
    for i in _assistant_turns(messages):
        before = render(tokenizer, messages[:i], add_generation_prompt=True, chat_template=chat_template)
        upto = full if i == len(messages) - 1 else render(tokenizer, messages[: i + 1], chat_template=chat_template)
        spans.append(_assistant_span(i, before, upto, full, end_of_turn))
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    return _masked(encoding["input_ids"], encoding["offset_mapping"], full, spans)


def tokenize_conversations(tokenizer: Any, conversations: Sequence[Sequence[dict]], chat_template: str | None = None,
                           end_of_turn: str | None = None) -> list[TokenizedConversation]:
    """:func:`tokenize_conversation` of every conversation, in order, with the same results and errors (when several
    conversations fail, the first one's error), at a fraction of the cost: see the module docstring. The caller
    chooses the batch size (every conversation's token lists are held at once)."""
    end_of_turn = end_of_turn or assistant_end_of_turn(tokenizer, chat_template)
    conversations = [list(messages) for messages in conversations]
    if not conversations:
        return []
    try:
        turns = [_assistant_turns(messages) for messages in conversations]
        full = render_many(tokenizer, conversations, chat_template=chat_template)
        before = iter(render_many(tokenizer, [m[:i] for m, ts in zip(conversations, turns, strict=True) for i in ts],
                                  add_generation_prompt=True, chat_template=chat_template))
        upto = iter(render_many(tokenizer, [m[: i + 1] for m, ts in zip(conversations, turns, strict=True) for i in ts
                                            if i < len(m) - 1], chat_template=chat_template))
        spans = [[_assistant_span(i, next(before), full[k] if i == len(m) - 1 else next(upto), full[k], end_of_turn)
                  for i in ts] for k, (m, ts) in enumerate(zip(conversations, turns, strict=True))]
    except Exception:
        for messages in conversations:  # row by row, so the error raised is the first failing conversation's
            tokenize_conversation(tokenizer, messages, chat_template, end_of_turn)
        raise
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
                         return_token_type_ids=False)
    return [_masked(ids, offsets, text, row_spans) for ids, offsets, text, row_spans
            in zip(encoding["input_ids"], encoding["offset_mapping"], full, spans, strict=True)]


def token_digest(input_ids: Sequence[int], assistant_masks: Sequence[int]) -> str:
    """SHA-256 of a tokenized example: its token ids and which of them carry the loss."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(input_ids), list(assistant_masks)], separators=(",", ":")).encode())
    return digest.hexdigest()


def _assistant_turns(messages: Sequence[dict]) -> list[int]:
    return [i for i, message in enumerate(messages) if message["role"] == "assistant"]


def _assistant_span(i: int, before: str, upto: str, full: str, end_of_turn: str) -> tuple[int, int]:
    """The characters of assistant message ``i`` in ``full``: from the end of ``before`` (the conversation up to it,
    with the generation prompt) through its end-of-turn token in ``upto`` (the conversation through it)."""
    if not (upto.startswith(before) and full.startswith(upto)):
        raise TemplateError(
            f"message {i}: rendering the conversation up to this assistant turn is not a prefix of the whole "
            "rendering (the template rewrites earlier turns), so assistant tokens cannot be located"
        )
    stop = upto.rfind(end_of_turn, len(before))
    if stop < 0:
        raise TemplateError(f"message {i}: the template renders no '{end_of_turn}' after the assistant's words")
    return len(before), stop + len(end_of_turn)


def _masked(input_ids: Sequence[int], offsets: Sequence[tuple[int, int]], text: str,
            spans: list[tuple[int, int]]) -> TokenizedConversation:
    """Every token holding at least one character of a span is trained: a token straddling the start (e.g. " It"
    after a generation prompt ending in a space) carries the assistant's first word. A span's end-of-turn position
    is the last such token ending exactly where the span ends. (A plain loop: at ~400 tokens and 1-3 spans a row it
    is faster than numpy, whose arrays cost more to build from the offsets than the loop does.)"""
    masks = [0] * len(offsets)
    eot_positions = []
    for start, end in spans:
        eot_position = None
        for t, (s, e) in enumerate(offsets):
            if e > s and s < end and e > start:
                masks[t] = 1
                if e == end:
                    eot_position = t
        if eot_position is not None:
            eot_positions.append(eot_position)
    return TokenizedConversation(list(input_ids), masks, text, spans, eot_positions)
