"""Rule-based quality filters for the conversation table (no Dagster here).

``apply_filters`` runs a fixed sequence of rules over the conversation table and splits it into kept rows
and rejected rows. Each rule only sees the rows every earlier rule kept, so a rejected row carries the FIRST
rule it failed (``reason``) and a human-readable explanation (``detail``, which names the offending message
as ``messages[i]``, 0-based, where there is one). The rules, in order:

``empty``
    The conversation has no messages, no user message, no assistant message, a user/assistant message
    that is null or blank, or it ends on a user message that was never answered.
``truncated``
    (only with ``require_stop``) some generated message did not finish with ``"stop"`` (e.g. ``"length"``:
    the generator hit its token limit). A null ``finish_reasons`` list or a null entry counts as not
    ``"stop"``: completeness cannot be shown. An empty list has nothing to check and passes. The detail says
    which message was cut, the instruction or the response of which turn (``finish_reasons[k]`` is the k-th
    non-system message); :func:`truncated_messages` counts them.
``template_leak``
    A message (any role, system included) contains verbatim one of ``special_tokens`` (the teacher's special tokens,
    e.g. ``"<|im_start|>"``: the generator leaked its own template) or one of ``template_markers`` (the strings the
    student's chat template writes around messages, e.g. ``"<start_of_turn>"`` or ``"[INST]"``: a row that contains
    them would teach the student to write its own turn markers). Teacher and student differ once the teacher is
    not the model being fine-tuned; the detail says which list matched.
``length``
    Character counts, after stripping leading/trailing whitespace, of every user message (an
    "instruction") and every assistant message (a "response") must lie within the configured bounds.
    Checked in this order: instruction too short, instruction too long, response too short, response too long.
``repetition``
    Two Gopher-style repetition measures (Rae et al. 2021, "Scaling Language Models", appendix A), computed
    per user/assistant message; the first message over either threshold fails:

    * duplicate word n-gram character fraction: the message is split into words on whitespace; a word is
      "duplicated" when it lies inside a word n-gram (default n=3) that already occurred earlier in the same
      message. The measure is (characters of duplicated words) / (characters of all words), each word
      counted once. This is the ``duplicate_n_gram_char_frac`` of Gopher as implemented by e.g. datatrove's
      ``GopherRepetitionFilter``, minus its greedy skip-ahead (so overlapping repeats are counted by
      coverage). "a b c a b c" scores 0.5; a text with no repeated n-gram scores 0.
    * duplicate line fraction: among the message's non-blank lines that contain at least one letter or
      digit (so lines such as ``}`` or ``---`` that legitimately repeat in code and markdown are ignored),
      the fraction that are exact repeats (after stripping) of an earlier line: (lines - distinct lines) /
      lines. Gopher's ``dup_line_frac`` (threshold 0.30 in the paper).

The rules are a registry (:data:`RULES`, name -> function, in order): adding a rule is one function of
``(rows, messages, config)`` that returns ``(row, detail)`` of the failing rows, plus one line there.

Everything is computed with polars expressions: the messages are exploded once into a long table (one row
per message), every per-message measure is a column expression there, and the first failing message per
conversation is joined back. Output order equals input order, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from assets.common.data.rules import ROW as _ROW
from assets.common.data.rules import index_rows, no_failures, rule_verdicts, split_by_verdicts
from assets.common.data.schema import REJECTED_DETAIL, REJECTED_REASON

_MSG = "__filter_msg"
_ROLE = "__filter_role"
_CONTENT = "__filter_content"


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds for ``apply_filters``. Lengths are characters after stripping surrounding whitespace.

    ``min_*``/``max_*`` bounds are inclusive (a response of exactly ``min_response_chars`` passes); a ``None``
    max disables that bound. Repetition thresholds are strict: a fraction equal to the threshold passes;
    ``None`` disables that measure.
    """

    min_instruction_chars: int = 8
    max_instruction_chars: int | None = 4000
    min_response_chars: int = 16
    max_response_chars: int | None = 8000
    # Any finish_reason other than "stop" rejects the row as "truncated".
    require_stop: bool = True
    # Gopher duplicate word n-gram character fraction (see module docstring).
    repetition_ngram: int = 3
    max_duplicate_ngram_char_fraction: float | None = 0.3
    # Gopher duplicate line fraction over non-blank lines containing a letter or digit.
    max_duplicate_line_fraction: float | None = 0.3
    # Strings that must not appear verbatim in any message (chat-template leakage): the teacher's special tokens,
    # e.g. "<|im_start|>", and the student's template markers (what its chat template writes around messages).
    special_tokens: tuple[str, ...] = field(default=())
    template_markers: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("special_tokens", "template_markers"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"{name} must be a tuple of strings, not a single string")
            object.__setattr__(self, name, tuple(value))
            if any(not isinstance(tok, str) or tok == "" for tok in getattr(self, name)):
                raise ValueError(f"{name} must be non-empty strings, got {value!r}")
        for name in ("min_instruction_chars", "min_response_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for lo, hi in (
            ("min_instruction_chars", "max_instruction_chars"),
            ("min_response_chars", "max_response_chars"),
        ):
            if getattr(self, hi) is not None and getattr(self, hi) < getattr(self, lo):
                raise ValueError(f"{hi}={getattr(self, hi)} is below {lo}={getattr(self, lo)}")
        if self.repetition_ngram < 1:
            raise ValueError(f"repetition_ngram must be >= 1, got {self.repetition_ngram}")
        for name in ("max_duplicate_ngram_char_fraction", "max_duplicate_line_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] or None, got {value}")


@dataclass(frozen=True)
class FilterResult:
    """``kept``: input rows that passed, original columns, input order. ``rejected``: the other rows with
    ``reason``/``detail`` appended, input order. ``funnel``: one dict per rule in ``RULES`` order with
    ``rule``, ``rows_in``, ``rows_removed``, ``rows_out`` (``rows_out`` of a rule is ``rows_in`` of the next).
    """

    kept: pl.DataFrame
    rejected: pl.DataFrame
    funnel: list[dict[str, Any]]


# --------------------------------------------------------------------------------------------------------
# Per-message measures (expressions over the exploded long table)
# --------------------------------------------------------------------------------------------------------


def duplicate_ngram_char_fraction(texts: pl.Series, n: int) -> pl.Series:
    """Gopher duplicate word n-gram character fraction of each string (0.0 for null text or no words).

    Computed on one long table of words (one row per word, all texts stacked) with frame-wide shifts and
    ``is_first_distinct`` of the n-gram string per text; a shifted value is only used where it comes from
    the same text. (The same window functions evaluated per list inside ``list.eval`` are far slower.)
    """
    key, word = "__text", "__word"

    def same_text(k: int) -> pl.Expr:  # the word k rows later belongs to the same text
        return (pl.col(key).shift(-k) == pl.col(key)).fill_null(False)

    words = (
        pl.DataFrame({word: texts.cast(pl.Utf8)})
        .with_row_index(key)
        .select(key, pl.col(word).str.extract_all(r"\S+"))
        .explode(word)
        .filter(pl.col(word).is_not_null())
    )
    # A full n-gram starts at a word when the next n-1 words belong to the same text; it is a repeat when the
    # same n-gram occurred earlier in that text. Words contain no whitespace, so joining n of them with " "
    # is an exact n-gram key. (Each step is materialised: fusing them into one expression is much slower.)
    words = words.with_columns(
        pl.concat_str([pl.col(word).shift(-k) for k in range(n)], separator=" ").alias("__ngram"),
        pl.all_horizontal([pl.lit(True), *(same_text(k) for k in range(1, n))]).alias("__starts"),
    ).with_columns((pl.col("__starts") & ~pl.col("__ngram").is_first_distinct().over(key)).alias("__repeat"))
    # A word is duplicated when a repeated n-gram starting at most n-1 words earlier covers it (a repeat is a
    # full n-gram inside one text, so the shifted flags never reach into the next text).
    words = words.select(
        key,
        pl.col(word).str.len_chars().alias("__chars"),
        pl.any_horizontal(
            [
                pl.col("__repeat"),
                *(pl.col("__repeat").shift(k).fill_null(False) for k in range(1, n)),
            ]
        ).alias("__covered"),
    )
    per_text = words.group_by(key).agg(
        (pl.col("__chars").filter(pl.col("__covered")).sum() / pl.col("__chars").sum()).alias("fraction")
    )
    return (
        pl.DataFrame({key: pl.int_range(len(texts), eager=True, dtype=pl.UInt32)})
        .join(per_text, on=key, how="left", maintain_order="left")
        .get_column("fraction")
        .fill_nan(0.0)
        .fill_null(0.0)
        .alias(texts.name)
    )


def duplicate_line_fraction(text: pl.Expr) -> pl.Expr:
    """Fraction of non-blank, alphanumeric-bearing lines that repeat an earlier line (0.0 for no lines)."""
    lines = text.str.split("\n").list.eval(
        pl.element().str.strip_chars().filter(pl.element().str.contains(r"[\p{L}\p{N}]"))
    )
    total = lines.list.len()
    distinct = lines.list.n_unique()
    return pl.when(total > 0).then((total - distinct) / total).otherwise(0.0).fill_null(0.0)


def _fmt_fraction(expr: pl.Expr) -> pl.Expr:
    return expr.round(3).cast(pl.Utf8)


def _where() -> pl.Expr:
    return pl.format("(messages[{}])", pl.col(_MSG))


# --------------------------------------------------------------------------------------------------------
# Rules: each returns a frame (_ROW, detail) with one row per failing conversation
# --------------------------------------------------------------------------------------------------------


def _first_failure(long: pl.DataFrame, detail: pl.Expr) -> pl.DataFrame:
    """For each conversation, the detail of its first message (by position) where ``detail`` is not null."""
    return (
        long.select(_ROW, _MSG, detail.alias("detail"))
        .filter(pl.col("detail").is_not_null())
        .group_by(_ROW)
        .agg(pl.col("detail").sort_by(_MSG).first())
    )


def _empty_rule(rows: pl.DataFrame, long: pl.DataFrame, cfg: FilterConfig) -> pl.DataFrame:
    roles = pl.col("messages").list.eval(pl.element().struct.field("role"))
    non_system = pl.col("messages").list.eval(
        pl.element().filter(pl.element().struct.field("role") != "system").struct.field("role")
    )
    row_level = rows.select(
        _ROW,
        pl.when(pl.col("messages").is_null() | (pl.col("messages").list.len() == 0))
        .then(pl.lit("no messages"))
        .when(~roles.list.contains("user"))
        .then(pl.lit("no user message"))
        .when(~roles.list.contains("assistant"))
        .then(pl.lit("no assistant message"))
        .alias("row_detail"),
        non_system.list.last().alias("last_role"),
        pl.col("messages").list.len().alias("n_messages"),
    )
    blank = pl.col(_CONTENT).is_null() | (pl.col(_CONTENT).str.strip_chars() == "")
    message_level = _first_failure(
        long,
        pl.when(pl.col(_ROLE).is_null())
        .then(pl.format("message is null {}", _where()))
        .when(pl.col(_ROLE).is_in(["user", "assistant"]) & blank)
        .then(pl.format("{} message is empty {}", pl.col(_ROLE), _where())),
    ).rename({"detail": "message_detail"})
    out = row_level.join(message_level, on=_ROW, how="left").select(
        _ROW,
        pl.coalesce(
            "row_detail",
            "message_detail",
            pl.when(pl.col("last_role") == "user").then(
                pl.format("final user message has no response (messages[{}])", pl.col("n_messages") - 1)
            ),
        ).alias("detail"),
    )
    return out.filter(pl.col("detail").is_not_null())


def _truncated_rule(rows: pl.DataFrame, long: pl.DataFrame, cfg: FilterConfig) -> pl.DataFrame:
    if not cfg.require_stop:
        return no_failures(rows)
    fr = pl.col("finish_reasons")
    not_stop = fr.list.eval(pl.element().fill_null("<null>") != "stop")
    first_bad = not_stop.list.arg_max()
    # finish_reasons[k] belongs to the k-th generated (non-system) message: name it, so a report can say which
    # message hit the limit (see truncated_messages)
    generated = pl.col("messages").list.eval(
        pl.element().filter(pl.element().struct.field("role") != "system").struct.field("role"))
    role = generated.list.get(first_bad, null_on_oob=True)
    cut = pl.when(role == "user").then(pl.lit("instruction")).when(role == "assistant").then(pl.lit("response"))
    turn = generated.list.head(first_bad + 1).list.eval(pl.element() == "user").list.sum()
    detail = (
        pl.when(fr.is_null())
        .then(pl.lit("finish_reasons is null"))
        .when(not_stop.list.any())
        .then(
            pl.concat_str(
                pl.format(
                    "finish_reasons[{}] = '{}' (not 'stop')",
                    first_bad,
                    fr.list.get(first_bad, null_on_oob=True).fill_null("<null>"),
                ),
                pl.format(" in the {} of turn {}", cut, turn).fill_null(""),
            )
        )
    )
    return rows.select(_ROW, detail.alias("detail")).filter(pl.col("detail").is_not_null())


_CUT = r"\(not 'stop'\) in the (instruction|response) of turn \d+$"


def truncated_messages(rejected: pl.DataFrame) -> dict[str, int]:
    """How many ``truncated`` rejections name an instruction, a response, or no message (``unknown``: a null
    ``finish_reasons``, or one longer than the generated messages), from the rejected table's details."""
    details = rejected.filter(pl.col(REJECTED_REASON) == "truncated").get_column(REJECTED_DETAIL)
    kinds = details.str.extract(_CUT, 1).fill_null("unknown")
    counts = dict(kinds.value_counts().iter_rows())
    return {kind: int(counts.get(kind, 0)) for kind in ("instruction", "response", "unknown")}


def _template_leak_rule(rows: pl.DataFrame, long: pl.DataFrame, cfg: FilterConfig) -> pl.DataFrame:
    sources: dict[str, list[str]] = {}
    for token in cfg.special_tokens:
        sources.setdefault(token, []).append("teacher special token")
    for token in cfg.template_markers:
        sources.setdefault(token, []).append("student template marker")
    if not sources:
        return no_failures(long)
    content = pl.col(_CONTENT)
    leaked = pl.coalesce(
        [pl.when(content.str.contains(tok, literal=True)).then(pl.lit(f"{' and '.join(kinds)} '{tok}'"))
         for tok, kinds in sources.items()]
    )
    return _first_failure(
        long,
        pl.when(leaked.is_not_null()).then(pl.format("{} in {} message {}", leaked, pl.col(_ROLE), _where())),
    )


def _length_rule(rows: pl.DataFrame, long: pl.DataFrame, cfg: FilterConfig) -> pl.DataFrame:
    n = pl.col(_CONTENT).fill_null("").str.strip_chars().str.len_chars()
    checks: list[tuple[str, str, str, int | None, str]] = [
        ("user", "instruction", "<", cfg.min_instruction_chars, "min"),
        ("user", "instruction", ">", cfg.max_instruction_chars, "max"),
        ("assistant", "response", "<", cfg.min_response_chars, "min"),
        ("assistant", "response", ">", cfg.max_response_chars, "max"),
    ]
    long = long.with_columns(n.alias("__chars"))
    parts = []
    for rank, (role, label, op, bound, word) in enumerate(checks):
        if bound is None:
            continue
        chars = pl.col("__chars")
        fails = (chars < bound) if op == "<" else (chars > bound)
        detail = pl.when((pl.col(_ROLE) == role) & fails).then(
            pl.format(f"{label} {{}} chars {op} {word} {bound} {{}}", chars, _where())
        )
        parts.append(_first_failure(long, detail).with_columns(pl.lit(rank).alias("__rank")))
    if not parts:
        return no_failures(long)
    # A conversation failing several checks reports the earliest check in ``checks`` order.
    return pl.concat(parts).group_by(_ROW).agg(pl.col("detail").sort_by("__rank").first())


def _repetition_rule(rows: pl.DataFrame, long: pl.DataFrame, cfg: FilterConfig) -> pl.DataFrame:
    ngram_max, line_max = cfg.max_duplicate_ngram_char_fraction, cfg.max_duplicate_line_fraction
    if ngram_max is None and line_max is None:
        return no_failures(long)
    content = pl.col(_CONTENT).fill_null("")
    generated = long.filter(pl.col(_ROLE).is_in(["user", "assistant"]))
    measures = []
    if ngram_max is not None:
        measures.append(
            duplicate_ngram_char_fraction(generated[_CONTENT], cfg.repetition_ngram).alias("__ngram")
        )
    if line_max is not None:
        measures.append(duplicate_line_fraction(content).alias("__lines"))
    generated = generated.with_columns(measures)
    detail: pl.Expr | None = None
    if ngram_max is not None:
        frac = pl.col("__ngram")
        detail = pl.when(frac > ngram_max).then(
            pl.format(
                f"{{}} duplicate {cfg.repetition_ngram}-gram char fraction {{}} > max {ngram_max:g} {{}}",
                pl.col(_ROLE),
                _fmt_fraction(frac),
                _where(),
            )
        )
    if line_max is not None:
        frac = pl.col("__lines")
        condition, text = (
            frac > line_max,
            pl.format(
                f"{{}} duplicate line fraction {{}} > max {line_max:g} {{}}",
                pl.col(_ROLE),
                _fmt_fraction(frac),
                _where(),
            ),
        )
        detail = pl.when(condition).then(text) if detail is None else detail.when(condition).then(text)
    return _first_failure(generated, detail)


# --------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------


def _explode_messages(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per message: (_ROW, _MSG position, _ROLE, _CONTENT); conversations with no messages vanish."""
    exploded = (
        rows.select(_ROW, "messages")
        .filter(pl.col("messages").list.len() > 0)
        .explode("messages")
        .with_columns(pl.int_range(pl.len()).over(_ROW).alias(_MSG))
    )
    return exploded.select(
        _ROW,
        _MSG,
        pl.col("messages").struct.field("role").alias(_ROLE),
        pl.col("messages").struct.field("content").alias(_CONTENT),
    )


Rule = Callable[[pl.DataFrame, pl.DataFrame, "FilterConfig"], pl.DataFrame]

# The registry, in the order rows meet the rules (a rejected row carries the first rule it fails). A rule gets the
# indexed rows, the long table of messages and the config, and returns (row, detail) of the rows it fails.
RULES: dict[str, Rule] = {
    "empty": _empty_rule,
    "truncated": _truncated_rule,
    "template_leak": _template_leak_rule,
    "length": _length_rule,
    "repetition": _repetition_rule,
}


def apply_filters(df: pl.DataFrame, cfg: FilterConfig | None = None) -> FilterResult:
    """Split ``df`` into kept and rejected rows by the rules of :data:`RULES`, in order (see module docstring)."""
    split = split_by_verdicts(df, filter_verdicts(df, cfg), list(RULES))
    return FilterResult(kept=split.kept, rejected=split.rejected, funnel=split.funnel)


def filter_verdicts(df: pl.DataFrame, cfg: FilterConfig | None = None) -> pl.DataFrame:
    """Every row's verdict (:func:`~assets.common.data.rules.rule_verdicts`): its first failed rule and why. A row's
    verdict depends on its ``messages`` and ``finish_reasons`` alone."""
    cfg = cfg or FilterConfig()
    for column in ("messages", "finish_reasons"):
        if column not in df.columns:
            raise ValueError(f"apply_filters: missing column '{column}'; columns are {df.columns}")
    indexed = index_rows(df, "apply_filters")
    long = _explode_messages(indexed)
    # Every rule is evaluated on every row (cheap, vectorized); "first failing rule" is resolved by the verdicts,
    # and the funnel counts each rule on the rows that survived the rules before it.
    return rule_verdicts(df.height, {name: rule(indexed, long, cfg) for name, rule in RULES.items()})
