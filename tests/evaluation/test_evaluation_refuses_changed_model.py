"""`assistant_evaluation` re-hashes the candidate's model directory against the content hash its `sft_model`
materialization recorded, and refuses one whose bytes changed since, before any engine starts (a real Dagster
instance; the candidate is a stand-in `sft_model` whose directory is a copy of the tiny model)."""

import shutil

import dagster as dg
import polars as pl

from assets.common.models.integrity import model_content_hash
from assets.common.orchestration.resources import BASE_MODEL, MODEL_MANIFEST, SFT_MIXTURE, DataStorage, VLLMEngine
from assets.evaluation.assets import assistant_evaluation
from tests.asset_runs import failure_text
from tests.stand_ins import stand_in_model


def test_a_candidate_whose_directory_changed_is_refused_before_evaluation(tmp_path, tiny_model_dir):
    storage = DataStorage(root=str(tmp_path / "data"))
    storage.write_json(BASE_MODEL, MODEL_MANIFEST, {"path": str(tiny_model_dir), "content_hash": "base"})
    storage.write_table(SFT_MIXTURE, pl.DataFrame({"split": ["validation"], "messages": [[
        {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]]}))
    tuned = shutil.copytree(tiny_model_dir, tmp_path / "tuned")
    resources = {"storage": storage, "engine": VLLMEngine(max_model_len=1024, cpu_kv_cache_gb=1)}
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        trained = dg.materialize([stand_in_model, assistant_evaluation], instance=instance, resources=resources,
                                 run_config={"ops": {"sft_model": {"config": {"model_dir": str(tuned)}}}},
                                 selection=[stand_in_model.key])
        recorded = model_content_hash(tuned)
        config = (tuned / "config.json").read_text()
        (tuned / "config.json").write_text(config.replace('"hidden_size": 128', '"hidden_size": 129'))
        result = dg.materialize([stand_in_model, assistant_evaluation], instance=instance, resources=resources,
                                selection=[assistant_evaluation.key], raise_on_error=False)
    assert trained.success and not result.success
    text = failure_text(result)
    assert (f"{tuned}: content hash {model_content_hash(tuned)}, but the sft_model materialization of run "
            f"{trained.run_id} (metadata content_hash) records {recorded}") in text, text
    assert not storage.has("assistant_evaluation", "answers")  # nothing evaluated
    starts = [e for e in result.all_events if e.event_type_value == "STEP_START"]
    assert len(starts) == 1  # refused at once, not retried
