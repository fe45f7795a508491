"""Synthetic text for the decontamination tests: random-word vocabularies and the generic assistant closing line
that one Arena-Hard baseline answer shares with generated answers."""

import numpy as np

BOILERPLATE = "I hope this helps! Let me know if you have any other questions."  # 13 normalized words
BOILERPLATE_NORM = "i hope this helps let me know if you have any other questions"


def random_vocab(seed: int, size: int, min_len: int, max_len: int) -> list[str]:
    """Sorted distinct random lowercase words, ``min_len`` to ``max_len - 1`` letters, from ``size`` draws."""
    rng = np.random.default_rng(seed)
    return sorted({"".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(min_len, max_len)))
                   for _ in range(size)})


def random_words(vocab: list[str], rng: np.random.Generator, n: int) -> str:
    return " ".join(vocab[i] for i in rng.integers(0, len(vocab), n))
