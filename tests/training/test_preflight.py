"""Pre-flight checks (training/preflight.py) on the real batches TRL's SFTTrainer collates, each broken on purpose."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from assets.common.models.chat_template import read_chat_template
from training.config import TrainConfig
from training.dataset import conversation_rows
from training.masking import tokenize_conversation
from training.preflight import PreflightError, check_batches, check_template_identity, template_markers
from training.trainer import train

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris is the capital."}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Name a prime number."},
     {"role": "assistant", "content": "Seven is prime."}],
    [{"role": "user", "content": "Say hello."},
     {"role": "assistant", "content": "Hello there!"},
     {"role": "user", "content": "Now in French, with accents: café?"},
     {"role": "assistant", "content": "Bonjour, un café très fort."}],
    [{"role": "system", "content": "Be terse."},
     {"role": "user", "content": "Count to two."},
     {"role": "assistant", "content": "One, two."},
     {"role": "user", "content": "And back?"},
     {"role": "assistant", "content": "Two, one."}],
    [{"role": "user", "content": "Give me a long list of three fruits, please, with no commentary at all."},
     {"role": "assistant", "content": "Apple, pear, plum."}],
    [{"role": "user", "content": "Why?"},
     {"role": "assistant", "content": "Because."}],
]
ASSISTANT_TURNS = sum(m["role"] == "assistant" for c in CONVERSATIONS for m in c)  # 8
MULTI_TURN = 2  # index of a conversation with two assistant turns
PACKED = {"packing": True, "padding_free": True, "packing_strategy": "bfd"}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def template(tiny_model_dir):
    return read_chat_template(tiny_model_dir)


@pytest.fixture(scope="module")
def markers(tokenizer, template):
    return template_markers(tokenizer, template)


@pytest.fixture(scope="module")
def tokenized(tokenizer, template):
    return [tokenize_conversation(tokenizer, c, template) for c in CONVERSATIONS]


def rows(tokenized, masks=None) -> dict:
    return {"input_ids": [t.input_ids for t in tokenized],
            "assistant_masks": masks if masks is not None else [list(t.assistant_masks) for t in tokenized]}


def train_loader(model_dir, tokenizer, tmp_path, columns: dict, **config):
    """The train dataloader of a real SFTTrainer (tiny model, LoRA) over a pre-tokenized dataset."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path / "trainer"), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                     max_steps=1, assistant_only_loss=False, disable_tqdm=True, **config)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=args,
        train_dataset=Dataset.from_dict(columns),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    return trainer.get_train_dataloader()


def check(loader, tokenizer, markers):
    return check_batches(loader, markers, tokenizer)


def failure(loader, tokenizer, markers) -> str:
    with pytest.raises(PreflightError) as error:
        check_batches(loader, markers, tokenizer)
    return str(error.value)


# --- correct masks -----------------------------------------------------------------------------------------------


def test_correct_masks_pass_on_real_padded_batches(tiny_model_dir, tokenizer, markers, tokenized, tmp_path):
    loader = train_loader(tiny_model_dir, tokenizer, tmp_path, rows(tokenized))
    batches = list(loader)
    assert all("attention_mask" in b and b["input_ids"].shape[0] <= 4 for b in batches)
    assert any((b["attention_mask"] == 0).any() for b in batches)  # the batches really are padded

    report = check(batches, tokenizer, markers)
    assert report.examples == len(CONVERSATIONS)
    assert report.assistant_turns == ASSISTANT_TURNS
    assert report.tokens == sum(len(t.input_ids) for t in tokenized)
    assert report.trainable_tokens == sum(sum(t.assistant_masks) for t in tokenized)
    assert 0 < report.trainable_fraction < 1
    assert report.padding_tokens == sum(int((b["attention_mask"] == 0).sum()) for b in batches) > 0
    assert report.to_dict()["trainable_fraction"] == round(report.trainable_fraction, 4)


def test_correct_labels_column_passes(tiny_model_dir, tokenizer, markers, tokenized, tmp_path):
    labels = [[i if m else -100 for i, m in zip(t.input_ids, t.assistant_masks, strict=True)] for t in tokenized]
    columns = {"input_ids": [t.input_ids for t in tokenized], "labels": labels}
    report = check(train_loader(tiny_model_dir, tokenizer, tmp_path, columns), tokenizer, markers)
    assert (report.examples, report.assistant_turns) == (len(CONVERSATIONS), ASSISTANT_TURNS)
    assert report.trainable_tokens == sum(sum(t.assistant_masks) for t in tokenized)


# --- each check failing on a crafted broken input ----------------------------------------------------------------


def test_unmasked_prompt_fails_naming_the_prompt_tokens(tiny_model_dir, tokenizer, markers, tokenized, tmp_path):
    all_ones = [[1] * len(t.input_ids) for t in tokenized]
    message = failure(train_loader(tiny_model_dir, tokenizer, tmp_path, rows(tokenized, all_ones)), tokenizer, markers)
    assert "prompt/template tokens are trainable: ['<|im_start|>']" in message
    assert "the prompt is not masked" in message


def test_trained_user_turn_fails_even_without_a_special_token(tiny_model_dir, tokenizer, markers, tokenized,
                                                              tmp_path):
    """A user's words trained through its <|im_end|>: no structural token, but one span more than assistant turns."""
    masks = [list(t.assistant_masks) for t in tokenized]
    t = tokenized[0]
    user_start = t.text.index("What is the capital")
    user_end = t.text.index("<|im_end|>", user_start) + len("<|im_end|>")
    offsets = tokenizer(t.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for i, (s, e) in enumerate(offsets):
        if s >= user_start and e <= user_end:
            masks[0][i] = 1
    message = failure(train_loader(tiny_model_dir, tokenizer, tmp_path, rows(tokenized, masks)), tokenizer, markers)
    assert "1 assistant turns but 2 trained spans" in message
    assert "'What is the capital of France?<|im_end|>'" in message  # shows what is trained


def test_end_of_turn_masked_out_fails_saying_the_model_would_not_learn_to_stop(tiny_model_dir, tokenizer, markers,
                                                                               tokenized, tmp_path):
    masks = [list(t.assistant_masks) for t in tokenized]
    masks[MULTI_TURN][tokenized[MULTI_TURN].end_of_turn_token_positions[0]] = 0  # first reply of a two-reply chat
    message = failure(train_loader(tiny_model_dir, tokenizer, tmp_path, rows(tokenized, masks)), tokenizer, markers)
    assert "does not end with the end-of-turn token '<|im_end|>'" in message
    assert "the model would not learn to stop" in message
    assert "Hello there!" in message  # what the unterminated span ends with
    assert message.count("\n- ") == 1  # only that example


def test_example_without_trainable_token_fails(tiny_model_dir, tokenizer, markers, tokenized, tmp_path):
    masks = [list(t.assistant_masks) for t in tokenized]
    masks[1] = [0] * len(masks[1])
    # max_length=None: when TRL truncates it also drops fully masked rows itself, before any batch exists
    loader = train_loader(tiny_model_dir, tokenizer, tmp_path, rows(tokenized, masks), max_length=None)
    message = failure(loader, tokenizer, markers)
    assert "no trainable token (every label is -100)" in message
    assert "You answer in one short sentence" in message


def test_one_of_two_assistant_turns_masked_fails(tiny_model_dir, tokenizer, markers, tokenized, tmp_path):
    masks = [list(t.assistant_masks) for t in tokenized]
    t = tokenized[MULTI_TURN]
    first_reply_end = t.end_of_turn_token_positions[0]
    masks[MULTI_TURN][: first_reply_end + 1] = [0] * (first_reply_end + 1)
    assert sum(masks[MULTI_TURN]) > 0  # the second reply is still trained
    message = failure(train_loader(tiny_model_dir, tokenizer, tmp_path, rows(tokenized, masks)), tokenizer, markers)
    assert "2 assistant turns but 1 trained spans" in message


def test_trained_text_without_any_assistant_turn_fails(tiny_model_dir, tokenizer, markers, tokenized, tmp_path):
    """Plain text ending in <|im_end|>, fully trained: no special token, one terminated span, but no assistant."""
    text_ids = tokenizer("Some plain text that is not a conversation.<|im_end|>", add_special_tokens=False)["input_ids"]
    columns = rows(tokenized)
    columns["input_ids"].append(text_ids)
    columns["assistant_masks"].append([1] * len(text_ids))
    message = failure(train_loader(tiny_model_dir, tokenizer, tmp_path, columns), tokenizer, markers)
    assert "trained span(s) but no assistant turn" in message
    assert "Some plain text" in message


def test_padding_with_labels_fails(tiny_model_dir, tokenizer, markers, tokenized, tmp_path):
    batch = next(b for b in train_loader(tiny_model_dir, tokenizer, tmp_path, rows(tokenized))
                 if (b["attention_mask"] == 0).any())
    check([batch], tokenizer, markers)  # as collated: passes
    broken = {k: v.clone() for k, v in batch.items()}
    padding = broken["attention_mask"] == 0
    broken["labels"][padding] = broken["input_ids"][padding]
    assert "padding positions carry labels: padding would be trained" in failure([broken], tokenizer, markers)


def test_left_padded_batch_is_read_by_its_attention_mask(tiny_model_dir, tokenizer, markers, tokenized, tmp_path):
    batches = list(train_loader(tiny_model_dir, tokenizer, tmp_path, rows(tokenized)))
    right = check(batches, tokenizer, markers)
    left = []
    for batch in batches:  # move each row's padding to the left, as a left-padding collator would
        shifted = {k: v.clone() for k, v in batch.items()}
        for r, n in enumerate(batch["attention_mask"].sum(dim=1).tolist()):
            for key in ("input_ids", "labels", "attention_mask"):
                shifted[key][r] = batch[key][r].roll(batch[key].shape[1] - n)
        left.append(shifted)
    assert any(b["attention_mask"][:, 0].eq(0).any() for b in left)
    assert check(left, tokenizer, markers).to_dict() == right.to_dict()


# --- padding-free packing: examples split by position_ids --------------------------------------------------------


def test_packed_padding_free_batches_are_split_by_position_ids_and_pass(tiny_model_dir, tokenizer, markers,
                                                                         tokenized, tmp_path):
    batches = list(train_loader(tiny_model_dir, tokenizer, tmp_path, rows(tokenized), **PACKED))
    assert all("attention_mask" not in b and b["input_ids"].shape[0] == 1 for b in batches)
    starts = sum(int((b["position_ids"] == 0).sum()) for b in batches)
    assert starts == len(CONVERSATIONS)  # several conversations share a row
    assert any(int((b["position_ids"] == 0).sum()) > 1 for b in batches)

    report = check(batches, tokenizer, markers)
    assert report.examples == len(CONVERSATIONS)
    assert report.assistant_turns == ASSISTANT_TURNS
    assert report.trainable_tokens == sum(sum(t.assistant_masks) for t in tokenized)
    assert report.padding_tokens == 0 and 0 < report.trainable_fraction < 1


def test_packed_batches_with_trailing_padding_pass(tiny_model_dir, tokenizer, markers, tokenized, tmp_path):
    batches = list(train_loader(tiny_model_dir, tokenizer, tmp_path, rows(tokenized), pad_to_multiple_of=64,
                                **PACKED))
    report = check(batches, tokenizer, markers)
    assert report.examples == len(CONVERSATIONS)
    assert report.padding_tokens == sum(b["input_ids"].shape[1] for b in batches) - report.tokens > 0


@pytest.mark.parametrize("broken", ["no trainable token", "end-of-turn masked"])
def test_packed_batches_still_catch_one_broken_example(tiny_model_dir, tokenizer, markers, tokenized, tmp_path,
                                                       broken):
    """Were a packed row checked as one example, these would hide behind the healthy conversations beside them."""
    masks = [list(t.assistant_masks) for t in tokenized]
    if broken == "no trainable token":
        masks[1] = [0] * len(masks[1])  # TRL keeps fully masked rows when packing
        expected = "no trainable token"
    else:
        masks[MULTI_TURN][tokenized[MULTI_TURN].end_of_turn_token_positions[1]] = 0
        expected = "the model would not learn to stop"
    loader = train_loader(tiny_model_dir, tokenizer, tmp_path, rows(tokenized, masks), **PACKED)
    assert "attention_mask" not in next(iter(loader))
    assert expected in failure(loader, tokenizer, markers)


# --- template identity -------------------------------------------------------------------------------------------


def test_template_identity(template):
    check_template_identity(template, template, "model")  # identical: passes
    check_template_identity(template, str(template), "model")

    at = template.index("helpful") + 6
    changed = template[:at] + "L" + template[at + 1:]
    assert len(changed) == len(template)
    with pytest.raises(PreflightError, match=rf"model: .* first at character {at}: used 'l AI assistant"):
        check_template_identity(template, changed, "model")
    with pytest.raises(PreflightError, match=rf"first at character {at}: used 'L AI assistant"):
        check_template_identity(changed, template, "model")
    with pytest.raises(PreflightError, match=rf"first at character {len(template)}: used ''"):  # saved one is longer
        check_template_identity(template, template + "\n", "model")
    with pytest.raises(PreflightError, match="no chat template saved"):
        check_template_identity(template, None, "model")


def test_template_identity_with_named_templates(template):
    """A tokenizer loaded with additional_chat_templates/ holds a dict; its 'default' is the one applied."""
    check_template_identity({"default": template, "tool_use": "{{ messages }}"}, template, "model")
    at = template.index("<|im_start|>")
    changed = template[:at] + " " + template[at:]
    with pytest.raises(PreflightError, match=f"first at character {at}"):
        check_template_identity({"default": changed, "tool_use": "x"}, template, "model")
    with pytest.raises(PreflightError, match=re.escape("named chat templates ['tool_use'] but no 'default'")):
        check_template_identity({"tool_use": template}, template, "model")


# --- train(): the template check runs before anything is trained -------------------------------------------------

TINY = TrainConfig(max_steps=1, per_device_train_batch_size=4, logging_steps=1, max_length=256)


def test_train_without_a_saved_template_fails_before_any_step(tiny_model_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    (base / "chat_template.jinja").unlink()
    assert "chat_template" not in json.loads((base / "tokenizer_config.json").read_text())
    logs: list[str] = []
    with pytest.raises(PreflightError, match="no chat template saved"):
        train(base, conversation_rows(CONVERSATIONS), tmp_path / "out" / "model", TINY, log=logs.append)
    assert logs == []  # nothing tokenized, no pre-flight report, no step
    assert not (tmp_path / "out").exists()  # no checkpoint directory, no model


def test_train_with_disagreeing_template_files_trains_and_ships_the_one_it_used(tiny_model_dir, tmp_path):
    """tokenizer_config.json and chat_template.jinja disagree, and more templates ship: the jinja is what transformers
    loads, so it is what the data are rendered with, what the identity check compares, and what the model ships."""
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    jinja = (base / "chat_template.jinja").read_text(encoding="utf-8")
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["chat_template"] = jinja.replace("helpful", "unhelpful")
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "additional_chat_templates").mkdir()
    (base / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages[-1]['content'] }}")
    loaded = AutoTokenizer.from_pretrained(base).chat_template
    assert loaded == {"default": jinja, "tool_use": "{{ messages[-1]['content'] }}"}
    assert read_chat_template(base) == jinja

    logs: list[str] = []
    result = train(base, conversation_rows(CONVERSATIONS), tmp_path / "model", TINY, log=logs.append)
    assert any(line.startswith("pre-flight passed") for line in logs)
    assert (result.model_dir / "chat_template.jinja").read_text(encoding="utf-8") == jinja
    assert "chat_template" not in json.loads((result.model_dir / "tokenizer_config.json").read_text())
    assert result.preflight["assistant_turns"] == ASSISTANT_TURNS


def test_a_model_directory_whose_saved_template_differs_from_the_trained_one_is_not_written(tiny_model_dir, tmp_path):
    """The comparison when the model directory is written (training/model_dir.py): the tokenizer's template changed
    after the data were rendered, so the directory would ship another template than the one trained. Writing fails,
    saying where they differ, and leaves no directory (nor a half-written one beside it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.model_dir import TrainedModel, write_model_dir

    template = read_chat_template(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = template.replace("helpful", "harmless")
    trained = TrainedModel(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer=tokenizer,
                           chat_template=template, start_path=tiny_model_dir, config=TrainConfig(method="full"),
                           data=None, metrics={}, preflight={}, early_stopping={}, log_history=[])
    out = tmp_path / "models" / "sft-model"
    at = template.index("helpful") + 1  # "h" is common to both
    with pytest.raises(PreflightError, match=rf"{out} \(saved model\): the chat template used for training differs "
                                             rf"from the one saved with the model, first at character {at}: used "
                                             "'elpful AI assistant.*' vs saved 'armless AI assistant"):
        write_model_dir(trained, out, {})
    assert list((tmp_path / "models").iterdir()) == []
