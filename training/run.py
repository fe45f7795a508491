"""One training run from a data set, shared by the `sft_model` asset and `python -m training` (no Dagster here).

:func:`run_training` decides where training starts (the base model, or in continual mode the previous fine-tune plus
rehearsal rows: :mod:`training.continual`), where the model goes, what its lineage records, and calls
:func:`training.trainer.train`. Callers only read their inputs and report the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from assets.common.data.storage import sha256_text
from training.config import TrainConfig
from training.continual import ContinualConfig, StartingPoint, starting_point
from training.dataset import TRAIN_SPLIT, VALIDATION_SPLIT, check_rows, train_rows_table
from training.model_dir import TrainResult, training_code_version
from training.trainer import train

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainingRun:
    result: TrainResult
    start: StartingPoint
    run_key: str | None  # None: the output directory was named by the caller
    new_train_rows: int  # the data set's train rows (dropped ones included)
    rehearsal_rows: int
    validation_rows: int

    @property
    def retrained_from(self) -> str | dict[str, Any]:
        return self.start.retrained_from


def run_training(
    base_model: Mapping[str, Any],
    mixture: pl.DataFrame,
    config: TrainConfig,
    continual: ContinualConfig,
    output_root: str | Path,
    model_name: str,
    *,
    data_hash: str | None = None,
    previous_model_dir: str | Path | None = None,
    no_previous_reason: str = "no previous model",
    lineage_extras: Mapping[str, Any] | None = None,
    log: Log = print,
    warn: Log | None = None,
    token_cache: str | Path | None = None,
) -> TrainingRun:
    """Train a model on ``mixture`` and write its directory.

    - ``base_model``: the base model's manifest, at least ``path`` and ``content_hash`` (recorded in the lineage).
    - ``mixture``: the data set, one row per conversation: ``conversation_id``, ``split`` ("train" / "validation"),
      ``messages`` and provenance columns (``training.dataset.TRAIN_ROW_COLUMNS``; others are not kept).
    - ``continual`` with ``previous_model_dir``: continual mode starts from that model with rehearsal of its rows;
      without a previous model it trains from the base model and records ``no_previous_reason``.
    - The model directory: ``<output_root>/<model_name>-<run key>`` when ``data_hash`` (the data set's content hash)
      is given, the run key hashing base model, data, config, continual settings, training code and library versions
      (so the same inputs resume the same checkpoints); else ``<output_root>/<model_name>``. An existing directory
      is never replaced: see :mod:`training.model_dir` (``result.model_dir`` says where the model went).
    - ``lineage_extras``: what the caller adds to lineage.json (upstream assets, run id, data path).
    - ``token_cache``: the mixture's token cache (``training.trainer.train``), read when training starts from the
      base model (a continual run's tokenizer is the previous model directory's: another identity, not looked up).
    """
    check_rows(mixture, splits=(TRAIN_SPLIT, VALIDATION_SPLIT), what="training data")
    new_train = mixture.filter(pl.col("split") == TRAIN_SPLIT).height
    validation = mixture.height - new_train
    start = starting_point(continual, base_model["path"], base_model["content_hash"], previous_model_dir,
                           mixture["conversation_id"].to_list(), new_train, no_previous_reason)
    _log_start(start, continual, log, warn or log)
    key = run_key(base_model["content_hash"], data_hash, config, continual, start) if data_hash else None
    output_dir = Path(output_root) / (f"{model_name}-{key}" if key else model_name)
    if start.previous is not None and output_dir.resolve() == start.previous.path.resolve():
        raise ValueError(f"{output_dir}: the new model would overwrite the previous model it starts from; "
                         "choose another output directory")
    lineage = {"model_name": model_name, **(lineage_extras or {}), "base_model": dict(base_model),
               "retrained_from": start.retrained_from}
    rehearsal = start.rehearsal_rows
    n_rehearsal = rehearsal.height if rehearsal is not None else 0
    log(f"training {config.method} from {start.model_path} on {new_train} conversations + {n_rehearsal} "
        f"rehearsal ({validation} validation) -> {output_dir}")
    result = train(start.model_path, train_rows_table(mixture, rehearsal), output_dir, config, lineage=lineage,
                   log=log, token_cache=token_cache if start.previous is None else None)
    return TrainingRun(result=result, start=start, run_key=key, new_train_rows=new_train,
                       rehearsal_rows=n_rehearsal, validation_rows=validation)


def run_key(base_hash: str, data_hash: str, config: TrainConfig, continual: ContinualConfig,
            start: StartingPoint) -> str:
    """16 hex digits naming everything that decides a run's model: base model, data, config (and continual settings
    + previous model), the training code and the libraries' versions (``training_code_version``). A change to any of
    them names a new directory; the directory a lineage or the promoted model names is never written again."""
    code = training_code_version()
    key = (f"{base_hash}|{data_hash}|{sorted(config.to_dict().items())}|{code['sources']}|"
           f"{sorted(code['libraries'].items())}")
    if continual.continual:  # (base mode keeps the key it always had)
        key += f"|{sorted(continual.to_dict().items())}|{start.previous.content_hash if start.previous else ''}"
    return sha256_text(key)[:16]


def _log_start(start: StartingPoint, continual: ContinualConfig, log: Log, warn: Log) -> None:
    if continual.continual and start.previous is None:
        warn(f"continual mode: {start.retrained_from['reason']}")
    if start.rehearsal is None:
        return
    stats = start.rehearsal.stats
    log(f"continual mode: starting from {start.model_path}; rehearsal {stats['rows']} rows (requested "
        f"{stats['requested']}, available {stats['available']}, {stats['excluded_in_new_data']} already in the new "
        "data)")
    if stats["rows"] < stats["requested"]:
        warn(f"continual mode: only {stats['rows']} of {stats['requested']} rehearsal rows available (the rest of "
             "the previous training set is in the new data)")
