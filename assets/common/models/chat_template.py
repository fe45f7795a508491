"""Chat-template utilities shared by generation and training (no Dagster here).

The chat template is part of the model: the one a model ships in ``chat_template.jinja`` /
``tokenizer_config.json`` is the one used to generate its data, to train it and to serve it, byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from assets.common.data.user_files import read_user_json, read_user_text

SENTINEL = "MagpieSentinelQuery7f3a9c"  # plain ASCII: survives templates that trim or escape content


class TemplateError(ValueError):
    """The chat template cannot be used as needed; the message says why and what to set instead."""


def render(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool = False,
           chat_template: str | None = None) -> str:
    try:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
            chat_template=chat_template,
        )
    except Exception as error:  # jinja raises its own exception types (e.g. raise_exception in the template)
        roles = [m["role"] for m in messages]
        raise TemplateError(f"the chat template failed to render roles {roles}: {error}") from error


def render_many(tokenizer: Any, conversations: Sequence[Sequence[dict]], add_generation_prompt: bool = False,
                chat_template: str | None = None) -> list[str]:
    """:func:`render` of each conversation, in one ``apply_chat_template`` call (its batch form renders each
    conversation as the single form does). A failure, or an empty conversation (which the batch form would render
    instead of rejecting), renders them one by one, so the first failing conversation raises its own error."""
    batch = [list(messages) for messages in conversations]
    if not batch:
        return []
    if all(batch):
        try:
            return list(tokenizer.apply_chat_template(
                batch, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=chat_template))
        except Exception:  # re-rendered one by one below: the failing conversation raises its own error
            pass
    return [render(tokenizer, messages, add_generation_prompt, chat_template) for messages in batch]


def special_token_strings(tokenizer: Any) -> list[str]:
    """Special token strings (longer than one character), sorted: the tokenizer's named special tokens and every
    added token marked special. Added tokens that are not special are ordinary text pieces matched whole (Gemma's
    newline, tab and space runs, HTML tags): they belong in answers and are not template tokens."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens = set(tokenizer.all_special_tokens) | {t.content for t in added.values() if getattr(t, "special", True)}
    return sorted(t for t in tokens if t and len(t) > 1)


def first_special_token(tokenizer: Any, text: str) -> str | None:
    """The first special token in ``text`` (as the tokenizer splits it), or None."""
    special = set(special_token_strings(tokenizer))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for token in tokenizer.convert_ids_to_tokens(ids):
        if token in special:
            return token
    return None


def end_of_turn_after(tokenizer: Any, messages: Sequence[dict], chat_template: str | None = None) -> str | None:
    """The special token the template writes right after the last message's text (what ends that turn).

    The last message's content is replaced by a sentinel, and a user turn is appended after an assistant turn,
    since some templates only close the final turn when another follows.
    """
    probe = [*messages[:-1], {"role": messages[-1]["role"], "content": SENTINEL}]
    if probe[-1]["role"] == "assistant":
        probe.append({"role": "user", "content": "next"})
    text = render(tokenizer, probe, chat_template=chat_template)
    if text.count(SENTINEL) != 1:
        raise TemplateError(f"the {messages[-1]['role']} message appears {text.count(SENTINEL)} times in the "
                            "rendered template (expected once)")
    return first_special_token(tokenizer, text.split(SENTINEL)[1])


def read_chat_template(model_dir: str | Path) -> str | None:
    """The template a model directory ships, exactly as stored (chat_template.jinja wins, as in transformers)."""
    root = Path(model_dir)
    if (root / "chat_template.jinja").exists():
        return read_user_text(root / "chat_template.jinja", TemplateError)
    config = root / "tokenizer_config.json"
    if config.exists():
        loaded = read_user_json(config, TemplateError)
        template = loaded.get("chat_template") if isinstance(loaded, dict) else None
        return template if isinstance(template, str) else None
    return None



def template_difference(first: str | None, second: str | None) -> tuple[int, str, str] | None:
    """None when the two templates are byte-identical; else where they first differ: the character index and the
    next 40 characters of each (a missing template reads as empty)."""
    if first == second:
        return None
    a, b = first or "", second or ""
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return at, a[at:at + 40], b[at:at + 40]
