"""`sft_model` checks the mixture's conversation schema when it reads it, before any training."""

import polars as pl

from assets.common.orchestration.resources import BASE_MODEL, MODEL_MANIFEST, SFT_MIXTURE, DataStorage
from assets.sft.assets import sft_model
from tests.asset_runs import conversation, failure_text, frame, materialize, with_bad_role


def test_bad_mixture_row_fails_before_training(tmp_path):
    storage = DataStorage(root=str(tmp_path / "data"))
    storage.write_json(BASE_MODEL, MODEL_MANIFEST, {"path": str(tmp_path / "no-model"), "content_hash": "h"})
    mixture = frame([conversation(i, f"Question {i}?", f"Answer {i}.") for i in range(3)])
    stored = storage.write_table(SFT_MIXTURE, with_bad_role(mixture, 1).with_columns(split=pl.lit("train")))
    result = materialize([sft_model], storage, tmp_path / "dagster")
    assert not result.success
    text = failure_text(result)
    assert (f"asset 'sft_mixture', table 'data' ({stored.path}): row 1 (conversation_id '00000-0000001'): "
            "messages[1].role: 'bot' is not one of system/user/assistant") in text, text
    assert not (tmp_path / "data" / "models").exists()  # nothing trained
