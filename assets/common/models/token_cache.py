"""Rows tokenized with a student's tokenizer and chat template, kept by row content under the tokenizer's identity
(no Dagster here): the mixture's token counts (``unit: tokens``) and the token ids and assistant masks training
would compute again for the same rows.

A folder per tokenizer identity (:func:`tokenizer_identity`: the model directory's files but its weights, the
tokenizing code, the transformers, tokenizers and polars versions) holds immutable Parquet parts named by their bytes
(SHA-256), each row keyed by two independent 64-bit hashes of its messages (:func:`row_keys`; the counts use the
first alone, as they always did) with its ``tokens`` and ``trainable`` counts, ``input_ids``, ``assistant_masks``
and ``tokens_sha256`` (:func:`training.masking.token_digest` of them). The mixture writes parts (one per
:data:`PART_ROWS` rows it tokenized); training reads (:meth:`TokenizedRowsCache.lookup`) only the rows it trains on,
from parts whose bytes still hash to their name: a part that does not, or that cannot be read, is skipped (its
rows are tokenized again), so the cache never changes a result, only its cost.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from assets.common.data.shards import row_hashes
from assets.common.data.storage import sha256_file, write_bytes_atomic
from assets.common.models.code_version import source_version

CACHE_FOLDER = "token_counts"  # the cache root, in the mixture's asset folder: <data>/sft_mixture/token_counts/
KEY_COLUMNS = ("row_hash", "messages_hash")
COUNT_COLUMNS = ("row_hash", "tokens", "trainable")
TOKEN_COLUMNS = ("input_ids", "assistant_masks", "tokens_sha256")
SCHEMA = {"row_hash": pl.UInt64, "messages_hash": pl.UInt64, "tokens": pl.Int64, "trainable": pl.Int64,
          "input_ids": pl.List(pl.UInt32), "assistant_masks": pl.List(pl.UInt8), "tokens_sha256": pl.Utf8}
PART_ROWS = 50_000  # rows a part holds at most (its token lists as Arrow, ~2 MB per 1,000 rows, until written)
_MESSAGES_SEED = 0x5EED_7A11  # the second key: polars' own hash of the messages column (nested), another function
_WEIGHTS = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".onnx")  # files the tokens do not depend on
_ROOT = Path(__file__).resolve().parents[3]
_CODE = (Path(__file__), _ROOT / "training" / "masking.py", _ROOT / "assets" / "common" / "models" / "chat_template.py",
         _ROOT / "assets" / "mixture" / "tokens.py")


def tokenizer_identity(model_dir: str | Path) -> str:
    """SHA-256 of what a row's tokens depend on: every file of the model directory but its weights (tokenizer,
    template, configs; names and bytes), the tokenizing and caching code's version, and the transformers, tokenizers
    and polars (the row keys) versions."""
    import tokenizers
    import transformers

    root = Path(model_dir)
    digest = hashlib.sha256(f"{source_version(_CODE)} transformers {transformers.__version__} tokenizers "
                            f"{tokenizers.__version__} polars {pl.__version__}\n".encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(_WEIGHTS)):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def row_keys(messages: pl.Series) -> pl.DataFrame:
    """Per row of ``messages``: ``row_hash`` (:func:`~assets.common.data.shards.row_hashes`) and ``messages_hash``
    (polars' hash of the nested column): 128 bits, so two different conversations never share tokens."""
    return pl.DataFrame({"row_hash": row_hashes(messages.to_frame("messages"), ("messages",)),
                         "messages_hash": messages.hash(seed=_MESSAGES_SEED)})


class TokenizedRowsCache:
    """The folder of one tokenizer's rows under ``cache_root`` (``<cache_root>/<identity[:16]>/``)."""

    def __init__(self, model_dir: str | Path, cache_root: str | Path) -> None:
        self.folder = Path(cache_root) / tokenizer_identity(model_dir)[:16]
        self.skipped: list[str] = []  # parts the last read (counts, lookup) did not trust, and why

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("*.parquet"))

    def counts(self) -> pl.DataFrame:
        """``row_hash``, ``tokens``, ``trainable`` of every row kept in a trusted part (one row per row_hash): the
        rows of a part that is not are counted again, and kept in a new part."""
        self.skipped = []
        frames = [frame for part in self.parts() if (frame := self._read(part, COUNT_COLUMNS)) is not None]
        if not frames:
            return pl.DataFrame(schema={c: SCHEMA[c] for c in COUNT_COLUMNS})
        return pl.concat(frames).unique("row_hash", keep="first", maintain_order=True)

    def keep(self, rows: pl.DataFrame) -> None:
        """``rows`` (:data:`SCHEMA`) as one more immutable part, named by its bytes."""
        buffer = io.BytesIO()
        rows.select(list(SCHEMA)).cast(SCHEMA).sort(KEY_COLUMNS).write_parquet(
            buffer, compression="zstd", compression_level=3, statistics=True)
        data = buffer.getvalue()
        write_bytes_atomic(data, self.folder / f"{hashlib.sha256(data).hexdigest()[:16]}.parquet")

    def lookup(self, keys: pl.DataFrame) -> pl.DataFrame:
        """:data:`TOKEN_COLUMNS` for every row of ``keys`` (:func:`row_keys`), in order; null where no trusted
        part has the row. Reads only those rows: at most the tokens of the rows asked for are held."""
        self.skipped = []
        wanted = keys.select(KEY_COLUMNS).unique()
        found = [frame for part in self.parts()
                 if (frame := self._read(part, (*KEY_COLUMNS, *TOKEN_COLUMNS), wanted)) is not None]
        schema = {c: SCHEMA[c] for c in (*KEY_COLUMNS, *TOKEN_COLUMNS)}
        known = (pl.concat(found) if found else pl.DataFrame(schema=schema)).unique(KEY_COLUMNS, keep="first")
        return keys.select(KEY_COLUMNS).join(known, on=list(KEY_COLUMNS), how="left",
                                             maintain_order="left").select(TOKEN_COLUMNS)

    def _read(self, part: Path, columns: Sequence[str], wanted: pl.DataFrame | None = None) -> pl.DataFrame | None:
        """``columns`` of the part's rows (those of ``wanted``'s keys), or None when the part is not trusted."""
        try:
            data = part.read_bytes()  # one part at a time (PART_ROWS rows, compressed)
            if hashlib.sha256(data).hexdigest()[:16] != part.stem:
                raise ValueError("its bytes do not hash to its name")
            rows = pl.scan_parquet(io.BytesIO(data)).select(columns)
            if wanted is not None:
                rows = rows.join(wanted.lazy(), on=list(KEY_COLUMNS), how="semi")
            return rows.collect().cast({c: SCHEMA[c] for c in columns})
        except Exception as error:  # noqa: BLE001 (any unreadable part is a miss, never a wrong result)
            self.skipped.append(f"{part.name}: {error}")
            return None
