"""Pre-flight checks on the real collated batches, before any optimisation step (no Dagster here).

The costliest SFT bugs are silent: a prompt that is not masked, an end-of-turn token that is never trained, a
template that differs between training and serving. Each check here fails the run with a message that says what is
wrong and what to change; the statistics are returned for the run's metadata.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from assets.common.models.chat_template import render, special_token_strings, template_difference
from training.masking import assistant_end_of_turn


class PreflightError(RuntimeError):
    """A pre-flight check failed: training would silently learn the wrong thing."""


@dataclass
class PreflightReport:
    examples: int = 0
    tokens: int = 0  # non-pad tokens
    trainable_tokens: int = 0
    padding_tokens: int = 0
    assistant_turns: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_tokens / self.tokens if self.tokens else 0.0

    @property
    def padding_fraction(self) -> float:
        total = self.tokens + self.padding_tokens
        return self.padding_tokens / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "tokens": self.tokens,
            "trainable_tokens": self.trainable_tokens,
            "trainable_fraction": round(self.trainable_fraction, 4),
            "padding_tokens": self.padding_tokens,
            "padding_fraction": round(self.padding_fraction, 4),
            "assistant_turns": self.assistant_turns,
        }


def _sequences(batch: dict) -> Iterable[tuple[list[int], list[int]]]:
    """Split a collated batch into (input_ids, labels) per example, dropping padding.

    Padded batches: one row per example, padding where attention_mask is 0. Padding-free batches: one row holding
    the examples end to end; a new example starts where position_ids restart at 0.
    """
    input_ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    if "attention_mask" in batch:
        for ids, lab, mask in zip(input_ids, labels, batch["attention_mask"].tolist(), strict=True):
            keep = [i for i, m in enumerate(mask) if m]  # not ids[:sum(mask)]: that assumes right padding
            yield [ids[i] for i in keep], [lab[i] for i in keep]
        return
    positions = batch["position_ids"].tolist()
    for ids, lab, pos in zip(input_ids, labels, positions, strict=True):
        starts = [i for i, p in enumerate(pos) if p == 0]
        # trailing padding of a padding-free row also has position 0; it is dropped by the caller via pad counting
        bounds = [*starts, len(pos)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            yield ids[a:b], lab[a:b]


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, value in enumerate([*labels, -100]):
        if value != -100 and start is None:
            start = i
        elif value == -100 and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _count_subsequence(haystack: list[int], needle: list[int]) -> int:
    if not needle:
        return 0
    n = len(needle)
    return sum(1 for i in range(len(haystack) - n + 1) if haystack[i:i + n] == needle)


@dataclass(frozen=True)
class TemplateMarkers:
    """Token ids the checks need, derived from the tokenizer and the chat template."""

    end_of_turn_id: int
    assistant_header_ids: list[int]  # what the template writes before an assistant's words
    structural_ids: frozenset[int]  # special tokens other than end-of-turn: never trainable
    pad_id: int | None


def template_markers(tokenizer: Any, chat_template: str) -> TemplateMarkers:
    """The markers of ``chat_template`` as this tokenizer encodes them."""
    end_of_turn = assistant_end_of_turn(tokenizer, chat_template)
    user = [{"role": "user", "content": "hi"}]
    header = render(tokenizer, user, add_generation_prompt=True, chat_template=chat_template)[
        len(render(tokenizer, user, chat_template=chat_template)):
    ].rstrip()
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    structural = {tokenizer.convert_tokens_to_ids(t) for t in special_token_strings(tokenizer)} - {end_id}
    structural.discard(tokenizer.unk_token_id)
    return TemplateMarkers(
        end_of_turn_id=end_id,
        assistant_header_ids=tokenizer(header, add_special_tokens=False)["input_ids"] if header else [],
        structural_ids=frozenset(i for i in structural if i is not None),
        pad_id=tokenizer.pad_token_id,
    )


def check_batches(batches: Iterable[dict], markers: TemplateMarkers, tokenizer: Any,
                  max_failures: int = 5) -> PreflightReport:
    """Run every check over every example of ``batches``; raise :class:`PreflightError` on the first failures."""
    report = PreflightReport()
    for batch in batches:
        if "attention_mask" in batch:
            report.padding_tokens += int((batch["attention_mask"] == 0).sum())
            pad_labels = batch["labels"][batch["attention_mask"] == 0]
            if (pad_labels != -100).any():
                report.failures.append("padding positions carry labels: padding would be trained")
        for ids, labels in _sequences(batch):
            if not ids:
                continue
            if all(i == markers.pad_id for i in ids) and all(lab == -100 for lab in labels):
                report.padding_tokens += len(ids)  # padding-free trailing padding
                continue
            report.examples += 1
            report.tokens += len(ids)
            trainable = [i for i, lab in enumerate(labels) if lab != -100]
            report.trainable_tokens += len(trainable)
            where = f"example {report.examples} (starts {tokenizer.decode(ids[:24])!r})"
            if not trainable:
                report.failures.append(f"{where}: no trainable token (every label is -100)")
                continue
            bad = sorted({ids[i] for i in trainable if ids[i] in markers.structural_ids})
            if bad:
                report.failures.append(
                    f"{where}: prompt/template tokens are trainable: {tokenizer.convert_ids_to_tokens(bad)}; "
                    "the prompt is not masked (only assistant words and the end-of-turn token may be trained)"
                )
            runs = _runs(labels)
            turns = _count_subsequence(ids, markers.assistant_header_ids)
            report.assistant_turns += turns
            unterminated = [r for r in runs if ids[r[1] - 1] != markers.end_of_turn_id]
            if unterminated:
                a, b = unterminated[0]
                report.failures.append(
                    f"{where}: a trained span does not end with the end-of-turn token "
                    f"{tokenizer.convert_ids_to_tokens(markers.end_of_turn_id)!r} "
                    f"(ends {tokenizer.decode(ids[max(0, b - 8):b])!r}); the model would not learn to stop"
                )
            elif markers.assistant_header_ids and not turns:
                report.failures.append(
                    f"{where}: {len(runs)} trained span(s) but no assistant turn (no "
                    f"{tokenizer.decode(markers.assistant_header_ids)!r} header): text that is not an assistant's "
                    "reply would be trained"
                )
            elif turns and len(runs) != turns:
                trained = [tokenizer.decode(ids[a:b])[-60:] for a, b in runs]
                report.failures.append(
                    f"{where}: {turns} assistant turns but {len(runs)} trained spans (ending {trained}); every "
                    "assistant turn, and nothing else, must be trained through its end-of-turn token"
                )
            if len(report.failures) >= max_failures:
                break
        if len(report.failures) >= max_failures:
            break
    if report.failures:
        raise PreflightError("pre-flight checks failed:\n- " + "\n- ".join(report.failures))
    return report


def check_template_identity(used: str | dict[str, str], shipped: str | None, where: str) -> None:
    """The template used to render training data must be byte-identical to the one saved with the model.

    ``used`` may be a tokenizer's ``chat_template`` as loaded: a dict of named templates when the model also ships
    ``additional_chat_templates/``; its ``default`` entry is the one applied when no template is named.
    """
    if shipped is None:
        raise PreflightError(f"{where}: no chat template saved (chat_template.jinja / tokenizer_config.json)")
    if isinstance(used, dict):
        if not isinstance(used.get("default"), str):
            raise PreflightError(f"{where}: the tokenizer has named chat templates {sorted(used)} but no 'default' "
                                 "one; save the template to train and serve with as chat_template.jinja")
        used = used["default"]
    difference = template_difference(used, shipped)
    if difference:
        raise PreflightError(
            f"{where}: the chat template used for training differs from the one saved with the model, first at "
            f"character {difference[0]}: used {difference[1]!r} vs saved {difference[2]!r}. "
            "Train and serve with the model's own template, byte for byte."
        )
