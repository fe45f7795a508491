"""The chat-template registry (no Dagster here): Jinja files beside this module and their markers, in one table.

A base model has no chat template, so one is chosen once, on the student (``base_model`` config
``chat_template``), and everything downstream (mixture, training, evaluation, serving) uses that one, byte for
byte. A choice is one of:

- a registry name (``chatml``, ``gemma``, ``llama3``): the file below and the markers it writes;
- a path to a ``.jinja`` file: its markers are found by rendering a user/assistant exchange (special-token-like
  strings ``<...>`` / ``<|...|>`` and the tokenizer's own special tokens that it writes);
- ``tokenizer``: keep the model's own template (an instruct model's).

Every template writes ``bos_token`` first when the model has one that is not itself a turn marker: the template is
rendered and tokenized without adding special tokens (as generation, training and vLLM's chat path do), and a
model pretrained with ``<bos>`` at the start of every text (Gemma) reads text without it badly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from assets.common.data.storage import sha256_text
from assets.common.data.user_files import read_user_json, read_user_text
from assets.common.models.chat_template import TemplateError, read_chat_template, render, special_token_strings

TEMPLATE_DIR = Path(__file__).resolve().parent
KEEP_TOKENIZER = "tokenizer"  # the choice that keeps the model's own template
CHAT_MARKERS_FILE = "chat_markers.json"  # written into a prepared student directory: template, markers, their ids


@dataclass(frozen=True)
class RegisteredTemplate:
    file: str  # beside this module
    markers: tuple[str, ...]  # the turn markers it writes (besides bos_token), each meant to be one special token
    end_of_turn: str  # the marker that ends an assistant turn: the model's stop token
    description: str


REGISTRY: dict[str, RegisteredTemplate] = {
    "chatml": RegisteredTemplate(
        "chatml.jinja", ("<|im_start|>", "<|im_end|>"), "<|im_end|>",
        "ChatML (SmolLM2, Qwen): <|im_start|>role\\n...<|im_end|>\\n; system messages as their own turn"),
    "gemma": RegisteredTemplate(
        "gemma.jinja", ("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>",
        "Gemma's turn format: <bos><start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n; a system "
        "message is prefixed to the first user turn; contents trimmed"),
    "llama3": RegisteredTemplate(
        "llama3.jinja", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>",
        "Llama 3: <|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>; contents trimmed"),
}

_MARKER_PATTERN = re.compile(r"<\|[^<>|\s]+\|>|</?[A-Za-z_][^<>\s]*>")
_USER, _ASSISTANT, _NEXT = "TemplateProbeUser4e1d", "TemplateProbeAssistant9b2c", "TemplateProbeNext0a7f"


class TemplateChoiceError(ValueError):
    """The configured chat template cannot be used; the message names the config field or file and the fix."""


@dataclass(frozen=True)
class ChosenTemplate:
    name: str  # the registry name, "tokenizer", or the file's name
    source: str  # "registry:<file>", "tokenizer:<model dir>", "file:<path>"
    text: str
    markers: tuple[str, ...] | None = None  # declared by the registry; None: found by rendering
    end_of_turn: str | None = None

    @property
    def sha256(self) -> str:
        return sha256_text(self.text)


def registry_names() -> list[str]:
    return sorted(REGISTRY)


def _choices_hint(field: str) -> str:
    return (f"Set {field} to a registry name ({', '.join(registry_names())}), a path to a .jinja file, or "
            f"'{KEEP_TOKENIZER}' to keep the model's own template.")


def registered_template(name: str) -> ChosenTemplate:
    entry = REGISTRY[name]
    path = TEMPLATE_DIR / entry.file
    return ChosenTemplate(name=name, source=f"registry:{entry.file}", text=path.read_text(encoding="utf-8"),
                          markers=entry.markers, end_of_turn=entry.end_of_turn)


def choose_template(choice: str, model_dir: str | Path, field: str = "base_model config `chat_template`"
                    ) -> ChosenTemplate:
    """The template ``choice`` names (see the module docstring). ``field`` names the setting in error messages."""
    if choice == KEEP_TOKENIZER:
        text = read_chat_template(model_dir)
        if not text:
            raise TemplateChoiceError(
                f"{field} is '{KEEP_TOKENIZER}', but {model_dir} has no chat template (no chat_template.jinja, no "
                f"'chat_template' in tokenizer_config.json): it is a base model. {_choices_hint(field)}")
        return ChosenTemplate(name=KEEP_TOKENIZER, source=f"tokenizer:{model_dir}", text=text)
    if choice in REGISTRY:
        return registered_template(choice)
    path = Path(choice).expanduser()
    if choice.endswith(".jinja") or path.is_file():
        if not path.is_file():
            raise TemplateChoiceError(f"{field}: {path}: no such file. {_choices_hint(field)}")
        return ChosenTemplate(name=path.name, source=f"file:{path.resolve()}",
                              text=read_user_text(path, TemplateChoiceError))
    raise TemplateChoiceError(f"{field}: unknown chat template {choice!r}. The registry has: "
                              f"{', '.join(registry_names())}. {_choices_hint(field)}")


@dataclass(frozen=True)
class TemplateMarkers:
    """What a template writes around the messages: its turn markers and the one that ends an assistant turn."""

    markers: tuple[str, ...]  # in order of first appearance in a rendered exchange (the opening bos_token
    # excluded)
    end_of_turn: str


def _find_markers(text: str, known_special: Sequence[str]) -> list[tuple[int, str]]:
    found = {m.start(): m.group() for m in _MARKER_PATTERN.finditer(text)}
    for token in known_special:
        start = text.find(token)
        while start >= 0:
            if not any(s <= start < s + len(t) for s, t in found.items()):
                found[start] = token
            start = text.find(token, start + len(token))
    return sorted(found.items())


def template_markers(tokenizer: Any, template: ChosenTemplate) -> TemplateMarkers:
    """Check ``template`` renders a user/assistant exchange usably with ``tokenizer``, and return its markers.

    Usable: the user's and the assistant's words each appear once, in order; the rendering up to the generation
    prompt is a prefix of the rendering with the answer, which is a prefix of the rendering with a next turn (so
    assistant tokens can be located for the loss mask); and a marker follows the assistant's words (the
    end-of-turn token the model learns to stop on). Raises :class:`TemplateChoiceError` naming the template.
    """
    where = f"chat template {template.source}"
    exchange = [{"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSISTANT}]
    try:
        prompt = render(tokenizer, exchange[:1], add_generation_prompt=True, chat_template=template.text)
        answered = render(tokenizer, exchange, chat_template=template.text)
        followed = render(tokenizer, [*exchange, {"role": "user", "content": _NEXT}], add_generation_prompt=True,
                          chat_template=template.text)
    except TemplateError as error:
        raise TemplateChoiceError(f"{where} does not render a user/assistant exchange: {error}") from error
    counts = {word: answered.count(word) for word in (_USER, _ASSISTANT)}
    if counts != {_USER: 1, _ASSISTANT: 1} or answered.index(_USER) > answered.index(_ASSISTANT):
        raise TemplateChoiceError(f"{where} does not render a user/assistant exchange: the user's and the "
                                  f"assistant's words should each appear once, in order; got {answered!r}")
    if not (answered.startswith(prompt) and followed.startswith(answered)):
        raise TemplateChoiceError(
            f"{where}: rendering a conversation turn by turn does not extend the previous rendering (the template "
            "rewrites earlier turns, or its generation prompt is not the start of the assistant's turn), so the "
            "assistant's tokens cannot be located for the loss mask")
    found = _find_markers(followed, special_token_strings(tokenizer))
    bos = tokenizer.bos_token
    if bos and found and found[0] == (0, bos) and [t for _, t in found].count(bos) == 1:
        # the text's opening bos_token is not a turn marker (unless the template writes it at every turn)
        found = found[1:]
    markers = tuple(dict.fromkeys(token for _, token in found))
    answer_end, next_start = followed.index(_ASSISTANT) + len(_ASSISTANT), followed.index(_NEXT)
    after_answer = [token for start, token in found if answer_end <= start < next_start]
    if template.markers is not None:
        missing = [m for m in template.markers if m not in markers]
        if missing or template.end_of_turn not in after_answer[:1]:
            raise TemplateChoiceError(f"{where}: the registry says it writes {list(template.markers)} and ends an "
                                      f"assistant turn with {template.end_of_turn!r}; rendered {followed!r}")
        return TemplateMarkers(template.markers, template.end_of_turn)
    if not after_answer:
        raise TemplateChoiceError(
            f"{where} writes no end-of-turn marker after the assistant's words (rendered {answered!r}): the model "
            "could never learn to stop. Write a special-token-like marker (such as <|im_end|> or <end_of_turn>) "
            "right after each message.")
    return TemplateMarkers(markers, after_answer[0])


# ---- the record a prepared student directory carries -------------------------------------------------------
@dataclass(frozen=True)
class MarkerToken:
    token: str
    id: int
    added: bool  # a new token: its embedding rows were created for it (initialised to the mean of the others)
    untrained_suspect: bool  # existed, but the original model ships no template writing it: never trained as a
    # turn marker (e.g. gemma-3-270m base's <start_of_turn>/<end_of_turn>, whose rows were never trained)


@dataclass(frozen=True)
class ChatMarkers:
    """``chat_markers.json`` in a prepared student directory: the template and the token ids training needs."""

    template_name: str
    template_source: str
    template_sha256: str
    end_of_turn: str
    end_of_turn_id: int
    text_end: str | None  # the original tokenizer's EOS: the token the base model emits where a text ends
    text_end_id: int | None
    markers: tuple[MarkerToken, ...]
    original_content_hash: str
    special_tokens: tuple[str, ...] = ()  # the student's named special tokens and markers: never in training text

    @property
    def rows_to_initialise(self) -> list[int]:
        """Ids whose embedding rows were never trained as turn markers (added, or existing but suspect)."""
        return [m.id for m in self.markers if m.added or m.untrained_suspect]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ChatMarkers:
        return cls(**{**data, "markers": tuple(MarkerToken(**m) for m in data["markers"]),
                      "special_tokens": tuple(data.get("special_tokens", ()))})


def read_chat_markers(model_dir: str | Path) -> ChatMarkers | None:
    """The record of a prepared student directory, or None for any other model directory."""
    path = Path(model_dir) / CHAT_MARKERS_FILE
    if not path.is_file():
        return None
    data = read_user_json(path, TemplateError)
    try:
        return ChatMarkers.from_dict(data)
    except (TypeError, KeyError, AttributeError) as error:
        raise TemplateError(f"{path}: not a chat-markers record ({type(error).__name__}: {error}); it is written "
                            "when base_model prepares the student: delete the directory and materialize base_model "
                            "again") from None
