"""An independent re-check for eval-set leakage (no Dagster here).

It shares no code with :mod:`assets.dedup.decontam` (no numba kernels, no rolling hashes, no MinHash): plain
Python normalization with ``unicodedata`` and ``re``, a set of eval word n-grams, and substring search for eval
texts shorter than n words. It is slower, and that is its point: the blocking asset check that gates training
must not trust the code path that removed the rows.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class Leak:
    conversation_id: str
    role: str
    benchmark: str
    item_id: str
    evidence: str


def find_leaks(conversations: pl.DataFrame, eval_sets: pl.DataFrame, n: int = 13, min_words: int = 4,
               limit: int = 20) -> list[Leak]:
    """Training messages (user and assistant) that contain an eval n-gram, or a whole eval text shorter than n
    words (at least ``min_words``), after normalization. Returns at most ``limit`` leaks."""
    ngrams: dict[tuple[str, ...], tuple[str, str]] = {}
    short: list[tuple[str, str, str]] = []
    for benchmark, item_id, text in eval_sets.select("benchmark", "item_id", "text").iter_rows():
        words = _normalize(text).split(" ")
        if len(words) >= n:
            for i in range(len(words) - n + 1):
                ngrams.setdefault(tuple(words[i:i + n]), (benchmark, item_id))
        elif len(words) >= min_words:
            short.append((f" {' '.join(words)} ", benchmark, item_id))
    leaks: list[Leak] = []
    for conversation_id, messages in conversations.select("conversation_id", "messages").iter_rows():
        for message in messages:
            if message["role"] not in ("user", "assistant"):
                continue
            leak = _first_leak(_normalize(message["content"]), ngrams, short, n)
            if leak:
                leaks.append(Leak(conversation_id, message["role"], *leak))
                if len(leaks) >= limit:
                    return leaks
                break
    return leaks


def _first_leak(text: str, ngrams: dict, short: Iterable[tuple[str, str, str]], n: int) -> tuple | None:
    words = text.split(" ")
    for i in range(len(words) - n + 1):
        hit = ngrams.get(tuple(words[i:i + n]))
        if hit:
            return (*hit, " ".join(words[i:i + n]))
    padded = f" {text} "
    for needle, benchmark, item_id in short:
        if needle in padded:
            return benchmark, item_id, needle.strip()
    return None
