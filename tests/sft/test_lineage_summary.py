"""The lineage summary on `sft_model`'s metadata names every upstream table's content hash and both models'."""

from assets.sft.lineage import lineage_summary


def test_summary_lists_tables_and_models_in_order():
    snapshots = {
        "teacher_model": {"tables": {}, "documents": {"manifest": {
            "path": "/m.json", "content_hash": "file", "content": {"name": "tiny", "content_hash": "t" * 64}}}},
        "sft_mixture": {"tables": {"data": {"path": "/x.parquet", "content_hash": "a" * 64, "row_count": 12}},
                        "documents": {"report": {"path": "/r.json", "content_hash": "r", "content": {"tasks": {}}}}},
    }
    base = {"path": "/student", "content_hash": "b" * 64, "template": {"name": "chatml"}}
    text = lineage_summary(snapshots, base)
    assert text.startswith(f"**Base model** `/student`, content hash `{'b' * 64}`, chat template chatml")
    assert f"| teacher_model | model tiny |  | {'t' * 64} |" in text
    assert f"| sft_mixture | table data | 12 | {'a' * 64} |" in text
    assert text.index("teacher_model") < text.index("sft_mixture")
    assert "report" not in text  # reports are in lineage.json, not the summary
