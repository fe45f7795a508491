"""The dataset card (``README.md``) of an exported SFT mixture: Hub YAML metadata, then what a reader needs to trust
and reuse the data (no Dagster here).

Everything in it is read from what the stages stored: the mixture table and its manifest, the teacher's manifest,
each stage's report (the funnel, generation settings, decontamination per benchmark) and the content hashes of every
upstream table and document (``DataStorage.snapshot``, as ``sft_model``'s ``lineage.json`` records them). No time,
host or local path is written: the same inputs give the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import polars as pl
import yaml

from assets.common.data.report import markdown_table
from assets.dataset_export.license import TeacherLicense

SPLITS = ("train", "validation")  # the mixture's `split` values, in the order the card lists them
# The Hub's size categories: (upper bound, exclusive; label)
SIZE_CATEGORIES = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T"))
# Hub task categories beyond text-generation, by the tagging taxonomy's task (assets/common/data/taxonomy.py)
TASK_CATEGORIES = {"information_seeking": "question-answering", "advice_seeking": "question-answering",
                   "reasoning": "question-answering", "translation": "translation",
                   "summarization": "summarization"}
LANGUAGE_COLUMNS = ("instruction_language", "response_language")  # tagging's ISO 639-1 codes
NOT_A_LANGUAGE = {"und", "unknown", ""}
GENERATED = "generated"  # the mixture's `source` of generated rows (a user source may not take the name)


@dataclass(frozen=True)
class CardInputs:
    """What the card is written from. ``snapshots``: ``DataStorage.snapshot`` by asset name, upstream first (the
    mixture's own included); ``generation_reports``: the generation shards' reports; ``decontamination``: the
    decontamination stage's report (None when not stored)."""

    mixture: pl.DataFrame
    mixture_hash: str
    manifest: dict
    teacher: dict
    license: TeacherLicense
    snapshots: dict[str, dict]
    generation_reports: list[dict] = field(default_factory=list)
    decontamination: dict | None = None
    datasets_version: str = ""


def size_category(rows: int) -> str:
    """The Hub's size category of a dataset of ``rows`` examples."""
    return next((label for bound, label in SIZE_CATEGORIES if rows < bound), "n>1T")


def languages(df: pl.DataFrame) -> list[str]:
    """The tagged instruction and response languages present (ISO 639-1), sorted; [] when not tagged."""
    found = set()
    for column in LANGUAGE_COLUMNS:
        if column in df.columns:
            found |= {str(v) for v in df[column].drop_nulls().unique().to_list()}
    return sorted(found - NOT_A_LANGUAGE)


def task_categories(df: pl.DataFrame) -> list[str]:
    tasks = set(df["task"].drop_nulls().unique().to_list()) if "task" in df.columns else set()
    return ["text-generation", *sorted({TASK_CATEGORIES[t] for t in tasks if t in TASK_CATEGORIES})]


def user_sources(df: pl.DataFrame) -> dict[str, int]:
    """Rows per user SFT source (the ``source`` column; generated rows have none or ``generated``)."""
    if "source" not in df.columns:
        return {}
    users = df.filter(pl.col("source").is_not_null() & (pl.col("source") != GENERATED))
    return dict(sorted(users.group_by("source").len().iter_rows()))


def front_matter(inputs: CardInputs) -> dict:
    """The card's YAML metadata (the Hub's dataset card fields)."""
    df = inputs.mixture
    langs = languages(df)
    users = user_sources(df)
    splits = [s for s in SPLITS if (df["split"] == s).any()]
    meta = {
        "license": inputs.license.identifier if not users else "other",
        "language": langs,
        "multilinguality": "multilingual" if len(langs) > 1 else "monolingual",
        "size_categories": [size_category(df.height)],
        "task_categories": task_categories(df),
        "annotations_creators": ["machine-generated"],
        "language_creators": ["machine-generated", *(["found"] if users else [])],
        "source_datasets": ["original"],
        "pretty_name": f"SFT mixture {inputs.mixture_hash[:12]}",
        "tags": ["synthetic", "sft", "magpie"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}],
    }
    if not langs:
        del meta["language"], meta["multilinguality"]
    return meta


def render_card(inputs: CardInputs) -> str:
    """The whole README.md: YAML front matter, then the prose sections."""
    header = yaml.safe_dump(front_matter(inputs), sort_keys=False, allow_unicode=True, width=1000)
    sections = [_summary(inputs), _teacher(inputs), _generation(inputs), _funnel(inputs),
                _decontamination(inputs.decontamination), _mixture(inputs.manifest), _lineage(inputs),
                _columns(inputs.mixture), _license(inputs), _usage()]
    return f"---\n{header}---\n\n" + "\n\n".join(s.strip() for s in sections) + "\n"


def _table(rows: list[dict]) -> str:
    return markdown_table(rows, max_rows=1000) if rows else "(none)"


def _summary(inputs: CardInputs) -> str:
    df = inputs.mixture
    counts = ", ".join(f"{s} {int((df['split'] == s).sum())}" for s in SPLITS)
    langs = ", ".join(languages(df)) or "not tagged"
    return (f"# SFT mixture `{inputs.mixture_hash[:12]}`\n\nSupervised fine-tuning conversations (a `messages` column "
            f"of `{{role, content}}` turns) generated Magpie-style by a teacher model, deduplicated, decontaminated "
            f"against evaluation sets, filtered, tagged and mixed by the SFT data factory. {df.height} rows "
            f"({counts}); languages: {langs}. Written with `datasets` {inputs.datasets_version or '?'}.")


def _teacher(inputs: CardInputs) -> str:
    t = inputs.teacher
    if not t:
        return "## Teacher\n\nNo teacher_model manifest was stored: the teacher is not known."
    source = str(t.get("source") or "")
    source = "a local directory" if source.startswith("local:") else source  # no local path in a shared card
    return (f"## Teacher\n\n- model: **{t.get('name')}** ({source})\n"
            f"- content hash (weights, config, tokenizer, chat template): `{t.get('content_hash')}`\n"
            f"- chat template SHA-256: `{t.get('chat_template_sha256')}`\n"
            f"- license of its output: `{inputs.license.identifier}` ({inputs.license.evidence})")


def _settings_key(report: dict) -> str:
    return json.dumps({k: report.get(k) for k in ("model", "model_hash", "sampling", "num_turns", "system_prompts",
                                                  "response_system_prompt", "seed")}, sort_keys=True)


def _generation(inputs: CardInputs) -> str:
    """Generation settings per group of shards that share them, the pre-query templates used, and the rows of this
    dataset by generator (from the rows' own provenance columns)."""
    groups: dict[str, list[dict]] = {}
    for report in sorted(inputs.generation_reports, key=lambda r: (r.get("shard") is None, r.get("shard"))):
        groups.setdefault(_settings_key(report), []).append(report)
    parts = ["## Generation settings"]
    for reports in groups.values():
        first = reports[0]
        engine = first.get("engine") or {}
        sampling = first.get("sampling") or {}
        answering = first.get("response_system_prompt")
        parts.append(f"Shards {', '.join(str(r.get('shard')) for r in reports)}: model {first.get('model')} "
                     f"(`{str(first.get('model_hash'))[:16]}`), {first.get('num_turns')} turn(s), seed "
                     f"{first.get('seed')}, engine {engine.get('name')}=={engine.get('version')}\n\n"
                     f"- instruction sampling: `{json.dumps(sampling.get('instruction'), sort_keys=True)}`\n"
                     f"- response sampling: `{json.dumps(sampling.get('response'), sort_keys=True)}`\n"
                     f"- system prompts (text, weight): `{json.dumps(first.get('system_prompts'))}`"
                     + (f"\n- answered under the system prompt (not stored in the rows): `{json.dumps(answering)}`"
                        if answering else ""))
    usage: dict[tuple, int] = {}
    for report in inputs.generation_reports:
        for u in report.get("pre_query_template_usage") or []:
            key = (u.get("hash"), u.get("source"), u.get("system_prompt"))
            usage[key] = usage.get(key, 0) + int(u.get("rows") or 0)
    if usage:
        parts.append("Pre-query templates (SHA-256 of the first-turn prefix each row used; rows generated):\n\n"
                     + _table([{"hash": h, "source": s, "system prompt": repr(p), "rows": n}
                               for (h, s, p), n in sorted(usage.items(), key=lambda x: str(x[0]))]))
    if not inputs.generation_reports:
        parts.append("No generation report was stored (user sources only, or generation not materialized).")
    by = [c for c in ("generator_model", "generator_model_hash", "engine", "engine_version")
          if c in inputs.mixture.columns]
    rows = inputs.mixture.group_by(by).len("rows").sort(by).to_dicts() if by else []
    parts.append("Rows of this dataset by generator (each row's provenance columns):\n\n" + _table(rows))
    return "\n\n".join(parts)


def funnel_row(name: str, documents: dict[str, dict]) -> dict | None:
    """A stage's rows in and out, from its stored report(s) (``report`` or ``report-<shard>``), by their form:
    generation shards (``stats``: attempted, kept, dropped), removal stages (``rows_in``, ``rows_removed``), rule
    stages (``funnel``: per rule, ``rejected_by_reason``), user sources (``rows``). None: no such report."""
    reports = [d.get("content") or {} for n, d in sorted(documents.items()) if n == "report" or n.startswith("report-")]
    if not reports:
        return None
    if all("stats" in r for r in reports):
        dropped: dict[str, int] = {}
        for r in reports:
            for reason, n in (r["stats"].get("dropped") or {}).items():
                dropped[reason] = dropped.get(reason, 0) + int(n)
        return _row(name, sum(int(r["stats"]["attempted"]) for r in reports),
                    sum(int(r["stats"]["kept"]) for r in reports), dropped)
    report = reports[0]
    if "rows_in" in report and "rows_removed" in report:
        return _row(name, int(report["rows_in"]), int(report["rows_in"]) - int(report["rows_removed"]),
                    report.get("removed_by_reason") or {})
    if report.get("funnel"):
        rules = report["funnel"]
        return _row(name, int(rules[0]["rows_in"]), int(rules[-1]["rows_out"]),
                    report.get("rejected_by_reason") or {})
    if isinstance(report.get("rows"), int):
        return _row(name, report["rows"], report["rows"], {})
    return None


def _row(stage: str, rows_in: int, rows_out: int, reasons: dict[str, int]) -> dict:
    text = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda x: (-x[1], x[0])) if n)
    return {"stage": stage, "rows in": rows_in, "rows out": rows_out, "removed": rows_in - rows_out,
            "removed by reason": text or "-"}


def _funnel(inputs: CardInputs) -> str:
    rows = [r for name, snap in inputs.snapshots.items() if (r := funnel_row(name, snap.get("documents") or {}))]
    m = inputs.manifest
    if m:
        out = int(m.get("train_rows", 0)) + int(m.get("validation_rows", 0))
        rows.append({"stage": "sft_mixture", "rows in": int(m.get("input_rows", 0)), "rows out": out,
                     "removed": int(m.get("input_rows", 0)) - out,
                     "removed by reason": f"not drawn by the mixture's plan (excluded {m.get('excluded_rows', 0)}; "
                                          "rows out count repeats)"})
    return ("## Funnel\n\nRows through every stage, from each stage's stored report (generation: conversations "
            "attempted and written; the mixture: train + validation rows).\n\n" + _table(rows))


def _decontamination(report: dict | None) -> str:
    if not report:
        return "## Decontamination\n\nNo decontamination report was stored."
    rows = [{"benchmark": name, "eval texts": (b.get("eval") or {}).get("eval_texts"),
             "rows removed": b.get("rows_removed"), "n-gram matches": (b.get("matches") or {}).get("ngram"),
             "MinHash matches": (b.get("matches") or {}).get("minhash"),
             "matched items": len(b.get("matched_item_ids") or []),
             "example n-gram": b.get("example_ngram") or "-"}
            for name, b in sorted((report.get("benchmarks") or {}).items())]
    config = json.dumps(report.get("config"), sort_keys=True)
    return (f"## Decontamination\n\n{report.get('rows_removed')} of {report.get('rows_in')} rows were removed for "
            f"overlapping an evaluation set. Settings: `{config}`.\n\n" + _table(rows))


def _cell(value) -> str:
    return "-" if value is None else str(round(value, 4) if isinstance(value, float) else value)


def _shares(entries: dict, key: str) -> list[dict]:
    columns = ("target_share", "planned_share", "realized_share", "rows", "validation_rows", "repeats")
    return [{key: name, **{c: _cell(entry.get(c)) for c in columns}} for name, entry in sorted(entries.items())]


def _mixture(manifest: dict) -> str:
    if not manifest:
        return "## Mixture manifest\n\nNo mixture manifest was stored."
    constraints = manifest.get("constraints") or []
    tokens = manifest.get("train_tokens") or "not counted"
    return (f"## Mixture manifest\n\nUnit: {manifest.get('unit')}; {manifest.get('train_rows')} train and "
            f"{manifest.get('validation_rows')} validation rows; train tokens: {tokens}. "
            f"Settings: `{json.dumps(manifest.get('config'), sort_keys=True)}`.\n\nShares per source:\n\n"
            + _table(_shares(manifest.get("sources") or {}, "source")) + "\n\nShares per task:\n\n"
            + _table(_shares(manifest.get("tasks") or {}, "task")) + "\n\nConstraints:\n\n"
            + _table([{k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else _cell(v)
                      for k, v in c.items()} for c in constraints])
            + f"\n\nShortfall: `{json.dumps(manifest.get('shortfall') or {}, sort_keys=True)}`")


def _lineage(inputs: CardInputs) -> str:
    rows = []
    for asset, snapshot in inputs.snapshots.items():
        for name, table in sorted((snapshot.get("tables") or {}).items()):
            rows.append({"asset": asset, "item": f"table {name}", "rows": str(table.get("row_count")),
                         "content hash": table.get("content_hash")})
        for name, document in sorted((snapshot.get("documents") or {}).items()):
            content = document.get("content") or {}
            model = "content_hash" in content  # a model manifest: the model's own hash
            rows.append({"asset": asset, "item": f"model {content.get('name', name)}" if model else f"json {name}",
                         "rows": "",
                         "content hash": content["content_hash"] if model else document.get("content_hash")})
    return (f"## Lineage\n\nThe mixture table's content hash is `{inputs.mixture_hash}` (SHA-256 of its Parquet "
            "file): a model trained on this data records the same hash in its `lineage.json` under "
            "`assets.sft_mixture.tables.data.content_hash`. Upstream tables and documents (SHA-256 of their "
            "files; for models, of their defining files):\n\n" + _table(rows))


def _columns(df: pl.DataFrame) -> str:
    rows = [{"column": name, "type": str(dtype)} for name, dtype in df.schema.items() if name != "split"]
    return ("## Columns\n\nEvery column of the mixture table except `split` (the splits are the dataset's "
            "splits):\n\n" + _table(rows))


def _license(inputs: CardInputs) -> str:
    users = user_sources(inputs.mixture)
    text = (f"## License\n\nGenerated text is used under the teacher's terms: `{inputs.license.identifier}` "
            f"({inputs.license.evidence}).")
    if not inputs.license.known:
        text += " No license identifier was found: check the teacher's terms before publishing."
    if users:
        text += (" Rows from user SFT sources keep their own terms (license `other` above): "
                 + ", ".join(f"{name} ({n} rows)" for name, n in users.items()) + ".")
    return text


def _usage() -> str:
    return ("## Loading\n\n```python\nfrom datasets import load_from_disk\n\n"
            "dataset = load_from_disk(\"<this folder>\")\nprint(dataset[\"train\"][0][\"messages\"])\n```")
