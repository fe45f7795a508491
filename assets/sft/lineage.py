"""The lineage summary a person reads on `sft_model` in the UI: which data, which models (no Dagster here)."""

from __future__ import annotations

from assets.common.data.report import markdown_table


def lineage_summary(snapshots: dict[str, dict], base_manifest: dict,
                    external_inputs: dict[str, list[str]] | None = None) -> str:
    """Markdown: the base model (path, content hash, chat template), then every upstream asset's tables (rows, content
    hash = data version) and model manifests (content hash), in the order given (upstream first), then the observed
    external inputs and the assets that record their hashes. ``snapshots`` are ``DataStorage.snapshot`` results by
    asset name and ``external_inputs`` input -> reading assets, as in lineage.json."""
    template = base_manifest.get("template") or {}
    lines = [f"**Base model** `{base_manifest.get('path')}`, content hash `{base_manifest.get('content_hash')}`, "
             f"chat template {template.get('name', '?')}", ""]
    rows = []
    for asset, snapshot in snapshots.items():
        for name, document in snapshot.get("documents", {}).items():
            content = document.get("content") or {}
            if "content_hash" in content:  # a model manifest: the model's own hash, not the JSON file's
                rows.append({"asset": asset, "item": f"model {content.get('name', name)}", "rows": "",
                             "content hash": content["content_hash"]})
        for name, table in snapshot.get("tables", {}).items():
            rows.append({"asset": asset, "item": f"table {name}", "rows": table["row_count"],
                         "content hash": table["content_hash"]})
    lines.append(markdown_table(rows, max_rows=200) if rows else "(no upstream tables in storage)")
    if external_inputs:
        readers = "; ".join(f"`{name}` (hash recorded by {', '.join(assets) or 'no upstream asset'})"
                            for name, assets in external_inputs.items())
        lines += ["", f"External inputs (observed, not stored here): {readers}"]
    return "\n".join(lines)
