"""Language identification: the default detector on the language planted set (floors = benchmarks/language_id.py's
figures less a small margin), ``und`` for code and short texts, determinism, and the Polars preprocessing being the
regexes it replaced."""

from __future__ import annotations

import random
import re
import sys
import unicodedata
from importlib import resources

import polars as pl
import pytest
import yaml

from assets.common.text.language import UNDETERMINED, detect_languages, letter_count, prose
from assets.tagging.config import TaggingConfig

PLANTED = yaml.safe_load((resources.files("assets.tagging") / "language_planted.yaml").read_text(encoding="utf-8"))
# measured with fastText (benchmarks/language_id.py): 218/220 Latin-script texts (one nl, one sv miss), 132/132 in the
# other scripts; floors leave room for about three more misses per group, and two per language
GROUPS = {"latin": (("en", "de", "fr", "es", "it", "pt", "nl", "pl", "tr", "sv"), 0.97),
          "other scripts": (("ru", "zh", "ja", "ko", "ar", "hi"), 0.97)}
PER_LANGUAGE_FLOOR = 0.9


@pytest.fixture(scope="module")
def found() -> dict[str, list[str]]:
    """The planted set detected in one call, languages mixed (as a table's column is)."""
    codes = iter(detect_languages([t for texts in PLANTED.values() for t in texts]))
    return {lang: [next(codes) for _ in texts] for lang, texts in PLANTED.items()}


def test_the_planted_set_covers_sixteen_languages_and_undetermined_texts():
    assert sorted(PLANTED) == sorted([*GROUPS["latin"][0], *GROUPS["other scripts"][0], UNDETERMINED])
    assert all(len(texts) >= 20 for texts in PLANTED.values())


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_default_detector_reaches_the_measured_accuracy_per_group(found, group):
    languages, floor = GROUPS[group]
    hits = [f == lang for lang in languages for f in found[lang]]
    assert sum(hits) / len(hits) >= floor, {lang: found[lang] for lang in languages}
    for lang in languages:
        assert sum(f == lang for f in found[lang]) / len(found[lang]) >= PER_LANGUAGE_FLOOR, (lang, found[lang])


def test_code_only_and_too_short_texts_are_undetermined(found):
    assert found[UNDETERMINED] == [UNDETERMINED] * len(PLANTED[UNDETERMINED])
    assert detect_languages([None, "", "```\nprint('hello world, how are you today')\n```"]) == [UNDETERMINED] * 3
    # six letters (code removed) is the default floor: five are undetermined, six go to the detector
    assert detect_languages(["Hallo 123 `abcdef`", "Tschüß 42"], detector=lambda texts: ["de"] * len(texts)) == [
        UNDETERMINED, "de"]


def test_detection_is_deterministic_and_independent_of_order_and_repeats():
    texts = [t for lang, items in sorted(PLANTED.items()) for t in items]
    first = detect_languages(texts)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    assert detect_languages([texts[i] for i in order] + texts[:5]) == [first[i] for i in order] + first[:5]
    assert detect_languages(texts) == first


def test_each_distinct_text_is_detected_once_after_code_is_removed():
    seen: list[list[str]] = []

    def backend(texts: pl.Series) -> list[str]:
        seen.append(texts.to_list())
        return ["xx"] * len(texts)

    texts = ["Same words `a`", "Same words `b`", "Same words `a`", "Other words here", "tiny"]
    assert detect_languages(texts, detector=backend) == ["xx", "xx", "xx", "xx", UNDETERMINED]
    assert seen == [["Other words here", "Same words  "]]


def test_polars_letter_count_is_pythons_letter_regex_on_every_assigned_code_point():
    # assigned in Python's Unicode tables (Polars' regex crate knows a newer Unicode: letters Python has as unassigned)
    chars = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    python = [bool(re.fullmatch(r"[^\W\d_]", c)) for c in chars]
    counted = pl.DataFrame({"c": chars}).select(letter_count(pl.col("c")))["c"].to_list()
    assert [n == 1 for n in counted] == python


def test_polars_code_removal_is_the_python_regex():
    code = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.DOTALL)
    texts = ["a ```py\nx = 1\n``` b `c` d", "open ```\nnever closed", "`one` and `two\nlines`", "no code",
             "``` a ``` b ``` c", "empty `` ticks", "ünïcödé `ß` 中文```x```"]
    assert pl.DataFrame({"t": texts}).select(prose(pl.col("t")))["t"].to_list() == [code.sub(" ", t) for t in texts]


def test_an_unknown_detector_is_refused_by_name():
    with pytest.raises(ValueError, match="language_detector must be one of \\['fasttext', 'lingua'\\], got 'cld3'"):
        TaggingConfig(language_detector="cld3")
    with pytest.raises(ValueError, match="language_detector: 'cld3' is not one of"):
        detect_languages(["Some words to detect"], detector="cld3")
