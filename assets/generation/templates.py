"""Magpie pre-query templates derived from a tokenizer's own chat template (no Dagster here).

The pre-query template is everything the chat template renders before the text of a user message. It is found
by rendering a conversation whose user message is a sentinel string and cutting right before the sentinel, so any
chat model works without a hand-written per-model template. The cut is checked: the sentinel must appear exactly
once, and the prefix must not depend on what the user message says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from training.chat_template import SENTINEL, TemplateError, first_special_token, render

SENTINEL_ALT = "MagpieSentinelOther51d2e8"


@dataclass(frozen=True)
class PreQuery:
    """Where a new user message starts, and how a user turn ends."""

    prefix: str  # rendered text before the user's words
    end_of_turn: str | None  # the special token that closes a user turn (e.g. <|im_end|>, <|eot_id|>)


def _cut(tokenizer: Any, history: Sequence[dict], sentinel: str, chat_template: str | None) -> tuple[str, str]:
    text = render(tokenizer, [*history, {"role": "user", "content": sentinel}], chat_template=chat_template)
    count = text.count(sentinel)
    if count != 1:
        raise TemplateError(
            f"the user message appears {count} times in the rendered template (expected once); the pre-query "
            "prefix cannot be cut cleanly. Set `pre_query_template` explicitly in the generation config."
        )
    head, tail = text.split(sentinel)
    return head, tail


def derive_pre_query(tokenizer: Any, history: Sequence[dict] = (), chat_template: str | None = None) -> PreQuery:
    """The text a chat template renders before a user message that follows ``history``.

    ``history`` may hold a system message and earlier turns (multi-turn Magpie): the prefix then carries them.
    """
    head, tail = _cut(tokenizer, history, SENTINEL, chat_template)
    head_alt, _ = _cut(tokenizer, history, SENTINEL_ALT, chat_template)
    if head != head_alt:
        raise TemplateError(
            "the text before the user message changes with the message's content, so there is no fixed "
            "pre-query prefix. Set `pre_query_template` explicitly in the generation config."
        )
    if history and history[-1]["role"] == "assistant":
        # The prefix must extend the rendered history, or the model would be conditioned on different text.
        rendered_history = render(tokenizer, history, chat_template=chat_template)
        if not head.startswith(rendered_history.rstrip()):
            raise TemplateError("the rendered conversation does not start with the rendered history; "
                                "the template rewrites earlier turns, which Magpie multi-turn cannot use")
    return PreQuery(prefix=head, end_of_turn=first_special_token(tokenizer, tail))


def stop_token_ids(tokenizer: Any, pre_query: PreQuery) -> list[int]:
    """Token ids that end a turn: the end-of-turn token of the template plus the tokenizer's EOS."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if pre_query.end_of_turn:
        ids.add(int(tokenizer.convert_tokens_to_ids(pre_query.end_of_turn)))
    return sorted(ids)
