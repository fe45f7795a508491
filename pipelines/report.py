"""`python -m pipelines.report`: where the latest trained model and its lineage are (read from the instance)."""

from __future__ import annotations

import sys

import dagster as dg


def latest_model(instance: dg.DagsterInstance) -> dict[str, str] | None:
    event = instance.get_latest_materialization_event(dg.AssetKey("sft_model"))
    if event is None or event.asset_materialization is None:
        return None
    metadata = event.asset_materialization.metadata
    return {key: str(metadata[key].value) for key in ("model_dir", "lineage_path", "adapter_dir", "train_rows_path")
            if key in metadata and metadata[key] is not None} | {"run_id": event.run_id}


def main() -> int:
    with dg.DagsterInstance.get() as instance:
        model = latest_model(instance)
    if model is None:
        print("no sft_model materialization in this Dagster instance yet", file=sys.stderr)
        return 1
    for key, value in model.items():
        print(f"  {key}: {value}")
    print(f"Trained model: {model['model_dir']}  lineage: {model['lineage_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
