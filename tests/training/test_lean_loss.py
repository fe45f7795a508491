"""The trainer's hot path: the lean loss (TRL's chunked LM head on trained positions only, no per-token metrics)
gives TRL's own loss and gradients, and gradient checkpointing follows the memory plan. Real TRL on the tiny model
(plain, and prepared with the gemma template so that marker rows are trained too)."""

import pytest
import torch

from assets.base_model.core import prepare_student
from assets.common.models.chat_template import read_chat_template
from assets.common.models.directories import prepare_local
from training.config import TrainConfig
from training.dataset import conversation_rows, tokenize_rows
from training.memory import ModelShape
from training.trainer import build_trainer

CONVERSATIONS = [[{"role": "user", "content": f"Say the number {i}, please, in a sentence."},
                  {"role": "assistant", "content": f"The number is {i}." + " Indeed." * (i % 4)}] for i in range(8)]


@pytest.fixture(scope="module", params=["plain", "student"])
def model_dir(request, tiny_model_dir, tmp_path_factory):
    if request.param == "plain":
        return tiny_model_dir
    return prepare_student(prepare_local(tiny_model_dir), "gemma", tmp_path_factory.mktemp("students")).model.path


def _trainer(model_dir, tmp_path, **fields):
    from transformers import AutoTokenizer

    config = TrainConfig(max_steps=1, per_device_train_batch_size=4, early_stopping_patience=0, **fields)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = tokenize_rows(tokenizer, conversation_rows(CONVERSATIONS), read_chat_template(model_dir), 512)
    return build_trainer(model_dir, tokenizer, data, config, tmp_path / "checkpoints", log=lambda _: None)


def _loss_and_grads(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(inputs))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_lean_loss_equals_trls_loss_and_gradients(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path)
    assert trainer.lean_loss and trainer.memory_plan["lean_loss"]
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trained = int((inputs["labels"][:, 1:] != -100).sum())
    assert 0 < trained < inputs["labels"][:, 1:].numel()  # prompt and padding positions are skipped
    torch.manual_seed(0)
    lean_loss, lean_grads = _loss_and_grads(trainer, inputs)
    assert "entropy" not in trainer._metrics["train"] and "mean_token_accuracy" not in trainer._metrics["train"]
    trainer.lean_loss = False  # TRL's own path (its fused head, every position, with its metrics)
    torch.manual_seed(0)
    trl_loss, trl_grads = _loss_and_grads(trainer, inputs)
    assert "entropy" in trainer._metrics["train"]
    torch.testing.assert_close(lean_loss, trl_loss, rtol=1e-5, atol=1e-6)
    assert lean_grads.keys() == trl_grads.keys() and lean_grads
    for name, grad in lean_grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_padding_free_batches_give_the_padded_loss_and_gradients(model_dir, tmp_path):
    """The same examples laid end to end with no padding (position ids restart per example) train exactly as the
    padded batch: no attention crosses from one example into the next, and no padding is computed."""
    padded = _trainer(model_dir, tmp_path / "padded", lora_dropout=0.0)
    flat = _trainer(model_dir, tmp_path / "flat", lora_dropout=0.0, padding_free=True)
    flat.model.load_state_dict(padded.model.state_dict())  # the same LoRA start
    padded_inputs = padded._prepare_inputs(next(iter(padded.get_train_dataloader())))
    flat_inputs = flat._prepare_inputs(next(iter(flat.get_train_dataloader())))
    assert "attention_mask" not in flat_inputs and flat_inputs["input_ids"].shape[0] == 1
    assert flat_inputs["input_ids"].shape[1] == int(padded_inputs["attention_mask"].sum())  # no padding left
    assert int((padded_inputs["attention_mask"] == 0).sum()) > 0  # the padded batch had some
    padded_loss, padded_grads = _loss_and_grads(padded, padded_inputs)
    flat_loss, flat_grads = _loss_and_grads(flat, flat_inputs)
    torch.testing.assert_close(flat_loss, padded_loss, rtol=1e-5, atol=1e-6)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(flat_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_token_metrics_keep_trls_path(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, token_metrics=True)
    assert not trainer.lean_loss
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.compute_loss(trainer.model, dict(inputs))
    assert trainer._metrics["train"]["mean_token_accuracy"]


@pytest.mark.parametrize(("setting", "expected"), [("auto", False), ("on", True), ("off", False)])
def test_gradient_checkpointing_follows_the_plan(tiny_model_dir, tmp_path, setting, expected):
    trainer = _trainer(tiny_model_dir, tmp_path, gradient_checkpointing=setting)
    assert trainer.memory_plan["gradient_checkpointing"] is expected
    assert trainer.args.gradient_checkpointing is expected
    from transformers.trainer_utils import SaveStrategy

    trainer.args.save_strategy = SaveStrategy.NO
    trainer.train()  # the Trainer switches checkpointing on when training starts
    assert trainer.model.get_base_model().is_gradient_checkpointing is expected


def test_model_shape_from_config(tiny_model_dir):
    shape = ModelShape.from_model_dir(tiny_model_dir)
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.layers == model.config.num_hidden_layers and shape.vocabulary == model.config.vocab_size
    assert shape.parameters == pytest.approx(sum(p.numel() for p in model.parameters()), rel=0.02)
