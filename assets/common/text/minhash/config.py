"""MinHash and LSH parameters: :class:`MinHashConfig` and datasketch's choice of (bands, rows)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from assets.common.data.config import config_dict


def _fp_fn_errors(threshold: float, num_perm: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """False-positive / false-negative areas of every (b, r) with b * r <= num_perm, in datasketch's order.

    The integrands ``1 - (1 - s**r)**b`` and ``(1 - s**r)**b`` are polynomials of degree b * r <= num_perm,
    so Gauss-Legendre quadrature with ``num_perm // 2 + 1`` nodes integrates them exactly (up to rounding).
    """
    bs = np.concatenate([np.full(num_perm // b, b) for b in range(1, num_perm + 1)]).astype(np.float64)
    rs = np.concatenate([np.arange(1, num_perm // b + 1) for b in range(1, num_perm + 1)]).astype(np.float64)
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 2)
    s_fp = threshold / 2.0 * (nodes + 1.0)
    s_fn = threshold + (1.0 - threshold) / 2.0 * (nodes + 1.0)
    fp = ((1.0 - (1.0 - s_fp[None, :] ** rs[:, None]) ** bs[:, None]) @ weights) * (threshold / 2.0)
    fn = (((1.0 - s_fn[None, :] ** rs[:, None]) ** bs[:, None]) @ weights) * ((1.0 - threshold) / 2.0)
    return bs, rs, fp, fn


@functools.lru_cache(maxsize=128)
def optimal_param(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) minimizing the weighted false positive + false negative probability mass.

    Same objective and tie-breaking (first minimum, b outer, r inner) as datasketch's ``_optimal_param``.
    """
    bs, rs, fp, fn = _fp_fn_errors(float(threshold), int(num_perm))
    best = int(np.argmin(fp * false_positive_weight + fn * false_negative_weight))
    return int(bs[best]), int(rs[best])


@dataclass(frozen=True)
class MinHashConfig:
    """Parameters of MinHash signatures and LSH banding.

    unit/ngram: shingles are ``ngram`` consecutive words (default 5) or characters.
    num_perm: signature length. threshold: estimated Jaccard at or above which two rows are duplicates.
    seed: permutation seed (``datasketch.MinHash(seed=...)``). hash: ``"xxh64"`` (fast) or ``"sha1"``
    (datasketch's ``sha1_hash32``; bit-identical signatures). bands/rows: LSH banding; ``None`` = chosen by
    :func:`optimal_param` for ``threshold`` with ``weights`` (false positive, false negative).
    """

    unit: str = "word"
    ngram: int = 5
    num_perm: int = 128
    threshold: float = 0.8
    seed: int = 1
    hash: str = "xxh64"
    weights: tuple[float, float] = (0.5, 0.5)
    bands: int | None = None
    rows: int | None = None

    def __post_init__(self) -> None:
        if self.unit not in ("word", "char"):
            raise ValueError(f"unit must be 'word' or 'char', got {self.unit!r}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if self.num_perm < 2:
            raise ValueError(f"num_perm must be >= 2, got {self.num_perm}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.hash not in ("xxh64", "sha1"):
            raise ValueError(f"hash must be 'xxh64' or 'sha1', got {self.hash!r}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if self.bands is not None and (
            self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm
        ):
            raise ValueError(
                f"bands * rows must be in [1, num_perm={self.num_perm}], got {self.bands}x{self.rows}"
            )
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))

    @property
    def params(self) -> tuple[int, int]:
        """(bands, rows) used for LSH."""
        if self.bands is not None:
            return self.bands, self.rows
        return optimal_param(self.threshold, self.num_perm, *self.weights)

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) uint32 arrays drawn exactly like datasketch's affine32 ``MinHash._init_permutations``."""
        return _permutations(self.seed, self.num_perm)

    def to_json(self) -> dict[str, Any]:
        return config_dict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> MinHashConfig:
        return cls(**{**obj, "weights": tuple(obj["weights"])})


@functools.lru_cache(maxsize=16)
def _permutations(seed: int, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    a.flags.writeable = False
    b.flags.writeable = False
    return a, b
