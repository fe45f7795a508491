"""An independent re-check for eval-set leakage (no Dagster here).

It shares no code with the removal (:mod:`assets.decontamination.removal` and the modules it uses: no numba
kernels, no rolling hashes, no MinHash): plain Python normalization with ``unicodedata`` and ``str`` methods,
dictionaries keyed by the eval word n-grams themselves (as strings), and whole eval texts shorter than n words
looked up as word windows in a dictionary too. It is slower, and that is its point: the blocking asset check that
gates training must not trust the code path that removed the rows. One shortcut keeps it linear and cheap: a word
window is looked up only when each pair of adjacent words in it is a pair of adjacent words of some eval text
(every key passes that test; most windows of other text fail it), and each message is normalized and scanned once,
the counts of the training-side cut-off and the leaks both drawn from the keys it holds.

What counts as a leak is the n-gram part of the removal's definition, with the stricter of the check's own floors
(:data:`CHECK_FLOORS`) and the removal's settings (:func:`check_parameters`), so that configuring the removal weakly
cannot weaken the check that guards it:

* a training message (user or assistant) contains a word n-gram of an eval text, after normalization; or
* it contains, as a contiguous word sequence, a whole eval text shorter than ``n`` words but at least
  ``min_words`` long (shorter eval texts are ignored);
* except for boilerplate: a key (eval n-gram, or whole short eval text) occurring in ``max_ngram_items`` or
  more distinct eval items ``(benchmark, item_id)`` -- occurring meaning appearing contiguously in any text
  of the item -- is generic text and never evidence. ``max_ngram_items=0`` turns that cut-off off;
* and except for text frequent in the training data itself (the GPT-3 paper's remedy for boilerplate that a
  single eval item happens to share): a key found in ``max_train_rows`` or more distinct training
  conversations (distinct ``conversation_id``; any user or assistant message containing the key's words
  contiguously) is never evidence either. The count is over the whole table the removal saw, the kept rows plus
  the rejected ones (which the check passes as ``also_counted``), not over the kept rows alone: rows
  removed for other reasons would otherwise lower the count and turn an ignored key back into evidence.
  ``max_train_rows=0`` turns that cut-off off. Its trade-off is the removal's: a real leak repeated in
  ``max_train_rows`` or more rows that are not near-duplicates of each other is not reported (near-duplicate
  removal runs first and collapses repeated copies of a leak to one row).

The semantic part (rephrased eval prompts, by embedding cosine, with a fixed floor per model that configuration cannot
lower, and the stored verdicts of the judge) lives in :mod:`.verify_semantic`, under the same contract.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from assets.decontamination.verify_semantic import CHECK_SEMANTIC_FLOORS, Leak, SemanticCheck, check_semantic

ROLES = ("user", "assistant")

# The check's own floors: the removal's configuration can make the check stricter, never weaker. The check runs with
# the stricter of each floor and the removal's setting (:func:`check_parameters`). Stricter means: a shorter n-gram
# ``n`` and a lower ``min_words`` (more keys), a higher cut-off ``max_ngram_items`` / ``max_train_rows`` (fewer keys
# ignored as generic text), 0 (no cut-off) being the strictest of all.
CHECK_FLOORS = {"n": 13, "min_words": 8, "max_ngram_items": 3, "max_train_rows": 10}
LEAK_LIMIT = 20  # leaks the check lists (it stops looking after this many)
# The removal's setting (its report's ``config``) behind each parameter, and the value a report without it stands for
# (a report from before that cut-off existed: the removal had none).
REMOVAL_SETTINGS = {"n": ("ngram", 13), "min_words": ("min_words", 8), "max_ngram_items": ("max_ngram_items", 0),
                    "max_train_rows": ("max_train_rows", 0)}


@functools.cache
def _punctuation() -> tuple[dict[int, None], frozenset[str]]:
    """Every code point of a Unicode punctuation category (P*): as a :meth:`str.translate` table that deletes them, and
    as a set of characters."""
    points = [cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")]
    return dict.fromkeys(points), frozenset(map(chr, points))


def _strip_punctuation(text: str) -> str:
    table, characters = _punctuation()
    if text.isascii():
        return text.translate(table)  # CPython translates ASCII text with a table in C
    # elsewhere translate looks up every character in Python: remove the few punctuation characters the text holds
    found = characters.intersection(text)
    if len(found) > 16:  # many (each one a pass over the text): translate after all
        return text.translate(table)
    for character in found:
        text = text.replace(character, "")
    return text


def _words(text: str | None) -> list[str]:
    """The words of ``text`` after normalization: NFKC, lower case, every punctuation character (Unicode category
    P*) removed, split at whitespace runs (empty text: no words)."""
    return _strip_punctuation(unicodedata.normalize("NFKC", text or "").lower()).split()


def _ngrams(words: list[str], n: int) -> Iterator[str]:
    """The word n-grams of ``words``, in order, as strings."""
    return (" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


@dataclass(frozen=True)
class _ShortKeys:
    """Whole short eval texts to look for inside longer word sequences."""

    keys: frozenset[str]

    @functools.cached_property
    def lengths(self) -> list[int]:
        return sorted({key.count(" ") + 1 for key in self.keys})

    @functools.cached_property
    def first_words(self) -> set[str]:
        return {key.split(" ", 1)[0] for key in self.keys}

    @functools.cached_property
    def last_words(self) -> set[str]:
        return {key.rsplit(" ", 1)[-1] for key in self.keys}

    def found_in(self, words: list[str]) -> Iterator[str]:
        """Every key appearing contiguously in ``words`` (once per occurrence)."""
        for i, word in enumerate(words):
            if word not in self.first_words:
                continue
            for length in self.lengths:
                if i + length > len(words):
                    break
                if words[i + length - 1] in self.last_words:
                    window = " ".join(words[i:i + length])
                    if window in self.keys:
                        yield window


@dataclass
class EvalKeys:
    """What :func:`find_leaks` looks for. ``ngrams``: n-gram text -> an eval item holding it. ``short``: whole
    short eval text -> an eval item holding it. ``excluded_ngrams`` / ``excluded_texts``: per benchmark, the
    distinct n-grams and the short eval texts (rows) left out as boilerplate. ``shared``: the benchmarks of the
    n-grams found in more than one eval item; ``short_benchmarks``: the benchmarks of the eval texts each short
    key is the whole of (see :meth:`benchmarks`). ``pairs``: every pair of adjacent words of the eval texts, which
    holds the adjacent words of every key (None: unknown, every word window is looked up)."""

    n: int
    min_words: int
    max_ngram_items: int
    ngrams: dict[str, tuple[str, str]] = field(default_factory=dict)
    short: dict[str, tuple[str, str]] = field(default_factory=dict)
    excluded_ngrams: dict[str, int] = field(default_factory=dict)
    excluded_texts: dict[str, int] = field(default_factory=dict)
    shared: dict[str, set[str]] = field(default_factory=dict)
    short_benchmarks: dict[str, set[str]] = field(default_factory=dict)
    pairs: frozenset[tuple[str, str]] | None = None

    def benchmarks(self, key: str) -> set[str]:
        """The benchmarks a (non-boilerplate) key belongs to: those of the eval texts holding it as an n-gram, or
        whose whole text it is."""
        if key in self.short:
            return self.short_benchmarks[key]
        return self.shared.get(key, {self.ngrams[key][0]})


def eval_keys(eval_sets: pl.DataFrame, n: int = 13, min_words: int = 8, max_ngram_items: int = 3) -> EvalKeys:
    """Index the eval texts: their n-grams and whole short texts, minus those found in ``max_ngram_items`` or
    more distinct eval items."""
    if n < 1 or min_words < 1:
        raise ValueError(f"n and min_words must be >= 1, got {n}, {min_words}")
    if max_ngram_items < 0 or max_ngram_items == 1:
        raise ValueError(f"max_ngram_items must be 0 (no cut-off) or >= 2, got {max_ngram_items}")

    # the texts of each item, and the short texts (the candidate whole-sequence keys)
    texts_of: dict[tuple[str, str], list[list[str]]] = defaultdict(list)
    short_rows: list[tuple[str, str]] = []  # (benchmark, short text) per eval row
    for benchmark, item_id, text in eval_sets.select("benchmark", "item_id", "text").iter_rows():
        words = _words(text)
        texts_of[(benchmark, item_id)].append(words)
        if min_words <= len(words) < n:
            short_rows.append((benchmark, " ".join(words)))
    short_keys = _ShortKeys(frozenset(text for _, text in short_rows))

    # every key each item contains: all n-grams of its texts, and the short keys found inside its texts
    owner: dict[str, tuple[str, str]] = {}  # key -> the first item holding it
    more_items: Counter[str] = Counter()  # keys met in more than one item -> the number of other items
    benchmarks_of: dict[str, set[str]] = {}  # keys met in more than one item: the benchmarks they occur in
    for item, texts in texts_of.items():
        contained: set[str] = set()
        for words in texts:
            contained.update(_ngrams(words, n))
            contained.update(short_keys.found_in(words))
        for key in [key for key in contained if key in owner]:
            more_items[key] += 1
            benchmarks_of.setdefault(key, {owner[key][0]}).add(item[0])
        owner.update(dict.fromkeys(contained.difference(owner), item))
    boilerplate = {key for key, more in more_items.items() if 1 + more >= max_ngram_items} if max_ngram_items else set()

    pairs = frozenset(pair for texts in texts_of.values() for words in texts
                      for pair in zip(words, words[1:], strict=False))
    keys = EvalKeys(n, min_words, max_ngram_items, shared=benchmarks_of, pairs=pairs)
    short = {key: owner.pop(key) for key in short_keys.keys}  # every short key is in its own text
    keys.short = {key: item for key, item in short.items() if key not in boilerplate}
    for key in boilerplate.intersection(owner):  # the n-grams left out
        item = owner.pop(key)
        for benchmark in benchmarks_of.get(key, {item[0]}):
            keys.excluded_ngrams[benchmark] = keys.excluded_ngrams.get(benchmark, 0) + 1
    keys.ngrams = owner  # the other n-grams
    for benchmark, text in short_rows:
        if text in boilerplate:
            keys.excluded_texts[benchmark] = keys.excluded_texts.get(benchmark, 0) + 1
        else:
            keys.short_benchmarks.setdefault(text, set()).add(benchmark)
    return keys


def _check_max_train_rows(max_train_rows: int) -> None:
    if max_train_rows < 0 or max_train_rows == 1:
        # 1 would ignore every key found at all
        raise ValueError(f"max_train_rows must be 0 (no cut-off) or >= 2, got {max_train_rows}")


class _Finder:
    """Finds the keys of an :class:`EvalKeys` in the words of a message, as word windows looked up in dictionaries.

    A window can be a key only if each pair of adjacent words in it is in ``keys.pairs``: only the runs of words
    whose adjacent pairs all are, and that are as long as the shortest key, are searched."""

    def __init__(self, keys: EvalKeys):
        self.n, self.ngrams, self.pairs = keys.n, keys.ngrams, keys.pairs
        self.short = _ShortKeys(frozenset(keys.short))
        shortest = min([keys.n, *self.short.lengths])  # words in the shortest key
        # a run of k words whose adjacent pairs are all eval pairs: k - 1 ones in a row (see _runs)
        self.run = re.compile(b"\x01{%d,}" % (shortest - 1)) if self.pairs is not None and shortest > 1 else None

    def find(self, words: list[str]) -> tuple[list[str], list[str]]:
        """The n-gram keys in ``words`` (one per window, in order) and the short keys (once per occurrence)."""
        grams: list[str] = []
        short: list[str] = []
        for run in self._runs(words):
            grams.extend(gram for gram in _ngrams(run, self.n) if gram in self.ngrams)
            short.extend(self.short.found_in(run))
        return grams, short

    def _runs(self, words: list[str]) -> Iterator[list[str]]:
        """The maximal runs of ``words`` whose adjacent pairs are all eval pairs, in order, as long as the shortest
        key at least (all of ``words`` when no pairs are known or a key may be one word)."""
        if self.run is None:
            yield words
            return
        # byte i is 1 when words i and i + 1 are adjacent in an eval text
        adjacent = bytes(map(self.pairs.__contains__, zip(words, words[1:], strict=False)))
        for run in self.run.finditer(adjacent):
            yield words[run.start():run.end() + 1]


_Hit = tuple[int, str, str, list[str], list[str]]  # row, conversation_id, role, n-gram keys, short keys


def _hits(conversations: pl.DataFrame, finder: _Finder, rows_at_once: int = 10_000) -> Iterator[_Hit]:
    """The user and assistant messages of ``conversations`` holding a key, in table order (row: the row's index),
    each normalized and searched once."""
    offset = 0
    for chunk in conversations.select("conversation_id", "messages").iter_slices(rows_at_once):
        messages = (chunk.with_row_index("row", offset).explode("messages").unnest("messages")
                    .filter(pl.col("role").is_in(ROLES)))
        columns = (messages[c].to_list() for c in ("row", "conversation_id", "role", "content"))
        for row, conversation_id, role, content in zip(*columns, strict=True):
            grams, short = finder.find(_words(content))
            if grams or short:
                yield row, conversation_id, role, grams, short
        offset += chunk.height


def _frequent(hits: Iterable[_Hit], max_train_rows: int) -> dict[str, int]:
    """The keys of ``hits`` found in ``max_train_rows`` or more distinct conversations -> their number."""
    found_in: dict[str, set] = defaultdict(set)
    for _, conversation_id, _, grams, short in hits:
        for key in (*grams, *short):
            found_in[key].add(conversation_id)
    return {key: len(ids) for key, ids in found_in.items() if len(ids) >= max_train_rows}


def train_frequent_keys(conversations: pl.DataFrame, keys: EvalKeys, max_train_rows: int) -> dict[str, int]:
    """The keys (n-grams and whole short texts of ``keys``) found in ``max_train_rows`` or more distinct
    conversations of ``conversations``, in any user or assistant message: key -> number of conversations. Empty
    when ``max_train_rows`` is 0."""
    _check_max_train_rows(max_train_rows)
    if not max_train_rows:
        return {}
    return _frequent(_hits(conversations, _Finder(keys)), max_train_rows)


def find_leaks(conversations: pl.DataFrame, eval_sets: pl.DataFrame, n: int = 13, min_words: int = 8,
               max_ngram_items: int = 3, max_train_rows: int = 10, limit: int | None = 20,
               also_counted: pl.DataFrame | None = None) -> list[Leak]:
    """Training messages (user and assistant) that contain an eval n-gram, or a whole eval text shorter than n
    words (at least ``min_words``), after normalization, unless that n-gram / text occurs in
    ``max_ngram_items`` or more distinct eval items, or in ``max_train_rows`` or more distinct conversations of
    ``conversations`` and ``also_counted`` (0: no such cut-off). One leak per conversation (its first leaking
    message: its first n-gram key in word order, else the first of its short keys in the sorted order of the short
    keys), at most ``limit`` of them (None: all)."""
    _check_max_train_rows(max_train_rows)
    keys = eval_keys(eval_sets, n=n, min_words=min_words, max_ngram_items=max_ngram_items)
    finder = _Finder(keys)
    hits = list(_hits(conversations, finder))  # the messages holding a key: few
    frequent: dict[str, int] = {}
    if max_train_rows:
        more = _hits(also_counted, finder) if also_counted is not None else ()
        frequent = _frequent([*hits, *more], max_train_rows)
    short_order = {text: rank for rank, text in enumerate(sorted(keys.short, key=lambda text: f" {text} "))}
    leaks: list[Leak] = []
    leaked_row = -1
    for row, conversation_id, role, grams, short in hits:
        if row == leaked_row:  # one leak per conversation
            continue
        gram = next((gram for gram in grams if gram not in frequent), None)
        if gram is not None:
            leaks.append(Leak(conversation_id, role, *keys.ngrams[gram], gram))
        elif texts := [text for text in short if text not in frequent]:
            text = min(texts, key=short_order.__getitem__)
            leaks.append(Leak(conversation_id, role, *keys.short[text], text))
        else:
            continue
        leaked_row = row
        if limit is not None and len(leaks) >= limit:
            break
    return leaks


def _stricter_cutoff(setting: int, floor: int) -> int:
    """Of two cut-offs (0: none), the one that ignores fewer keys."""
    return 0 if setting == 0 or floor == 0 else max(setting, floor)


def check_parameters(removal_config: dict) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """The parameters the check runs with: per parameter the stricter of :data:`CHECK_FLOORS` and the removal's
    setting (``removal_config``, the ``config`` of the removal's report). Returns them, the removal's settings under
    the check's names, and the names of the settings the floors overrode (the removal was weaker there)."""
    removal = {name: int(removal_config.get(key, absent)) for name, (key, absent) in REMOVAL_SETTINGS.items()}
    parameters = {
        "n": min(removal["n"], CHECK_FLOORS["n"]),
        "min_words": min(removal["min_words"], CHECK_FLOORS["min_words"]),
        "max_ngram_items": _stricter_cutoff(removal["max_ngram_items"], CHECK_FLOORS["max_ngram_items"]),
        "max_train_rows": _stricter_cutoff(removal["max_train_rows"], CHECK_FLOORS["max_train_rows"]),
    }
    overridden = [name for name in parameters if parameters[name] != removal[name]]
    return parameters, removal, overridden


@dataclass(frozen=True)
class Verdict:
    """The blocking check's result: ``leaks`` found (up to the limit), what was checked and with which parameters,
    and, when the check could not run as intended, why (``problem``)."""

    passed: bool
    description: str
    parameters: dict[str, int]
    removal_settings: dict[str, int]
    overridden: list[str]
    leaks: list[Leak] = field(default_factory=list)
    problem: str = ""
    semantic: SemanticCheck | None = None


def verify_decontaminated(kept: pl.DataFrame, rejected: pl.DataFrame, eval_sets: pl.DataFrame, report: dict,
                          verdicts: pl.DataFrame | None = None,
                          embedding_cache: str | Path | None = None) -> Verdict:
    """Re-check a decontaminated table (``kept``; ``rejected``: the rows the removal took out; ``report``: its
    report) against ``eval_sets`` with :func:`check_parameters`, then (when the removal ran its semantic detector)
    with :func:`~.verify_semantic.check_semantic` on the vectors in ``embedding_cache`` and the stored ``verdicts``.
    Training-side frequencies are counted over the table the removal saw, kept + rejected rows; if that is not the
    report's ``rows_in``, the tables and the report are from different runs and the check fails without looking for
    leaks."""
    parameters, removal, overridden = check_parameters(report.get("config", {}))
    weaker = (f"; the removal's {', '.join(f'{n}={removal[n]}' for n in overridden)} would be weaker than the "
              f"check's floors, which it used instead ({', '.join(f'{n}={parameters[n]}' for n in overridden)})"
              if overridden else "")
    verdict = functools.partial(Verdict, parameters=parameters, removal_settings=removal, overridden=overridden)
    also_counted = None
    if parameters["max_train_rows"]:
        also_counted = rejected
        if kept.height + rejected.height != report.get("rows_in"):
            problem = (f"kept + rejected rows ({kept.height} + {rejected.height} = {kept.height + rejected.height}) "
                       f"differ from the report's rows_in ({report.get('rows_in')}): the tables and the report are "
                       "from different runs. Re-materialize decontaminated_conversations.")
            return verdict(passed=False, description=problem, problem=problem)
    leaks = find_leaks(kept, eval_sets, **parameters, limit=LEAK_LIMIT, also_counted=also_counted)
    semantic = check_semantic(kept, eval_sets, report, verdicts, embedding_cache, LEAK_LIMIT)
    verdict = functools.partial(verdict, semantic=semantic)
    if semantic.problem:
        return verdict(passed=False, leaks=leaks, description=semantic.problem, problem=semantic.problem)
    if not leaks and semantic.leaks:
        return verdict(passed=False, description=_semantic_description(semantic))
    if not leaks:
        return verdict(passed=True, description=f"no eval text found in {kept.height} training rows{weaker}; "
                                                f"{_semantic_summary(semantic)}")
    first = leaks[0]
    return verdict(passed=False, leaks=leaks, description=(
        f"{len(leaks)}{'+' if len(leaks) >= LEAK_LIMIT else ''} training conversation(s) contain eval text, e.g. "
        f"{first.conversation_id} ({first.role}) holds {first.benchmark} {first.item_id}: {first.evidence!r}"
        f"{weaker}. Remove them: re-materialize decontaminated_conversations with settings no weaker than the "
        f"check's floors {CHECK_FLOORS}."))


def _semantic_summary(semantic: SemanticCheck) -> str:
    if not semantic.checked:
        return "semantic: not checked (the removal ran without its semantic detector)"
    p = semantic.parameters
    return (f"semantic ({p['model']}, cosine floor {p['threshold']:.3f}): no rephrased eval text"
            + (f", {semantic.cleared} pair(s) above it judged not a rephrasing" if semantic.cleared else ""))


def _semantic_description(semantic: SemanticCheck) -> str:
    first, p = semantic.leaks[0], semantic.parameters
    return (f"{len(semantic.leaks)}{'+' if len(semantic.leaks) >= LEAK_LIMIT else ''} kept training message(s) are "
            f"as close as a rephrasing to an eval text ({p['model']}), e.g. {first.conversation_id} ({first.role}) "
            f"and {first.benchmark} {first.item_id}: {first.evidence}. The check's floors "
            f"({CHECK_SEMANTIC_FLOORS}) are not configurable: re-materialize decontaminated_conversations with the "
            "semantic detector on (its threshold at most the floor), or with its judge's verdicts.")
