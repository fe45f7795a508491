"""Token counts with the student's tokenizer and chat template (no Dagster here): what a row costs in training
(every token of the rendered conversation) and what is trained (assistant tokens and their end-of-turn token), as
``training`` masks them.

Counting is the mixture's one slow step (rows are tokenized in batches, on all cores: see
:func:`~training.masking.tokenize_conversations`), so :class:`CachedTokenCounts` keeps every count it
makes: keyed by the row's content (a 64-bit hash of its messages, :func:`~assets.common.data.shards.row_hashes`)
under a folder named by the tokenizer's identity (:func:`tokenizer_identity`: the model directory's tokenizer and
template files, the counting code, the transformers and tokenizers versions), in immutable Parquet files named by
their content, one per build that counted new rows. A rebuild counts only rows it has not seen; the counts are the
same as counting every row (a 64-bit collision between two different rows' messages, odds about 3e-8 at a million
rows, would give one row the other's count). Each build names its tokenizer's folder in ``<cache_root>/IN_USE.json``:
retention (``--caches``) removes the other tokenizers' folders (:mod:`~assets.common.data.caches`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import polars as pl

from assets.common.data.caches import record_in_use
from assets.common.data.shards import row_hashes
from assets.common.data.storage import sha256_file, write_bytes_atomic
from assets.common.models.chat_template import read_chat_template
from assets.common.models.code_version import source_version
from training.masking import assistant_end_of_turn, tokenize_conversations

COUNTS_SCHEMA = {"row_hash": pl.UInt64, "tokens": pl.Int64, "trainable": pl.Int64}
_WEIGHTS = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".onnx")  # files the counts do not depend on
_CODE = (Path(__file__), Path(__file__).parents[2] / "training" / "masking.py",
         Path(__file__).parents[1] / "common" / "models" / "chat_template.py")


COUNT_CHUNK_ROWS = 2_000  # conversations tokenized together (their token lists held at once)


class StudentTokenCounter:
    """messages -> (tokens, trainable tokens) under a model directory's tokenizer and chat template; :meth:`many`
    counts a list of conversations in batches (:func:`~training.masking.tokenize_conversations`), with the counts
    of one by one."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.template = read_chat_template(model_dir)
        self.end_of_turn = assistant_end_of_turn(self.tokenizer, self.template)

    def __call__(self, messages: Sequence[dict]) -> tuple[int, int]:
        return self.many([messages])[0]

    def many(self, conversations: Sequence[Sequence[dict]]) -> list[tuple[int, int]]:
        counts = []
        for start in range(0, len(conversations), COUNT_CHUNK_ROWS):
            tokenized = tokenize_conversations(self.tokenizer, conversations[start:start + COUNT_CHUNK_ROWS],
                                               self.template, self.end_of_turn)
            counts += [(len(t.input_ids), sum(t.assistant_masks)) for t in tokenized]
        return counts


def student_token_counter(model_dir: str | Path) -> StudentTokenCounter:
    """messages -> (tokens, trainable tokens) under the model directory's tokenizer and chat template."""
    return StudentTokenCounter(model_dir)


def tokenizer_identity(model_dir: str | Path) -> str:
    """SHA-256 of what a count depends on: every file of the model directory but its weights (tokenizer, template,
    configs; names and bytes), the counting code's version, and the transformers and tokenizers versions."""
    import tokenizers
    import transformers

    root = Path(model_dir)
    digest = hashlib.sha256(f"{source_version(_CODE)} transformers {transformers.__version__} tokenizers "
                            f"{tokenizers.__version__}\n".encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(_WEIGHTS)):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


class CachedTokenCounts:
    """A student token counter (per row, as :func:`student_token_counter`) with :meth:`table`: the counts of a whole
    ``messages`` column, reusing every count kept under ``cache_root`` for this tokenizer and keeping the new ones.
    The tokenizer is loaded only when a row has to be counted."""

    def __init__(self, model_dir: str | Path, cache_root: str | Path) -> None:
        self.model_dir = Path(model_dir)
        self.folder = Path(cache_root) / tokenizer_identity(model_dir)[:16]
        self.rows_counted = 0
        self.rows_reused = 0

    @cached_property
    def _count(self) -> StudentTokenCounter:
        return student_token_counter(self.model_dir)

    def __call__(self, messages: Sequence[dict]) -> tuple[int, int]:
        return self._count(messages)

    def table(self, messages: pl.Series) -> pl.DataFrame:
        """``tokens`` and ``trainable`` (Int64) of every row of ``messages``, in order."""
        record_in_use(self.folder.parent, [self.folder.name])  # retention keeps this tokenizer's counts, not others'
        keys = pl.DataFrame({"row_hash": row_hashes(messages.to_frame("messages"), ("messages",))})
        known = self._known()
        found = keys.join(known, on="row_hash", how="left", maintain_order="left")
        todo = (found.with_row_index("position").filter(pl.col("tokens").is_null())
                .unique("row_hash", keep="first", maintain_order=True))
        if todo.height:
            counts = self._count.many(messages.gather(todo["position"]).to_list())
            new = pl.DataFrame({"row_hash": todo["row_hash"], "tokens": [c[0] for c in counts],
                                "trainable": [c[1] for c in counts]}, schema=COUNTS_SCHEMA).sort("row_hash")
            self._keep(new)
            found = keys.join(pl.concat([known, new]), on="row_hash", how="left", maintain_order="left")
        self.rows_counted += todo.height
        self.rows_reused += messages.len() - todo.height
        return found.select("tokens", "trainable")

    def _known(self) -> pl.DataFrame:
        files = sorted(self.folder.glob("*.parquet"))
        if not files:
            return pl.DataFrame(schema=COUNTS_SCHEMA)
        return pl.concat([pl.read_parquet(f) for f in files]).unique("row_hash", keep="first")

    def _keep(self, counts: pl.DataFrame) -> None:
        """``counts`` as one more immutable file, named by its bytes."""
        buffer = io.BytesIO()
        counts.write_parquet(buffer, compression="zstd", compression_level=3, statistics=True)
        data = buffer.getvalue()
        write_bytes_atomic(data, self.folder / f"{hashlib.sha256(data).hexdigest()[:16]}.parquet")
