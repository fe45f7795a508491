"""`sft_dataset`: the SFT mixture exported as a Hugging Face `datasets` folder with its dataset card."""

import dagster as dg

from assets.common.data.storage import write_bytes_atomic
from assets.common.orchestration.resources import (
    CURRENT,
    DECONTAMINATED_CONVERSATIONS,
    MAGPIE_CONVERSATIONS,
    MODEL_MANIFEST,
    REBUILD_ON_UPSTREAM_CHANGE,
    SFT_DATASET,
    SFT_MIXTURE,
    TEACHER_MODEL,
    DataStorage,
    upstream_assets,
)
from assets.dataset_export.card import CardInputs, front_matter, render_card
from assets.dataset_export.core import split_frames, write_dataset
from assets.dataset_export.license import teacher_license

FOLDERS = "dataset"  # <root>/sft_dataset/dataset/<name>/ + CURRENT naming the latest


def _json_or_empty(storage: DataStorage, asset: dg.AssetKey, name: str) -> dict:
    return storage.read_json(asset, name) if storage.has(asset, name) else {}


def _card_inputs(context: dg.AssetExecutionContext, storage: DataStorage) -> CardInputs:
    import datasets

    mixture_snapshot = storage.snapshot(SFT_MIXTURE)
    mixture = storage.read_conversations(SFT_MIXTURE)
    snapshots = {name: snap for name in upstream_assets(context)
                 if (snap := mixture_snapshot if name == SFT_MIXTURE.to_user_string() else storage.snapshot(name))
                 and (snap["tables"] or snap["documents"])}
    teacher = _json_or_empty(storage, TEACHER_MODEL, MODEL_MANIFEST)
    generation = [storage.read_json(MAGPIE_CONVERSATIONS, name)
                  for name in storage.names(MAGPIE_CONVERSATIONS, ".json") if name.startswith("report-")]
    return CardInputs(mixture=mixture, mixture_hash=mixture_snapshot["tables"]["data"]["content_hash"],
                      manifest=_json_or_empty(storage, SFT_MIXTURE, "manifest"), teacher=teacher,
                      license=teacher_license(teacher), snapshots=snapshots, generation_reports=generation,
                      decontamination=_json_or_empty(storage, DECONTAMINATED_CONVERSATIONS, "report") or None,
                      datasets_version=datasets.__version__)


@dg.asset(group_name="data", kinds={"huggingface", "polars"}, deps=[SFT_MIXTURE],
          automation_condition=REBUILD_ON_UPSTREAM_CHANGE)
def sft_dataset(context: dg.AssetExecutionContext, storage: DataStorage) -> dg.MaterializeResult:
    """The current SFT mixture as a Hugging Face `datasets` folder (`DatasetDict.save_to_disk`: `train` and
    `validation` splits from the mixture's `split` column) with a dataset card `README.md`: Hub metadata (license of
    the teacher's output, languages, size category, task categories, configs), the teacher and generation settings,
    the funnel of every stage, decontamination per benchmark, the mixture manifest and the content hashes that tie
    it to a model's lineage. Each export is a new folder named by the hash of the mixture table and the card, never
    replaced; `CURRENT` beside the folders names the latest. Automated: a cheap copy, kept in step with the mixture
    a model is trained on."""
    inputs = _card_inputs(context, storage)
    splits = split_frames(inputs.mixture, f"asset 'sft_mixture', table 'data' ({storage.table_path(SFT_MIXTURE)})")
    card = render_card(inputs)
    parent = storage.asset_dir(SFT_DATASET) / FOLDERS
    exported = write_dataset(splits, inputs.mixture_hash, card, parent, license_id=inputs.license.identifier)
    write_bytes_atomic(f"{exported.path.name}\n".encode(), parent / CURRENT)
    meta = front_matter(inputs)
    context.log.info(f"{'kept' if exported.reused else 'wrote'} {exported.path} ({exported.rows}); "
                     f"license {meta['license']}: {inputs.license.evidence}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(exported.path)),
            "content_hash": exported.content_hash,
            "dagster/row_count": sum(exported.rows.values()),
            **{f"{split}_rows": exported.rows.get(split, 0) for split in ("train", "validation")},
            "mixture_content_hash": inputs.mixture_hash,
            "reused": exported.reused,
            "license": meta["license"],
            "license_evidence": inputs.license.evidence,
            "languages": dg.MetadataValue.json(meta.get("language", [])),
            "size_category": meta["size_categories"][0],
            "card": dg.MetadataValue.md(card),
        },
        data_version=dg.DataVersion(exported.content_hash),
    )
