"""Magpie generation with the deterministic fake engine: what each row's provenance says was used, was used."""

from dataclasses import replace

import pytest
from transformers import AutoTokenizer

from assets.common.data.storage import sha256_text
from assets.generation.magpie import first_turn_prefixes, generate_conversations, pre_query_report, row_seed
from assets.generation.templates import derive_pre_query
from tests.fake_generator import FakeGenerator
from tests.generation_config import tiny_magpie_config

SYSTEM = "You answer briefly."  # the system prompt of tiny_magpie_config, drawn for about half the rows
OVERRIDE = "<|im_start|>user\n"  # the ChatML user opener without the template's default system message


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def first_turn_prompts(engine: FakeGenerator, config) -> dict[int, list[int]]:
    """Row -> token ids of its first-turn instruction prompt (the first generate call)."""
    by_seed = {row_seed(config, i, 1, "user"): i for i in range(config.num_conversations)}
    call = engine.calls[0]
    return {by_seed[seed]: prompt for seed, prompt in zip(call["seeds"], call["prompts"], strict=True)}


@pytest.mark.parametrize("num_turns", [1, 2])
def test_pre_query_override_is_recorded_per_row_as_used(tokenizer, num_turns):
    """The override replaces the derived prefix of first turns without a system prompt; rows with a system prompt
    use the derived prefix, and each row's pre_query_template_hash names the prefix its first turn really used."""
    config = replace(tiny_magpie_config(num_conversations=30), num_turns=num_turns, pre_query_template=OVERRIDE)
    engine = FakeGenerator()
    table, _ = generate_conversations(engine, tokenizer, config, "tiny", "tiny-hash")
    derived = derive_pre_query(tokenizer, [{"role": "system", "content": SYSTEM}]).prefix
    ids = {text: tokenizer(text, add_special_tokens=False)["input_ids"] for text in (OVERRIDE, derived)}
    prompts = first_turn_prompts(engine, config)
    with_system = 0
    for row in table.iter_rows(named=True):
        used = derived if row["messages"][0]["role"] == "system" else OVERRIDE
        with_system += used == derived
        assert prompts[row["row_index"]] == ids[used], row["conversation_id"]
        assert row["pre_query_template_hash"] == sha256_text(used), row["conversation_id"]
    assert 0 < with_system < table.height

    assert [(p.system_prompt, p.source, p.prefix) for p in first_turn_prefixes(tokenizer, config)] == [
        ("", "override", OVERRIDE), (SYSTEM, "derived", derived)]
    report = pre_query_report(tokenizer, config, table)
    assert [(r["source"], r["hash"], r["rows"]) for r in report] == [
        ("override", sha256_text(OVERRIDE), table.height - with_system), ("derived", sha256_text(derived), with_system)]


def test_without_override_every_row_records_its_derived_prefix(tokenizer):
    config = tiny_magpie_config(num_conversations=20)
    table, _ = generate_conversations(FakeGenerator(), tokenizer, config, "tiny", "tiny-hash")
    prefixes = {p.system_prompt: p.prefix for p in first_turn_prefixes(tokenizer, config)}
    for row in table.iter_rows(named=True):
        system = row["messages"][0]["content"] if row["messages"][0]["role"] == "system" else ""
        assert row["pre_query_template_hash"] == sha256_text(prefixes[system])
    assert {r["source"] for r in pre_query_report(tokenizer, config, table)} == {"derived"}


@pytest.mark.parametrize(("field", "value"), [("num_turns", 0), ("num_conversations", -1)])
def test_config_rejects_impossible_sizes(field, value):
    with pytest.raises(ValueError, match=field):
        replace(tiny_magpie_config(), **{field: value})


def test_answers_are_written_under_the_response_system_prompt_that_no_row_stores(tokenizer):
    """`response_system_prompt` is in every answer prompt of every turn (after a row's own system prompt) and in
    no instruction prompt; the stored messages are the conversation without it, and every row's sampling_params
    names it. Without it, the answer prompts are the conversation as stored."""
    import json

    from assets.common.models.chat_template import render

    style = "Answer in one sentence."
    config = replace(tiny_magpie_config(num_conversations=30), response_system_prompt=style)
    engine = FakeGenerator()
    table, _ = generate_conversations(engine, tokenizer, config, "tiny", "tiny-hash")
    plain_engine = FakeGenerator()
    plain, _ = generate_conversations(plain_engine, tokenizer, replace(config, response_system_prompt=""), "tiny",
                                      "tiny-hash")
    assert table["messages"].to_list() == plain["messages"].to_list()  # same rows: the prompt is not stored
    assert all(style not in m["content"] for row in table["messages"].to_list() for m in row)
    assert [json.loads(s).get("response_system_prompt") for s in table["sampling_params"]] == [style] * table.height
    assert "response_system_prompt" not in json.loads(plain["sampling_params"][0])

    decode = lambda ids: tokenizer.decode(ids)  # noqa: E731
    answer_calls = [c for c in engine.calls if c["sampling"] == config.response]
    instruction_calls = [c for c in engine.calls if c["sampling"] == config.instruction]
    assert len(answer_calls) == config.num_turns and instruction_calls
    assert all(style in decode(p) for c in answer_calls for p in c["prompts"])
    assert not any(style in decode(p) for c in instruction_calls for p in c["prompts"])
    by_seed = {row_seed(config, i, 1, "assistant"): i for i in range(config.num_conversations)}
    first = {by_seed[s]: p for s, p in zip(answer_calls[0]["seeds"], answer_calls[0]["prompts"], strict=True)}
    for row in table.iter_rows(named=True):  # the first answer's prompt: stored system prompt, then the style
        stored = row["messages"][:2] if row["messages"][0]["role"] == "system" else row["messages"][:1]
        system = f"{stored[0]['content']}\n\n{style}" if len(stored) == 2 else style
        expected = render(tokenizer, [{"role": "system", "content": system}, stored[-1]], add_generation_prompt=True)
        assert decode(first[row["row_index"]]) == decode(tokenizer(expected, add_special_tokens=False)["input_ids"])
    plain_answers = [c for c in plain_engine.calls if c["sampling"] == config.response]
    assert not any(style in decode(p) for c in plain_answers for p in c["prompts"])
