"""`python -m pipelines.retention` against a real Dagster instance: `sft_mixture` materialized three times on three
tagged tables, each time followed by a model asset that writes a model directory with a lineage.json naming the
mixture version it read (a stand-in for `sft_model`: same metadata, no training). The last N runs keep their outputs;
older ones go unless something kept names them."""

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.common.data.retention import plan_retention
from assets.common.orchestration.resources import (
    BASE_MODEL,
    CURRENT,
    DECONTAMINATED_CONVERSATIONS,
    FILTERED_CONVERSATIONS,
    MODEL_MANIFEST,
    PROMOTED_MODEL,
    SFT_MIXTURE,
    TAGGED_CONVERSATIONS,
    TEACHER_MODEL,
    DataStorage,
)
from assets.filtering.assets import filtered_conversations
from assets.mixture.assets import sft_mixture
from pipelines.retention import main, retain
from tests.asset_runs import conversation, frame, materialization
from tests.retention_checks import assert_everything_kept_reads, disk_bytes

MIXTURE = SFT_MIXTURE.to_user_string()


@dg.asset(deps=[SFT_MIXTURE])
def model_stand_in(storage: DataStorage) -> dg.MaterializeResult:
    """A model directory named after the mixture it read, with a lineage.json naming that mixture version."""
    snapshot = storage.snapshot(MIXTURE)
    model_dir = storage.root_path / "models" / "sft" / f"tuned-{snapshot['tables']['data']['content_hash'][:8]}"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(snapshot["tables"]["data"]["content_hash"].encode() * 50)
    (model_dir / "lineage.json").write_text(json.dumps({"assets": {MIXTURE: snapshot}}))
    return dg.MaterializeResult(metadata={"model_dir": dg.MetadataValue.path(str(model_dir)),
                                          "lineage_path": dg.MetadataValue.path(str(model_dir / "lineage.json"))})


@pytest.fixture
def three_rounds(tmp_path):
    """Three runs of [sft_mixture, model_stand_in] on three tagged tables, in one instance; the first model promoted."""
    storage = DataStorage(root=str(tmp_path / "data"))
    models = []
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        for round_ in range(3):
            rows = [conversation(row, f"Question {row} of round {round_}: what is {row} + {round_}?",
                                 f"It is {row + round_}.") for row in range(6 + round_)]
            storage.write_table(TAGGED_CONVERSATIONS, frame(rows))
            result = dg.materialize([sft_mixture, model_stand_in], resources={"storage": storage}, instance=instance)
            assert result.success
            (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["model_stand_in"]]
            models.append(event.materialization.metadata["model_dir"].value)
        storage.write_json(PROMOTED_MODEL, "current", {"model_dir": models[0]})
        yield instance, storage, models


def mixture_versions(storage):
    folder = storage.asset_dir(MIXTURE) / "data"
    return {p.name for p in folder.iterdir() if p.name != CURRENT}


def test_the_last_runs_the_promoted_model_and_what_they_name_are_kept(three_rounds):
    instance, storage, models = three_rounds
    root = storage.root_path
    assert len(mixture_versions(storage)) == 3

    before = disk_bytes(root)
    two = retain(instance, root, keep_runs=2, dry_run=True)
    assert disk_bytes(root) == before  # nothing removed
    assert {str(u.path) for u in two.removed if u.kind == "model directory"} == set()  # runs 2, 3 + promoted 1
    dry = retain(instance, root, keep_runs=1, dry_run=True)
    assert disk_bytes(root) == before and dry.bytes_freed > two.bytes_freed > 0

    plan = retain(instance, root, keep_runs=1)
    assert [u.path for u in plan.removed] == [u.path for u in dry.removed]  # the dry run said what would go
    assert before - disk_bytes(root) == plan.bytes_freed == dry.bytes_freed
    removed = {str(u.path) for u in plan.removed}
    assert models[1] in removed and models[0] not in removed and models[2] not in removed
    assert plan.kept[Path(models[2])].startswith("run ") and plan.kept[Path(models[0])].startswith("named by")
    kept_mixtures = {json.loads((root / m / "lineage.json").read_text())["assets"][MIXTURE]["tables"]["data"]["path"]
                     for m in (models[0], models[2])}
    assert {str(storage.asset_dir(MIXTURE) / "data" / v) for v in mixture_versions(storage)} == kept_mixtures
    assert len(list((storage.asset_dir(TAGGED_CONVERSATIONS) / "data").glob("*.parquet"))) == 1  # the current one
    assert assert_everything_kept_reads(root) >= 4


def test_the_command_line_and_its_refusals(three_rounds, tmp_path, capsys, monkeypatch):
    """The command on another (empty) instance reports what a dry run would free; it refuses a negative N, a missing
    root, and any run in progress (here: a run its worker marked started)."""
    instance, storage, _ = three_rounds
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "another_instance"))  # no runs there: nothing kept by a run
    (tmp_path / "another_instance").mkdir()
    before = disk_bytes(storage.root_path)
    assert main(["--keep-runs", "5", "--root", str(storage.root_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    expected = plan_retention(storage.root_path).bytes_freed
    assert f"would free {expected:,} bytes" in out and expected > 0
    assert main(["--keep-runs", "-1", "--root", str(storage.root_path)]) == 1
    assert "--keep-runs -1: must be 0 or more" in capsys.readouterr().err
    assert main(["--keep-runs", "1", "--root", str(tmp_path / "nowhere")]) == 1
    assert f"{tmp_path / 'nowhere'}: no such data root" in capsys.readouterr().err

    job = dg.Definitions(assets=[sft_mixture], resources={"storage": storage}).resolve_implicit_global_asset_job_def()
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED)  # as a run worker marks its run
    with pytest.raises(RuntimeError, match="queued or in progress"):
        retain(instance, storage.root_path, keep_runs=0)
    assert disk_bytes(storage.root_path) == before


def test_caches_only_with_the_option_and_a_rebuild_reads_what_it_read_before(tmp_path, capsys, monkeypatch):
    """`filtered_conversations` on two shards, then again with shard 1 changed: the shard's old verdicts are stale.
    Retention without `--caches` leaves them; with it they go, the rebuild of the current input checks no shard and
    writes the same version, and the old input checks only the shard removed."""
    storage = DataStorage(root=str(tmp_path / "data"))
    for model in (TEACHER_MODEL, BASE_MODEL):
        storage.write_json(model, MODEL_MANIFEST, {"path": str(tmp_path / "tiny"), "special_tokens": ["<|im_start|>"]})
    tables = [frame([conversation(r, f"How do tides work? (shard {s}, case {r})", f"The Moon pulls the oceans"
                                  f"{' and so does the Sun' if s == changed else ''}. Case {s}-{r}.", shard=s)
                     for r in range(4) for s in range(2)]) for changed in (None, 1)]
    (tmp_path / "dagster").mkdir()
    results = storage.asset_dir(FILTERED_CONVERSATIONS) / "shard_results"
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        def build(table):
            storage.write_table(DECONTAMINATED_CONVERSATIONS, table)
            result = dg.materialize([filtered_conversations], resources={"storage": storage}, instance=instance)
            return materialization(result, FILTERED_CONVERSATIONS.to_user_string())

        first, current = build(tables[0]), build(tables[1])
        assert (first["shards_computed"], current["shards_computed"], current["shards_reused"]) == (2, 1, 1)
        assert len(list(results.glob("*.parquet"))) == 3
        assert retain(instance, storage.root_path, keep_runs=2, dry_run=True).caches == {}  # not without --caches

        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "another_instance"))
        (tmp_path / "another_instance").mkdir()
        assert main(["--keep-runs", "2", "--root", str(storage.root_path), "--caches", "--dry-run"]) == 0
        out = capsys.readouterr().out
        stale = results / next(iter(set(p.name for p in results.glob("*.parquet"))
                                    - set(json.loads((results / "IN_USE.json").read_text())["entries"])))
        assert f"filtered_conversations/shard_results: would free {stale.stat().st_size:,} bytes (1 entries " \
               "removed, 2 kept)" in out and stale.exists()

        plan = retain(instance, storage.root_path, keep_runs=2, caches=True)
        assert [u.path for u in plan.removed if u.kind == "cache entry"] == [stale] and not stale.exists()
        again = build(tables[1])
        assert (again["shards_computed"], again["path"], again["content_hash"]) == (
            0, current["path"], current["content_hash"])
        assert build(tables[0])["shards_computed"] == 1
