"""The training loss on the hot path: TRL's chunked LM-head loss, log-probabilities only, trained positions only.

TRL 1.16's ``SFTTrainer`` computes its loss through a fused LM head (``trl.trainer.utils.add_fused_lm_head``): the
vocabulary is projected in tiles (``trl.kernels.ChunkedLogProbFunction``), so the ``tokens x vocabulary`` logits are
never materialized (a 262k-vocabulary model needs that to train within a few GB). Two things around it cost time on
a CPU, and neither is needed for training:

- it also computes, for every position, the entropy and whether the label is the arg-max (the ``entropy`` and
  ``mean_token_accuracy`` metrics): extra full passes over every vocabulary tile, forward and backward;
- on devices without Triton it projects *every* position, padding and prompt included, because the number of
  trained positions would change the tile shapes and recompile on some accelerators. A CPU runs eagerly.

:func:`add_lean_lm_head` adds a forward path (``lean_lm_head=True``) that runs the backbone, keeps only the positions
whose next-token label is trained, and calls TRL's own ``ChunkedLogProbFunction`` on them for log-probabilities
alone, in tiles of :data:`VOCABULARY_CHUNK`. The loss is the same sum of label log-probabilities divided by the same
count, so it equals TRL's. ``TrainConfig.token_metrics=True`` keeps TRL's path and its metrics.
"""

from __future__ import annotations

import types
from typing import Any

# Vocabulary entries per tile: TRL uses 32,768 (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE in 1.16); its CPU path
# keeps about nine tile-sized temporaries alive in the backward pass, 2.4 GB at 2,000 trained tokens. A quarter of
# that width keeps them under 0.6 GB at the same speed (the projection is still a large matrix product).
VOCABULARY_CHUNK = 8192
# config fields that scale the logits in ways TRL's fused head handles and this path does not: keep TRL's then
_SCALED_LOGITS = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def supports_lean_head(model: Any) -> bool:
    """Whether :func:`add_lean_lm_head` computes the same loss as TRL's head for ``model`` (a causal LM, not PEFT)."""
    text_config = model.config.get_text_config()
    if any(getattr(text_config, name, None) is not None for name in _SCALED_LOGITS):
        return False
    return getattr(model, "base_model", None) is not None and model.get_output_embeddings() is not None


def add_lean_lm_head(model: Any) -> None:
    """Give ``model`` (a causal LM, before or after PEFT wrapped it: patch the base model) the ``lean_lm_head=True``
    forward path, which returns ``(label log-probabilities of the trained positions, their count)``."""
    from trl.kernels import ChunkedLogProbFunction

    previous_forward = model.forward
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    def forward(self, *args, lean_lm_head: bool = False, labels=None, **kwargs):
        if not lean_lm_head:
            return previous_forward(*args, labels=labels, **kwargs) if labels is not None else \
                previous_forward(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        head = self.get_output_embeddings()  # looked up per call: PEFT and the marker rows replace it
        log_probs, *_ = ChunkedLogProbFunction.apply(hidden[mask], head.weight, head.bias, labels[mask], 1.0,
                                                     VOCABULARY_CHUNK, softcap, 1.0, ("log_probs",))
        return log_probs, mask.sum()

    model.forward = types.MethodType(forward, model)


def lean_trainer_loss(trainer: Any, model: Any, inputs: dict, num_items_in_batch: Any) -> Any:
    """What TRL's SFTTrainer.compute_loss returns (label log-probabilities summed over trained tokens / their
    count), with its ``num_tokens`` metric kept, from the lean head (no per-token metric over the vocabulary)."""
    import torch

    log_probs, trained = model(**inputs, lean_lm_head=True)
    count = trained if num_items_in_batch is None else num_items_in_batch
    loss = -log_probs.sum() / torch.as_tensor(count).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * trainer.accelerator.num_processes
    mode = "train" if trainer.model.training else "eval"
    if mode == "train":
        mask = inputs.get("attention_mask")
        trainer._total_train_tokens += int(mask.sum()) if mask is not None else inputs["position_ids"].size(1)
    trainer._metrics[mode]["num_tokens"] = [trainer._total_train_tokens]
    return loss
