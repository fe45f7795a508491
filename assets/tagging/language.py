"""Language identification of instructions and responses (no Dagster here).

Lingua (``lingua-language-detector``): n-gram models of 75 languages shipped inside its wheel (nothing is downloaded;
the detector loads them from the package), accurate on short text, which instructions are. Code blocks and inline
code are removed first (code is not a natural language); a text with fewer than ``min_letters`` letters left is
``und`` (undetermined), and so is one whose best language is not ahead of the next by ``MIN_RELATIVE_DISTANCE``
(lingua's own uncertainty cut-off): among 75 languages a word or two is often closer to a rare one ("Hello" is
Sotho, "Yes." Tsonga). Codes are ISO 639-1 (``en``, ``de``, ``zh``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import polars as pl

UNDETERMINED = "und"
MIN_RELATIVE_DISTANCE = 0.05
_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.DOTALL)
_LETTER = re.compile(r"[^\W\d_]")


@lru_cache(maxsize=1)
def _detector():
    from lingua import LanguageDetectorBuilder

    # all languages, high-accuracy mode: ~10 s and ~1 GB the first time (the models are read from the wheel)
    return LanguageDetectorBuilder.from_all_languages().with_minimum_relative_distance(MIN_RELATIVE_DISTANCE).build()


def prose(text: str | None) -> str:
    """``text`` without fenced or inline code."""
    return _CODE.sub(" ", text or "")


def detect_languages(texts: Sequence[str | None], min_letters: int = 6) -> list[str]:
    """The ISO 639-1 code of each text's language, or ``und``."""
    cleaned = [prose(t) for t in texts]
    todo = sorted({t for t in cleaned if len(_LETTER.findall(t)) >= min_letters})
    found = dict(zip(todo, _detector().detect_languages_in_parallel_of(todo), strict=True)) if todo else {}
    return [_code(found.get(t)) for t in cleaned]


def _code(language) -> str:
    return language.iso_code_639_1.name.lower() if language is not None else UNDETERMINED


def language_columns(df: pl.DataFrame, min_letters: int = 6) -> pl.DataFrame:
    """``instruction_language`` (of the user turns, joined) and ``response_language`` (of the assistant turns) of
    every row of a conversation table."""
    texts = df.select(
        *(pl.col("messages").list.eval(pl.element().filter(pl.element().struct.field("role") == role)
                                       .struct.field("content")).list.join("\n\n").alias(role)
          for role in ("user", "assistant")))
    return pl.DataFrame({
        "instruction_language": detect_languages(texts["user"].to_list(), min_letters),
        "response_language": detect_languages(texts["assistant"].to_list(), min_letters),
    }, schema={"instruction_language": pl.Utf8, "response_language": pl.Utf8})
