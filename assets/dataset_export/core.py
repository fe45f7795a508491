"""The SFT mixture as a Hugging Face ``datasets`` folder with its card (no Dagster here).

``DatasetDict.save_to_disk`` of one split per value of the mixture's ``split`` column (``train``, ``validation``),
each split the mixture's rows in table order with every column but ``split``, and the dataset card as ``README.md``
beside ``dataset_dict.json``. The folder's name is the first 16 hex digits of the SHA-256 of the mixture table's
content hash and the card (which names the ``datasets`` version that writes it): the same mixture and reports give
the same name, and a folder is never replaced. An existing folder of that name is complete (folders are assembled
beside their name and renamed into place) and is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from assets.common.data.storage import VERSION_CHARS, directory_written_whole, sha256_dir, sha256_text
from assets.dataset_export.card import SPLITS

CARD = "README.md"


class ExportError(ValueError):
    """The mixture table cannot be exported as it is: the message names the table, the field and the fix."""


@dataclass(frozen=True)
class ExportedDataset:
    path: Path
    content_hash: str  # SHA-256 over every file of the folder (names and bytes)
    rows: dict[str, int]  # per split
    reused: bool  # the folder already existed (same mixture and card): nothing was written


def split_frames(mixture: pl.DataFrame, source: str) -> dict[str, pl.DataFrame]:
    """The mixture's rows per split (``train`` first), without the ``split`` column; ``source`` names the table in
    errors. Refuses a table without ``split``, or with a null or unknown split value."""
    if "split" not in mixture.columns:
        raise ExportError(f"{source}: no column 'split' (expected 'train' or 'validation' on every row, as "
                          f"sft_mixture writes it); columns are {mixture.columns}. Re-materialize sft_mixture.")
    bad = mixture.with_row_index("__row").filter(~pl.col("split").is_in(SPLITS).fill_null(False))
    if bad.height:
        row, value = bad["__row"][0], bad["split"][0]
        raise ExportError(f"{source}: row {row}: field 'split' is {value!r}, expected one of {list(SPLITS)}; "
                          f"{bad.height} of {mixture.height} rows have another value. Re-materialize sft_mixture.")
    return {name: part for name in SPLITS
            if (part := mixture.filter(pl.col("split") == name).drop("split")).height}


def folder_name(mixture_hash: str, card: str) -> str:
    """The export's name: a function of the mixture table's content hash and the card's text only."""
    return sha256_text(f"{mixture_hash}\n{card}")[:VERSION_CHARS]


def _dataset_dict(splits: dict[str, pl.DataFrame], license_id: str, description: str):
    import datasets

    info = datasets.DatasetInfo(description=description, license=license_id)
    return datasets.DatasetDict({name: datasets.Dataset.from_polars(frame, info=info, split=name)
                                 for name, frame in splits.items()})


def write_dataset(splits: dict[str, pl.DataFrame], mixture_hash: str, card: str, parent: str | Path,
                  license_id: str = "") -> ExportedDataset:
    """Write ``splits`` (:func:`split_frames` of the mixture) as ``parent/<name>/`` (see the module docstring) with
    ``card`` as its README.md, unless a folder of that name exists. ``license_id`` also goes into each split's
    ``dataset_info.json``."""
    import datasets

    path = Path(parent) / folder_name(mixture_hash, card)
    rows = {name: frame.height for name, frame in splits.items()}
    reused = path.exists()
    if not reused:
        quiet = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()
        try:
            with directory_written_whole(path) as tmp:
                description = f"SFT mixture {mixture_hash}: see README.md"
                _dataset_dict(splits, license_id, description).save_to_disk(str(tmp))
                (tmp / CARD).write_text(card, encoding="utf-8")
        finally:
            if not quiet:
                datasets.enable_progress_bars()
    return ExportedDataset(path=path, content_hash=sha256_dir(path), rows=rows, reused=reused)
