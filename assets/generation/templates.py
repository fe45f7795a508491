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

from assets.common.models.chat_template import SENTINEL, TemplateError, first_special_token, render

SENTINEL_ALT = "MagpieSentinelOther51d2e8"


@dataclass(frozen=True)
class PreQuery:
    """Where a new user message starts, and how a user turn ends."""

    prefix: str  # rendered text before the user's words
    end_of_turn: str | None  # the special token that closes a user turn (e.g. <|im_end|>, <|eot_id|>)


def _text_parts(messages: Sequence[dict]) -> list[dict]:
    """The same messages with string content given as one text part, the form multimodal templates iterate over."""
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m.get("content"), str) else m
            for m in messages]


def _render(tokenizer: Any, messages: Sequence[dict], chat_template: str | None, parts: bool,
            add_generation_prompt: bool = False) -> str:
    return render(tokenizer, _text_parts(messages) if parts else messages, add_generation_prompt=add_generation_prompt,
                  chat_template=chat_template)


def _cut(tokenizer: Any, history: Sequence[dict], sentinel: str, chat_template: str | None, parts: bool = False,
         add_generation_prompt: bool = False) -> tuple[str, str]:
    text = _render(tokenizer, [*history, {"role": "user", "content": sentinel}], chat_template, parts,
                   add_generation_prompt)
    count = text.count(sentinel)
    if count != 1:
        raise TemplateError(
            f"the user message appears {count} times in the rendered template (expected once); the pre-query "
            "prefix cannot be cut cleanly. Set `pre_query_template` explicitly in the generation config."
        )
    head, tail = text.split(sentinel)
    return head, tail


def _cut_any_form(tokenizer: Any, history: Sequence[dict], chat_template: str | None) -> tuple[str, str, bool]:
    """Cut with string content, or, when the template cannot render that, with content as a list of text parts.

    Multimodal templates (Idefics3, SmolVLM, LLaVA-NeXT) only read ``content`` as a list of typed parts: given a
    string they drop it (the sentinel appears 0 times) or fail. The same text as one text part renders as text.
    """
    try:
        return (*_cut(tokenizer, history, SENTINEL, chat_template), False)
    except TemplateError as error:
        try:
            return (*_cut(tokenizer, history, SENTINEL, chat_template, parts=True), True)
        except TemplateError:
            pass
        roles = [m["role"] for m in history]
        if "system" in roles:
            raise TemplateError(
                f"{error}. The chat template cannot render a user message after {roles}; if it does not support "
                "system messages, configure Magpie without system prompts (`system_prompts`), or set "
                "`pre_query_template` explicitly in the generation config."
            ) from error
        raise


def derive_pre_query(tokenizer: Any, history: Sequence[dict] = (), chat_template: str | None = None) -> PreQuery:
    """The text a chat template renders before a user message that follows ``history``.

    ``history`` may hold a system message and earlier turns (multi-turn Magpie): the prefix then carries them.
    """
    head, tail, parts = _cut_any_form(tokenizer, history, chat_template)
    head_alt, _ = _cut(tokenizer, history, SENTINEL_ALT, chat_template, parts)
    if head != head_alt:
        raise TemplateError(
            "the text before the user message changes with the message's content, so there is no fixed "
            "pre-query prefix. Set `pre_query_template` explicitly in the generation config."
        )
    if history and history[-1]["role"] == "assistant":
        # The prefix must extend the rendered history, or the model would be conditioned on different text. Only
        # the last assistant turn is exempt: templates render a final assistant turn differently from one a user
        # message follows (an empty <think></think> block, <|return|> instead of <|end|>, a trailing EOS), so the
        # prefix must extend everything rendered before it.
        earlier = _render(tokenizer, history[:-1], chat_template, parts).rstrip() if len(history) > 1 else ""
        if tokenizer.eos_token and earlier.endswith(tokenizer.eos_token):
            earlier = earlier[: -len(tokenizer.eos_token)].rstrip()
        if not head.startswith(earlier):
            raise TemplateError("the rendered conversation does not start with the rendered history; "
                                "the template rewrites earlier turns, which Magpie multi-turn cannot use")
    end_of_turn = first_special_token(tokenizer, tail)
    if end_of_turn is None:
        # Templates that close a user turn only by opening the assistant's (DeepSeek's <｜Assistant｜>, GLM's
        # <|assistant|>) write nothing after the user's words without the generation prompt.
        try:
            _, tail = _cut(tokenizer, history, SENTINEL, chat_template, parts, add_generation_prompt=True)
        except TemplateError:
            tail = ""
        end_of_turn = first_special_token(tokenizer, tail)
    return PreQuery(prefix=head, end_of_turn=end_of_turn)


def stop_token_ids(tokenizer: Any, pre_query: PreQuery) -> list[int]:
    """Token ids that end a turn: the end-of-turn token of the template plus the tokenizer's EOS."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if pre_query.end_of_turn:
        ids.add(int(tokenizer.convert_tokens_to_ids(pre_query.end_of_turn)))
    return sorted(ids)
