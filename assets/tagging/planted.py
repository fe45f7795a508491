"""The planted set (``planted.yaml``): conversations with known labels, and the judge's agreement with them (no
Dagster here). Parsing is not quality: a judge whose every answer parses can still label at random; this says how
often its labels match what a careful reader would say, per label and per kind of row.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml

from assets.common.data.schema import CONVERSATION_SCHEMA
from assets.tagging.judge import PARSED

PLANTED_PATH = Path(__file__).parent / "planted.yaml"
KINDS = ("good", "bad", "refusal", "non_english")


def planted_rows() -> list[dict]:
    """The planted items as written in ``planted.yaml``."""
    items = yaml.safe_load(PLANTED_PATH.read_text(encoding="utf-8"))
    for i, item in enumerate(items):
        missing = {"kind", "category", "quality", "refusal", "language", "user", "assistant"} - set(item)
        if missing or item["kind"] not in KINDS or item["quality"] not in ("high", "low"):
            raise ValueError(f"{PLANTED_PATH} item {i}: missing {sorted(missing)} or a kind/quality out of "
                             f"{KINDS} / (high, low)")
    return items


def planted_table() -> pl.DataFrame:
    """The planted set as a conversation table (ids ``planted-<i>``), with its expectations as ``expected_*``."""
    rows = []
    for i, item in enumerate(planted_rows()):
        rows.append({
            "conversation_id": f"planted-{i:03d}",
            "messages": [{"role": "user", "content": str(item["user"])},
                         {"role": "assistant", "content": str(item["assistant"])}],
            "finish_reasons": ["stop", "stop"], "num_turns": 1, "shard": -1, "row_index": i, "seed": 0,
            "generator_model": "planted", "generator_model_hash": "", "pre_query_template_hash": "",
            "sampling_params": "{}", "engine": "none", "engine_version": "",
            "kind": item["kind"], "expected_category": item["category"], "expected_quality": item["quality"],
            "expected_refusal": bool(item["refusal"]), "expected_language": item["language"],
        })
    schema = {**CONVERSATION_SCHEMA, "kind": pl.Utf8, "expected_category": pl.Utf8, "expected_quality": pl.Utf8,
              "expected_refusal": pl.Boolean, "expected_language": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)


def _checks() -> dict[str, pl.Expr]:
    """Per planted row, whether each label agrees (null-safe: an unparsed answer disagrees)."""
    parsed = pl.col("judge_status") == PARSED
    quality = pl.col("response_quality")
    return {
        "parsed": parsed,
        "category": parsed & (pl.col("judge_category") == pl.col("expected_category")).fill_null(False),
        "response_quality": parsed & pl.when(pl.col("expected_quality") == "high").then(quality >= 4)
        .otherwise(quality <= 2).fill_null(False),
        "judge_refusal": parsed & (pl.col("judge_refusal") == pl.col("expected_refusal")).fill_null(False),
        "refusal_flag": pl.col("refusal") == pl.col("expected_refusal"),
        "instruction_language": pl.col("instruction_language") == pl.col("expected_language"),
        "response_language": pl.col("response_language") == pl.col("expected_language"),
    }


def agreement(tagged: pl.DataFrame) -> dict:
    """Agreement of a tagged planted table with its expectations: overall and per kind, the share of rows where
    each label agrees; ``judge`` = mean of the judge's own three (category, response quality, refusal)."""
    checks = _checks()
    flags = tagged.select("kind", *(expr.alias(name) for name, expr in checks.items()))

    def shares(frame: pl.DataFrame) -> dict:
        out = {name: round(float(frame[name].mean()), 4) for name in checks}
        out["judge"] = round((out["category"] + out["response_quality"] + out["judge_refusal"]) / 3, 4)
        return {"rows": frame.height, **out}

    return {"overall": shares(flags),
            "by_kind": {k: shares(flags.filter(pl.col("kind") == k)) for k in KINDS
                        if flags.filter(pl.col("kind") == k).height}}


def disagreements(tagged: pl.DataFrame, limit: int = 10) -> pl.DataFrame:
    """The planted rows where the judge's category, quality or refusal disagrees, with its reason."""
    checks = _checks()
    wrong = ~(checks["category"] & checks["response_quality"] & checks["judge_refusal"])
    return tagged.filter(wrong).select(
        "kind", pl.col("messages").list.first().struct.field("content").str.slice(0, 60).alias("instruction"),
        "expected_category", "judge_category", "expected_quality", "response_quality", "expected_refusal",
        "judge_refusal", "judge_reason", "judge_error").head(limit)
