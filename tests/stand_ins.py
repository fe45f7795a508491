"""A stand-in `sft_model` for the tests of the assets after it (evaluation, promotion). No `from __future__ import
annotations` here: Dagster reads the config class from the function's annotation."""

import dagster as dg

from assets.common.models.integrity import model_content_hash


class Candidate(dg.Config):
    model_dir: str


@dg.asset(name="sft_model")
def stand_in_model(config: Candidate) -> dg.MaterializeResult:
    """Trains nothing: records the directory it is given and its content hash, as the real asset does."""
    return dg.MaterializeResult(metadata={"model_dir": dg.MetadataValue.path(config.model_dir),
                                          "content_hash": model_content_hash(config.model_dir)})
