"""Retention on a real data root written through `DataStorage`: table and report versions, a promoted pointer, model
directories with lineage.json (one continued from another, one trained on an older base model), prepared base models
sharing weights by hard link, checkpoints and an interrupted write. What is kept still reads with its recorded hash;
what nothing references is gone; the bytes reported are the bytes the root lost."""

import json
import os
from pathlib import Path

import polars as pl
import pytest

from assets.common.data.retention import MODEL, VERSION, WORK, apply_retention, plan_retention
from assets.common.models.integrity import model_content_hash
from assets.common.orchestration.resources import CURRENT, PROMOTED_MODEL, SFT_MIXTURE, DataStorage
from tests.retention_checks import assert_everything_kept_reads, disk_bytes

MIXTURE = SFT_MIXTURE.to_user_string()


def model_dir(path: Path, weights: bytes | Path, lineage: dict | None = None) -> Path:
    """A model directory: config.json, weights (bytes, or a hard link to a file), lineage.json and train rows."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"name": path.name}))
    if isinstance(weights, Path):
        os.link(weights, path / "model.safetensors")
    else:
        (path / "model.safetensors").write_bytes(weights)
    if lineage is not None:
        (path / "lineage.json").write_text(json.dumps(lineage))
        pl.DataFrame({"conversation_id": [path.name]}).write_parquet(path / "train_rows.parquet")
    return path


@pytest.fixture
def data_root(tmp_path):
    """Four trainings on four mixture versions and two base models; the third continued from the first and is
    promoted (the second was promoted before it); the last run trained the fourth; a fifth mixture is current."""
    storage = DataStorage(root=str(tmp_path / "data"))
    root = storage.root_path
    embedded = model_dir(root / "models" / "embedded" / "tiny", b"w" * 5000)
    students = {"old": model_dir(root / "models" / "student" / "tiny-0", b"o" * 3000),
                "new": model_dir(root / "models" / "student" / "tiny-1", embedded / "model.safetensors")}
    models = {}

    def base(which):
        storage.write_json("base_model", "manifest", {"path": str(students[which]),
                                                     "content_hash": model_content_hash(students[which])})
        return storage.read_json("base_model", "manifest")

    def train(i, manifest, start=None):
        storage.write_table(MIXTURE, pl.DataFrame({"conversation_id": [f"c{j}" for j in range(i * 10)]}))
        storage.write_json(MIXTURE, "manifest", {"version": i})
        lineage = {"assets": {MIXTURE: storage.snapshot(MIXTURE)}, "base_model": manifest,
                   "training": {"initial_weights": str(start or manifest["path"])}}
        models[i] = model_dir(root / "models" / "sft" / f"tuned-{i}", os.urandom(2000 + i), lineage)

    def promote(i):
        storage.write_json(PROMOTED_MODEL, "current", {"model_dir": str(models[i]),
                                                       "content_hash": model_content_hash(models[i])})

    train(1, base("old"))
    manifest = base("new")
    train(2, manifest)
    promote(2)
    train(3, manifest, start=models[1])
    promote(3)
    train(4, manifest)
    storage.write_table(MIXTURE, pl.DataFrame({"conversation_id": ["current"]}))
    old_checkpoints = model_dir(root / "models" / "sft" / ".tuned-5.checkpoints" / "checkpoint-2", b"c" * 700)
    new_checkpoints = model_dir(root / "models" / "sft" / ".tuned-6.checkpoints" / "checkpoint-1", b"n" * 800)
    leftover = storage.asset_dir(MIXTURE) / "data" / ".version.parquet.abc.tmp"
    leftover.write_bytes(b"half a table")
    since = new_checkpoints.stat().st_mtime - 60
    for path in (*old_checkpoints.iterdir(), leftover):
        os.utime(path, (since - 3600, since - 3600))
    return storage, models, students, embedded, since


def versions(storage, asset, name):
    folder = storage.asset_dir(asset) / name
    return sorted(p for p in folder.iterdir() if p.name != CURRENT and not p.name.startswith("."))


def test_retention_keeps_every_referenced_path_and_frees_exactly_what_it_reports(data_root):
    storage, models, students, embedded, since = data_root
    root = storage.root_path
    tables, reports = versions(storage, MIXTURE, "data"), versions(storage, MIXTURE, "manifest")
    pointers, bases = versions(storage, PROMOTED_MODEL, "current"), versions(storage, "base_model", "manifest")
    assert (len(tables), len(reports), len(pointers), len(bases)) == (5, 4, 2, 2)
    last_run = [(f"model_dir: {models[4]}", "run r4")]

    before = disk_bytes(root)
    plan = plan_retention(root, last_run, keep_work_since=since)
    assert disk_bytes(root) == before  # planning (= --dry-run) removes nothing
    only_tuned_2 = json.loads((models[2] / "lineage.json").read_text())["assets"][MIXTURE]
    gone = {models[2], Path(only_tuned_2["tables"]["data"]["path"]),
            Path(only_tuned_2["documents"]["manifest"]["path"]), embedded,
            root / "models" / "sft" / ".tuned-5.checkpoints",
            storage.asset_dir(MIXTURE) / "data" / ".version.parquet.abc.tmp"}
    gone.add(next(p for p in bases if str(students["old"]) in p.read_text()))  # lineages copy it, not name it
    old_pointer = next(p for p in pointers if str(models[2]) in p.read_text())
    assert {u.path for u in plan.removed} == gone | {old_pointer}
    assert {u.kind for u in plan.removed} == {VERSION, MODEL, WORK}
    assert plan.kept[models[3]].startswith("named by promoted_model/current/")  # the promoted model
    assert plan.kept[models[1]] == "named by models/sft/tuned-3"  # it continued from tuned-1
    assert plan.kept[students["old"]] == "named by models/sft/tuned-1"  # tuned-1's base model
    assert plan.kept[models[4]] == "run r4"
    assert plan.kept[root / "models" / "sft" / ".tuned-6.checkpoints"] == "working files modified during the kept runs"

    freed = apply_retention(plan)
    assert freed == plan.bytes_freed == before - disk_bytes(root) > 0
    assert not any(path.exists() for path in gone | {old_pointer})
    # the embedded original's weights live on as the new student's hard link: only its config.json was freed
    assert (students["new"] / "model.safetensors").read_bytes() == b"w" * 5000
    assert assert_everything_kept_reads(root) >= 12
    assert storage.read_json(PROMOTED_MODEL, "current")["model_dir"] == str(models[3])

    again = plan_retention(root, last_run, keep_work_since=since)
    assert again.removed == [] and again.bytes_freed == 0  # nothing left to remove


def test_without_runs_only_current_and_promoted_lineage_survive(data_root):
    storage, models, students, _, _ = data_root
    plan = plan_retention(storage.root_path)
    removed = {u.path for u in plan.removed}
    assert models[4] in removed and models[2] in removed and models[3] not in removed and models[1] not in removed
    assert storage.root_path / "models" / "sft" / ".tuned-6.checkpoints" in removed  # no kept run: no window
    apply_retention(plan)
    assert_everything_kept_reads(storage.root_path)


def test_an_unreadable_json_removes_nothing(data_root):
    storage, models, _, _, _ = data_root
    (models[3] / "lineage.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tuned-3/lineage.json: unreadable .* removes nothing"):
        plan_retention(storage.root_path)


def test_what_changes_after_the_check_is_left_in_place(data_root):
    """A unit written after the caller checked that nothing runs (a run that started meanwhile) is not removed."""
    storage, models, _, _, since = data_root
    root = storage.root_path
    plan = plan_retention(root, keep_work_since=since)
    assert models[2] in {u.path for u in plan.removed}
    checked = (models[2] / "config.json").stat().st_mtime + 1
    os.utime(models[2] / "config.json", (checked + 5, checked + 5))  # changed after the check
    before = disk_bytes(root)
    freed = apply_retention(plan, unchanged_since=checked)
    assert models[2].is_dir() and plan.kept[models[2]] == "changed while retention ran"
    assert models[2] not in {u.path for u in plan.removed}
    assert freed == plan.bytes_freed == before - disk_bytes(root) > 0


def test_folder_versions_beside_a_current_pointer_are_versions_too(tmp_path):
    """`sft_dataset` writes `<sha16>/` folders beside its CURRENT pointer: an old one nothing names is removed, the
    current one and one a kept run names stay."""
    folder = tmp_path / "data" / "sft_dataset" / "dataset"
    versions = {}
    for name in ("0123456789abcdef", "fedcba9876543210", "00000000aaaaaaaa"):
        (folder / name).mkdir(parents=True)
        (folder / name / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
        versions[name] = folder / name
    (folder / CURRENT).write_text("fedcba9876543210\n")
    plan = plan_retention(tmp_path / "data", referenced=[(str(versions["00000000aaaaaaaa"]), "a kept run")])
    assert [u.path for u in plan.removed] == [versions["0123456789abcdef"]]
    assert {u.kind for u in plan.removed} == {VERSION}
    apply_retention(plan)
    assert not versions["0123456789abcdef"].exists()
    assert (versions["fedcba9876543210"] / "dataset_dict.json").exists()
    assert (versions["00000000aaaaaaaa"] / "dataset_dict.json").exists()
