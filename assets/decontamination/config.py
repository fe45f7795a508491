"""Decontamination settings (:class:`DecontamConfig`) and the constants shared by the removal's modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from assets.common.data.config import config_dict
from assets.common.text.embeddings import DEFAULT_MODEL, MODELS
from assets.common.text.minhash.config import MinHashConfig

EVAL_COLUMNS = ("benchmark", "item_id", "field", "text")
SIDES = {"user": "prompt", "assistant": "response"}
REASON_CONTAMINATION = "contamination"
DEFAULT_MINHASH = MinHashConfig(unit="word", ngram=3, num_perm=128, threshold=0.5, weights=(0.1, 0.9))
# The eval fields the semantic detector compares with by default: the test items' inputs (the bundled benchmarks'
# prompts and turns, and a user eval file's default field). Its thresholds were tuned on prompts; reference answers
# are long (arena_hard's average 3,400-5,500 characters) and left to the string detectors unless named here.
PROMPT_FIELDS = ("prompt", "instruction", "turn_1", "turn_2", "text")


@dataclass(frozen=True)
class RephraseVerifyConfig:
    """The LLM check of each semantic candidate pair ("is this training text a rephrasing of that test item?"),
    decoded under the JSON schema of the prompt file ``prompts/<prompt>.yaml`` (its hash names every verdict).
    Greedy; message and eval texts are cut at ``max_chars``; ``batch_size`` pairs go to the engine at once."""

    prompt: str = "rephrase-v1"
    max_tokens: int = 128
    batch_size: int = 64
    max_chars: int = 2000

    def __post_init__(self) -> None:
        if self.max_tokens < 16 or self.batch_size < 1 or self.max_chars < 1:
            raise ValueError(f"verify max_tokens must be >= 16, batch_size and max_chars >= 1, got {self.max_tokens}, "
                             f"{self.batch_size}, {self.max_chars}")


@dataclass(frozen=True)
class SemanticConfig:
    """The semantic detector: every compared message against the eval texts of ``eval_fields`` (None: every field)
    embedded by ``model`` (:data:`assets.common.text.embeddings.MODELS` or a local sentence-transformers directory),
    its ``top_k`` nearest by cosine (max over chunks); a neighbour scoring >= ``threshold`` is a candidate (None: the
    registered model's tuned ``threshold`` (and ``margin``, and its cross-lingual tier: ``cross_lingual``); required
    for an unregistered model). ``judge``: the LLM
    check of each candidate (None: off; every candidate is then a match)."""

    model: str = DEFAULT_MODEL
    threshold: float | None = None
    top_k: int = 5
    eval_fields: tuple[str, ...] | None = PROMPT_FIELDS
    batch_size: int = 32
    judge: RephraseVerifyConfig | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.batch_size < 1:
            raise ValueError(f"semantic top_k and batch_size must be >= 1, got {self.top_k}, {self.batch_size}")
        if self.threshold is None and self.model not in MODELS:
            raise ValueError(f"semantic model {self.model!r} is not registered ({sorted(MODELS)}): set semantic "
                             "threshold to the cosine tuned for it (benchmarks/embeddings.py measures one)")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"semantic threshold must be in (0, 1], got {self.threshold}")
        if self.eval_fields is not None:
            object.__setattr__(self, "eval_fields", tuple(self.eval_fields))

    @property
    def cosine_threshold(self) -> float:
        """``threshold``, or the registered model's tuned one."""
        return self.threshold if self.threshold is not None else MODELS[self.model].threshold

    @property
    def margin(self) -> float:
        """How far a match must stand out from the rest of the eval corpus: the registered model's tuned margin, 0
        (plain cosine) for an unregistered one."""
        return MODELS[self.model].margin if self.model in MODELS else 0.0

    @property
    def cross_lingual(self) -> tuple[float, float] | None:
        """(threshold, margin) of the cross-lingual tier (a message and an eval text in different languages): the
        registered model's, None for a model without one (no knob: like the margin, it was tuned with the model)."""
        spec = MODELS.get(self.model)
        if spec is None or spec.cross_threshold is None or spec.cross_margin is None:
            return None
        return spec.cross_threshold, spec.cross_margin


@dataclass(frozen=True)
class DecontamConfig:
    """ngram: word n-gram length of the overlap detector. min_words: shortest eval text (in normalized words)
    still checked, as a whole sequence when shorter than ``ngram``. max_ngram_items: an n-gram detector key
    (eval n-gram or whole short eval text) found in at least this many distinct eval items is boilerplate
    and ignored (0: no cut-off). max_train_rows: an n-gram detector key found in at least this many distinct
    training conversations of the table being decontaminated is generic text and ignored (0: no cut-off).
    roles: message roles compared. minhash: config of the similarity detector
    (None disables it). minhash_min_words: shortest message / eval text the similarity detector looks at.
    semantic_detector: the embedding detector (None, the default of these library calls: off; the asset turns it
    on, with an embedding cache and, if asked, a judge)."""

    ngram: int = 13
    min_words: int = 8
    max_ngram_items: int = 3
    max_train_rows: int = 10
    roles: tuple[str, ...] = ("user", "assistant")
    minhash: MinHashConfig | None = DEFAULT_MINHASH
    minhash_min_words: int = 10
    semantic_detector: SemanticConfig | None = None

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.min_words < 1:
            raise ValueError(f"ngram and min_words must be >= 1, got {self.ngram}, {self.min_words}")
        if self.max_ngram_items < 0 or self.max_ngram_items == 1:
            # 1 would exclude every key (each occurs in its own item) and silently disable the detector
            raise ValueError(f"max_ngram_items must be 0 (no cut-off) or >= 2, got {self.max_ngram_items}")
        if self.max_train_rows < 0 or self.max_train_rows == 1:
            # 1 would ignore every key found at all, i.e. silently disable the n-gram detector
            raise ValueError(f"max_train_rows must be 0 (no cut-off) or >= 2, got {self.max_train_rows}")
        unknown = set(self.roles) - set(SIDES)
        if unknown:
            raise ValueError(f"roles must be among {sorted(SIDES)}, got {sorted(unknown)}")
        object.__setattr__(self, "roles", tuple(self.roles))

    def to_json(self) -> dict[str, Any]:
        return config_dict(self)

