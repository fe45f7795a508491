"""A deliberate start for chat-marker embedding rows, and the PEFT pieces to train exactly those rows (no Dagster).

A base model given a chat template has marker tokens whose rows were never trained as turn markers: new tokens
(rows created for them, at the mean of the others) or tokens its vocabulary already had but never used, as
gemma-3-270m base's ``<start_of_turn>``/``<end_of_turn>``. Measured there: after 2 LoRA epochs P(``<end_of_turn>``)
at the end of a training answer stayed at 0.0000 and no answer stopped on vLLM; training the two rows at the LoRA
learning rate raised it only to ~0.0006. The logit of a token is its output row times the last hidden state, so a
row the model never emitted starts many nats below every plausible token, and a small learning rate does not close
that gap in a few steps.

So, before the PEFT model is built (PEFT copies the rows it trains when it wraps the embedding):

- :func:`initialise_marker_rows` gives the end-of-turn row the row of the token the base model emits where a text
  ends, its original EOS (``<eos>``; input row, and output row when untied), so at the end of an answer the model
  already gives end-of-turn the probability it gives a text's end; every other marker row gets the mean of the
  existing rows (a start-of-turn that looked like an end of text would say a text ends where a turn starts).
  ``method="mean"`` gives every marker the mean row;
- :func:`trainable_token_config` returns the ``LoraConfig`` arguments that train exactly those rows (PEFT's
  ``trainable_token_indices``; with tied embeddings, as Gemma's, one set of rows serves input and output);
- :func:`marker_parameter_groups` puts those rows in their own optimizer group, with their own learning rate and
  no weight decay (PEFT trains the rows' values, not a delta: decay would pull them towards zero).

The ids come from the prepared student directory's ``chat_markers.json``
(``assets.common.models.templates.read_chat_markers``: ``rows_to_initialise``, ``end_of_turn_id``, ``text_end_id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

InitMethod = Literal["text_end", "mean"]
TRAINABLE_TOKENS_PARAMETER = "trainable_tokens_delta"  # the name PEFT gives the trained rows' parameters


class MarkerInitError(ValueError):
    """The marker rows cannot be initialised as asked; the message says what to pass instead."""


@dataclass(frozen=True)
class MarkerRow:
    token: str
    id: int
    source: str  # "text_end:<token>" or "mean"
    input_norm_before: float
    input_norm_after: float
    output_norm_before: float | None  # None when the output embeddings are the input ones (tied)
    output_norm_after: float | None


@dataclass(frozen=True)
class MarkerInitReport:
    method: str
    tied: bool
    rows: list[MarkerRow]

    def to_dict(self) -> dict:
        return {"method": self.method, "tied": self.tied, "rows": [asdict(r) for r in self.rows]}


def embedding_tables(model: Any) -> tuple[Any, Any | None]:
    """(input embedding weight, output embedding weight or None when tied to the input)."""
    inputs = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    if output is None or output.weight.data_ptr() == inputs.data_ptr():
        return inputs, None
    return inputs, output.weight


def initialise_marker_rows(model: Any, tokenizer: Any, marker_ids: Sequence[int], *, end_of_turn_id: int,
                           text_end_id: int | None = None, method: InitMethod = "text_end") -> MarkerInitReport:
    """Set the rows of ``marker_ids`` in place (see the module docstring) and report their norms before and after.

    ``end_of_turn_id`` is the marker that ends an assistant turn; ``text_end_id`` the token the base model emits at
    a text's end (its original EOS), required by ``method="text_end"`` when ``end_of_turn_id`` is among the
    markers. The mean is taken over the rows of the tokenizer's tokens other than the markers.
    """
    import torch

    if method not in ("text_end", "mean"):
        raise MarkerInitError(f"method {method!r}: expected 'text_end' or 'mean'")
    ids = list(dict.fromkeys(int(i) for i in marker_ids))
    inputs, output = embedding_tables(model)
    rows = inputs.shape[0]
    bad = [i for i in ids if not 0 <= i < rows]
    if bad:
        raise MarkerInitError(f"marker ids {bad} are outside the embedding matrix ({rows} rows): resize the "
                              "embeddings to the tokenizer first (the prepared student directory already is)")
    copy_end = method == "text_end" and end_of_turn_id in ids
    if copy_end:
        if text_end_id is None or text_end_id == end_of_turn_id or text_end_id in ids:
            raise MarkerInitError(
                f"method 'text_end' copies the row of the token the base model ends texts with into end-of-turn "
                f"{end_of_turn_id}, but text_end_id is {text_end_id!r}: pass the original EOS id (chat_markers.json "
                "`text_end_id`), or use method='mean'")
    keep = torch.ones(min(rows, len(tokenizer)), dtype=torch.bool)
    keep[[i for i in ids if i < keep.shape[0]]] = False
    names = tokenizer.convert_ids_to_tokens(ids)
    tables = [t for t in (inputs, output) if t is not None]
    before = {id(t): t[ids].detach().float().norm(dim=1).tolist() for t in tables}
    with torch.no_grad():
        for table in tables:
            mean = table[: keep.shape[0]][keep].double().mean(dim=0).to(table.dtype)
            for token_id in ids:
                table[token_id] = table[text_end_id] if copy_end and token_id == end_of_turn_id else mean
    after = {id(t): t[ids].detach().float().norm(dim=1).tolist() for t in tables}
    end_source = f"text_end:{tokenizer.convert_ids_to_tokens(text_end_id)}" if copy_end else "mean"
    report = [
        MarkerRow(
            token=name, id=token_id, source=end_source if token_id == end_of_turn_id else "mean",
            input_norm_before=round(before[id(inputs)][k], 4), input_norm_after=round(after[id(inputs)][k], 4),
            output_norm_before=round(before[id(output)][k], 4) if output is not None else None,
            output_norm_after=round(after[id(output)][k], 4) if output is not None else None,
        )
        for k, (token_id, name) in enumerate(zip(ids, names, strict=True))
    ]
    return MarkerInitReport(method=method, tied=output is None, rows=report)


def _module_name(model: Any, module: Any) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def trainable_token_config(model: Any, token_ids: Sequence[int]) -> dict:
    """``LoraConfig`` keyword arguments that train exactly the rows ``token_ids`` besides the LoRA weights.

    Tied embeddings (Gemma): a list of ids; PEFT wraps the input embedding and makes the tied LM head read the
    same trained rows. Untied: the ids for the input embedding and for the LM head, so the end-of-turn token can
    be both read and emitted.
    """
    ids = sorted({int(i) for i in token_ids})
    if not ids:
        return {}
    _, output = embedding_tables(model)
    if output is None:
        return {"trainable_token_indices": ids}
    return {"trainable_token_indices": {_module_name(model, model.get_input_embeddings()): ids,
                                        _module_name(model, model.get_output_embeddings()): ids}}


def marker_parameter_groups(model: Any, learning_rate: float, marker_learning_rate: float,
                            weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups of a PEFT model: the trained marker rows at ``marker_learning_rate`` without weight
    decay, every other trainable parameter at ``learning_rate`` with ``weight_decay``."""
    rows, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (rows if TRAINABLE_TOKENS_PARAMETER in name else rest).append(parameter)
    if not rows:
        raise MarkerInitError("the model trains no token rows: build it with trainable_token_config(...) first")
    return [{"params": rest, "lr": learning_rate, "weight_decay": weight_decay},
            {"params": rows, "lr": marker_learning_rate, "weight_decay": 0.0}]


class _EffectiveHead:
    """What TRL's fused LM-head loss reads of an output layer (``weight``, ``bias``), for a head whose trained marker
    rows live in a PEFT trainable-tokens adapter: the base weight with those rows replaced, still differentiable."""

    def __init__(self, adapter: Any):
        self._adapter = adapter
        self.bias = getattr(adapter.base_layer, "bias", None)

    @property
    def weight(self):
        return self._adapter.get_merged_weights(self._adapter.active_adapters)


@contextmanager
def effective_output_head(model: Any):
    """While active, ``get_output_embeddings()`` of the (PEFT-wrapped) model's base model returns the head with its
    trained marker rows, so that TRL's fused loss, which reads the head's ``weight`` directly instead of calling it,
    trains and scores them. Restores the method on exit; a model without trained rows is left alone."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):  # multi-process training (accelerate launch) wraps the model
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    adapter = getattr(head, "token_adapter", None)
    if adapter is None:
        yield
        return
    base.get_output_embeddings = lambda: _EffectiveHead(adapter)
    try:
        yield
    finally:
        del base.get_output_embeddings  # the class's method again
