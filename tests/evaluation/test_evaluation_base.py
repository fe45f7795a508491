"""The base an evaluation compares the candidate with is the one in the candidate's lineage.json, re-hashed: a base
gone or changed since training fails the evaluation (before any engine starts), naming the file and the fix; a
`base_model` asset that moved on since does not change what is compared."""

import json
import shutil

import dagster as dg
import pytest

from assets.common.models.integrity import model_content_hash
from assets.common.orchestration.resources import BASE_MODEL, MODEL_MANIFEST, DataStorage, VLLMEngine
from assets.evaluation.assets import assistant_evaluation
from assets.evaluation.base import BaseModelError, lineage_base
from tests.asset_runs import failure_text
from tests.stand_ins import stand_in_model


@pytest.fixture
def models(tiny_model_dir, tmp_path):
    """A base (a copy of the tiny model) and a candidate whose lineage records that base and its hash."""
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_model_dir, tuned)
    (tuned / "lineage.json").write_text(json.dumps({"base_model": {"path": str(base),
                                                                   "content_hash": model_content_hash(base)}}))
    return base, tuned


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_lineage_base_is_evaluated_even_when_the_current_base_model_differs(models, tiny_model_dir):
    base, tuned = models
    recorded = model_content_hash(base)
    same = lineage_base(tuned, {"path": str(base), "content_hash": recorded})
    assert same == {"model_dir": str(base), "content_hash": recorded, "source": f"{tuned / 'lineage.json'} base_model",
                    "current_base_model": "same"}
    moved_on = lineage_base(tuned, {"path": "/models/new-base", "content_hash": "f" * 64})
    assert moved_on["model_dir"] == str(base)
    assert moved_on["current_base_model"].startswith("differs: the current base_model is /models/new-base")
    assert lineage_base(tuned, None)["current_base_model"] == "none"


def test_a_changed_base_directory_fails(models):
    base, tuned = models
    recorded = model_content_hash(base)
    flip_a_byte(base / "model.safetensors")
    with pytest.raises(BaseModelError, match=rf"{base}: content hash [0-9a-f]{{64}}, but base_model.content_hash "
                                             rf"in .*lineage.json records {recorded}: the directory's files were "
                                             "changed after it was written.*Retrain sft_model"):
        lineage_base(tuned, None)


def test_a_missing_base_directory_or_lineage_fails(models):
    base, tuned = models
    shutil.rmtree(base)
    with pytest.raises(BaseModelError, match=rf"{base}: the model directory base_model.content_hash in "
                                             rf".*lineage.json names does not exist.*Restore that directory, or: "
                                             "Retrain sft_model"):
        lineage_base(tuned, None)
    (tuned / "lineage.json").write_text(json.dumps({"base_model": {"path": str(base)}}))
    with pytest.raises(BaseModelError, match="no base_model.path and base_model.content_hash"):
        lineage_base(tuned, None)


def test_the_evaluation_refuses_a_candidate_whose_base_changed_before_any_engine_starts(models, tmp_path,
                                                                                        tiny_model_dir):
    """The current base_model is intact but is not the one the candidate was trained from: it may not stand in."""
    base, tuned = models
    storage = DataStorage(root=str(tmp_path / "data"))
    storage.write_json(BASE_MODEL, MODEL_MANIFEST, {"path": str(tiny_model_dir),
                                                    "content_hash": model_content_hash(tiny_model_dir)})
    flip_a_byte(base / "model.safetensors")
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize(
            [stand_in_model, assistant_evaluation], instance=instance, raise_on_error=False,
            resources={"storage": storage, "engine": VLLMEngine(max_model_len=1024, cpu_kv_cache_gb=1)},
            run_config={"ops": {"sft_model": {"config": {"model_dir": str(tuned)}}}})
    assert not result.success
    text = failure_text(result)
    assert f"{base}: content hash" in text and "but base_model.content_hash" in text
    assert f"in {tuned / 'lineage.json'}" in text and "Retrain sft_model on the current base_model" in text
    assert not storage.has(assistant_evaluation.key, "report")
