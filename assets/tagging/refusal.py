"""Refusals: a transparent phrase rule (no Dagster here).

A row is flagged when the opening of any assistant message (its first ``OPENING_CHARS`` characters) matches one of
:data:`REFUSAL_PATTERNS`, the stock phrases assistants refuse with ("I'm sorry, but I can't ...", "As an AI language
model, I cannot ..."). The judge's own ``refusal`` label is the other half of the flag; a refusal is flagged, never
dropped here: the mixture decides how many to keep.
"""

from __future__ import annotations

import polars as pl

OPENING_CHARS = 300
_CANT = r"(?:can ?not|can't|can’t|won't|won’t|will not|am not able to|am unable to|'m not able to|'m unable to)"
_DO = (r"(?:help|assist|provide|comply|fulfil|fulfill|do (?:that|this)|create|write|generate|answer|give|share"
       r"|engage|support|participate|produce|offer)")
REFUSAL_PATTERNS: tuple[str, ...] = (
    rf"\b(?:i'm|i am|i’m) (?:sorry|afraid),? (?:but )?i {_CANT}",
    rf"\b(?:sorry|i apologi[sz]e),? (?:but )?i {_CANT}",
    rf"\bi {_CANT} {_DO}\b",
    rf"\bi(?:'m| am|’m) (?:not able|unable) to {_DO}\b",
    r"\bas an ai(?: language model| assistant)?,? i (?:cannot|can't|can’t|do not|don't|won't|am not able)",
    r"\b(?:that|this) (?:request|question) (?:is|goes) (?:against|beyond|outside) (?:my|the) (?:guidelines|policy"
    r"|policies|principles)",
    r"\bi must (?:decline|refuse)\b",
)
_ANY = "(?i)" + "|".join(f"(?:{p})" for p in REFUSAL_PATTERNS)


def refusal_phrase_expr() -> pl.Expr:
    """Per row: the first refusal phrase in the opening of an assistant message, or null."""
    openings = pl.col("messages").list.eval(
        pl.element().filter(pl.element().struct.field("role") == "assistant").struct.field("content")
        .str.slice(0, OPENING_CHARS).str.extract(f"({_ANY})", 1)
    )
    return openings.list.drop_nulls().list.first()


def refusal_phrases(df: pl.DataFrame) -> pl.Series:
    return df.select(refusal_phrase_expr().alias("refusal_phrase"))["refusal_phrase"]
