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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from assets.common.models.chat_template import TemplateError, end_of_turn_after, render


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
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True, chat_template=chat_template)
        upto = render(tokenizer, messages[: i + 1], chat_template=chat_template)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise TemplateError(
                f"message {i}: rendering the conversation up to this assistant turn is not a prefix of the whole "
                "rendering (the template rewrites earlier turns), so assistant tokens cannot be located"
            )
        turn = upto[len(before):]
        stop = turn.rfind(end_of_turn)
        if stop < 0:
            raise TemplateError(f"message {i}: the template renders no '{end_of_turn}' after the assistant's words")
        spans.append((len(before), len(before) + stop + len(end_of_turn)))

    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    masks = [0] * len(input_ids)
    eot_positions = []
    for start, end in spans:
        eot_position = None
        for t, (s, e) in enumerate(encoding["offset_mapping"]):
            # every token holding at least one character of the span: a token straddling the start (e.g. " It"
            # after a generation prompt ending in a space) carries the assistant's first word and must be trained
            if e > s and s < end and e > start:
                masks[t] = 1
                if e == end:
                    eot_position = t
        if eot_position is not None:
            eot_positions.append(eot_position)
    return TokenizedConversation(input_ids, masks, full, spans, eot_positions)
