"""Decontamination settings (:class:`DecontamConfig`) and the constants shared by the removal's modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from assets.common.data.config import config_dict
from assets.common.text.minhash.config import MinHashConfig

EVAL_COLUMNS = ("benchmark", "item_id", "field", "text")
SIDES = {"user": "prompt", "assistant": "response"}
REASON_CONTAMINATION = "contamination"
DEFAULT_MINHASH = MinHashConfig(unit="word", ngram=3, num_perm=128, threshold=0.5, weights=(0.1, 0.9))


@dataclass(frozen=True)
class DecontamConfig:
    """ngram: word n-gram length of the overlap detector. min_words: shortest eval text (in normalized words)
    still checked, as a whole sequence when shorter than ``ngram``. max_ngram_items: an n-gram detector key
    (eval n-gram or whole short eval text) found in at least this many distinct eval items is boilerplate
    and ignored (0: no cut-off). max_train_rows: an n-gram detector key found in at least this many distinct
    training conversations of the table being decontaminated is generic text and ignored (0: no cut-off).
    roles: message roles compared. minhash: config of the similarity detector
    (None disables it). minhash_min_words: shortest message / eval text the similarity detector looks at."""

    ngram: int = 13
    min_words: int = 8
    max_ngram_items: int = 3
    max_train_rows: int = 10
    roles: tuple[str, ...] = ("user", "assistant")
    minhash: MinHashConfig | None = DEFAULT_MINHASH
    minhash_min_words: int = 10

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

