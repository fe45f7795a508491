"""Marker rows get a deliberate start, and PEFT trains exactly those rows (tied and untied embeddings)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from assets.base_model.core import prepare_student
from assets.common.models.directories import prepare_local
from assets.common.models.templates import read_chat_markers
from training.markers import (
    MarkerInitError,
    initialise_marker_rows,
    marker_parameter_groups,
    trainable_token_config,
)

CONVERSATION = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue is a colour."}]


@pytest.fixture(scope="module")
def student(tiny_model_dir, tmp_path_factory):
    """The tiny model under Gemma's template: <start_of_turn>/<end_of_turn> are new tokens (rows at the mean)."""
    return prepare_student(prepare_local(tiny_model_dir), "gemma", tmp_path_factory.mktemp("students"))


@pytest.fixture
def loaded(student):
    path = student.model.path
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), read_chat_markers(path)


def end_of_turn_probability(model, tokenizer, end_of_turn_id):
    """P(end-of-turn) right after the answer's last token (the prompt and the answer as the template renders them)."""
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    answer_end = text.index(CONVERSATION[-1]["content"]) + len(CONVERSATION[-1]["content"])
    ids = tokenizer(text[:answer_end], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return torch.softmax(model(ids).logits[0, -1], dim=-1)[end_of_turn_id].item()


def test_end_of_turn_starts_as_the_token_the_model_ends_texts_with(loaded):
    model, tokenizer, record = loaded
    eot, text_end, sot = record.end_of_turn_id, record.text_end_id, 1024
    before = end_of_turn_probability(model, tokenizer, eot)
    text_end_before = end_of_turn_probability(model, tokenizer, text_end)
    report = initialise_marker_rows(model, tokenizer, record.rows_to_initialise, end_of_turn_id=eot,
                                    text_end_id=text_end)
    inputs, outputs = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert torch.equal(inputs[eot], inputs[text_end]) and torch.equal(outputs[eot], outputs[text_end])
    mean = outputs[:1024].double().mean(dim=0).float()
    assert torch.allclose(outputs[sot], mean)
    after = end_of_turn_probability(model, tokenizer, eot)
    assert before < 0.005 < after  # the tiny model gives its own EOS ~8% at every step
    assert after == pytest.approx(end_of_turn_probability(model, tokenizer, text_end), rel=1e-5)
    assert text_end_before > after / 2  # its EOS now shares the mass with end-of-turn
    rows = {row.token: row for row in report.rows}
    assert rows["<end_of_turn>"].source == "text_end:<|im_end|>" and rows["<start_of_turn>"].source == "mean"
    assert rows["<end_of_turn>"].output_norm_after == pytest.approx(outputs[text_end].norm().item(), abs=1e-4)
    assert rows["<end_of_turn>"].output_norm_before == pytest.approx(mean.norm().item(), abs=1e-4)
    assert not report.tied and report.to_dict()["rows"][0]["id"] == sot


def test_mean_method_gives_every_marker_the_mean_row(loaded):
    model, tokenizer, record = loaded
    initialise_marker_rows(model, tokenizer, record.rows_to_initialise, end_of_turn_id=record.end_of_turn_id,
                           method="mean")
    inputs = model.get_input_embeddings().weight
    assert torch.allclose(inputs[1025], inputs[:1024].double().mean(dim=0).float())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"text_end_id": None}, "pass the original EOS id"),
    ({"text_end_id": 1025}, "pass the original EOS id"),
    ({"text_end_id": 2, "method": "zeros"}, "expected 'text_end' or 'mean'"),
])
def test_initialisation_errors_say_what_to_pass(loaded, kwargs, message):
    model, tokenizer, record = loaded
    with pytest.raises(MarkerInitError, match=message):
        initialise_marker_rows(model, tokenizer, [1024, 1025], end_of_turn_id=1025, **kwargs)


def test_ids_outside_the_embeddings_are_refused(loaded):
    model, tokenizer, _ = loaded
    with pytest.raises(MarkerInitError, match=r"outside the embedding matrix \(1026 rows\)"):
        initialise_marker_rows(model, tokenizer, [5000], end_of_turn_id=5000, text_end_id=2)


def _train_a_few_steps(model, tokenizer, config_kwargs, marker_lr=0.05):
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  **config_kwargs))
    optimizer = torch.optim.AdamW(marker_parameter_groups(peft_model, 1e-3, marker_lr))
    ids = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_tensors="pt")["input_ids"]
    for _ in range(2):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return peft_model.merge_and_unload()


def _changed_rows(after, before):
    return (after != before).any(dim=1).nonzero().flatten().tolist()


def test_peft_trains_exactly_the_marker_rows_untied(loaded):
    model, tokenizer, record = loaded
    rows = record.rows_to_initialise
    config = trainable_token_config(model, rows)
    assert config == {"trainable_token_indices": {"model.embed_tokens": rows, "lm_head": rows}}
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    merged = _train_a_few_steps(model, tokenizer, config)
    assert _changed_rows(merged.get_input_embeddings().weight, before_in) == rows
    assert _changed_rows(merged.get_output_embeddings().weight, before_out) == rows


def test_peft_trains_exactly_the_marker_rows_tied(student):
    """Tied embeddings (as Gemma's): one set of trained rows, read by the LM head too."""
    path = student.model.path
    config = AutoConfig.from_pretrained(path)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert trainable_token_config(model, [1025, 1024]) == {"trainable_token_indices": [1024, 1025]}
    report = initialise_marker_rows(model, tokenizer, [1024, 1025], end_of_turn_id=1025, text_end_id=2)
    assert report.tied and report.rows[1].output_norm_after is None
    before = model.get_input_embeddings().weight.detach().clone()
    merged = _train_a_few_steps(model, tokenizer, trainable_token_config(model, [1024, 1025]))
    weight = merged.get_input_embeddings().weight
    assert _changed_rows(weight, before) == [1024, 1025]
    assert torch.equal(merged.get_output_embeddings().weight, weight)


def test_marker_rows_get_their_own_learning_rate_and_no_weight_decay(loaded):
    model, tokenizer, record = loaded
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"],
                                                  **trainable_token_config(model, record.rows_to_initialise)))
    rest, rows = marker_parameter_groups(peft_model, 2e-4, 1e-2, weight_decay=0.01)
    assert (rest["lr"], rest["weight_decay"], rows["lr"], rows["weight_decay"]) == (2e-4, 0.01, 1e-2, 0.0)
    assert len(rows["params"]) == 2 and all(p.shape == (2, 128) for p in rows["params"])  # input and output rows
    with pytest.raises(MarkerInitError, match="trains no token rows"):
        plain = AutoModelForCausalLM.from_pretrained(tokenizer.name_or_path)
        marker_parameter_groups(get_peft_model(plain, LoraConfig(r=4, target_modules=["q_proj"])), 2e-4, 1e-2)
