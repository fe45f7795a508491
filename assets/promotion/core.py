"""Promotion: a model becomes the project's current model only when every check on it passed (no Dagster here).

The current model is the one continual SFT starts from and the one users are pointed at. A model whose checks
failed, were not run, or ran against another materialization is refused; it stays on disk with its report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

PASSED, FAILED, NOT_RUN, STALE = "passed", "failed", "not run", "ran on another materialization"


@dataclass(frozen=True)
class CheckVerdict:
    asset: str
    check: str
    status: str  # PASSED | FAILED | NOT_RUN | STALE
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def check_verdict(asset: str, check: str, evaluated: bool, passed: bool | None, target_id: int | None,
                  materialization_id: int, detail: str = "", judged_model_id: int | None = None,
                  candidate_id: int | None = None) -> CheckVerdict:
    """The verdict of one check for one materialization: it must have run on that very materialization and passed.

    A check of an asset that judges a model (the evaluation) counts only if that materialization judged the
    candidate: ``judged_model_id`` (the model materialization it judged) must be ``candidate_id``."""
    if not evaluated:
        return CheckVerdict(asset, check, NOT_RUN, detail or "no evaluation recorded")
    if target_id is not None and target_id != materialization_id:
        return CheckVerdict(asset, check, STALE, f"evaluated materialization {target_id}, the candidate is "
                            f"{materialization_id}")
    if judged_model_id is not None and candidate_id is not None and judged_model_id != candidate_id:
        return CheckVerdict(asset, check, STALE, f"{asset} judged model materialization {judged_model_id}, the "
                            f"candidate is {candidate_id}")
    return CheckVerdict(asset, check, PASSED if passed else FAILED, detail)


@dataclass(frozen=True)
class Decision:
    promote: bool
    verdicts: tuple[CheckVerdict, ...]
    reason: str

    def rows(self) -> list[dict]:
        return [asdict(v) for v in self.verdicts]


def decide(verdicts: Sequence[CheckVerdict], model_asset: str) -> Decision:
    """Promote only when there is at least one check on the model asset and every check passed."""
    verdicts = tuple(sorted(verdicts, key=lambda v: (v.asset, v.check)))
    if not any(v.asset == model_asset for v in verdicts):
        return Decision(False, verdicts, f"no checks on {model_asset}: nothing says the model is sound")
    refused = [v for v in verdicts if not v.passed]
    if refused:
        names = ", ".join(f"{v.asset}:{v.check} ({v.status})" for v in refused)
        return Decision(False, verdicts, f"refused: {names}")
    return Decision(True, verdicts, f"all {len(verdicts)} checks passed")


def promotion_record(model_dir: str, content_hash: str, run_id: str, decision: Decision) -> dict:
    """What `promoted_model` writes as the project's current model: where it is, its hash, the run that trained it,
    its base model (from its lineage.json) and the checks it passed."""
    if not decision.promote:
        raise ValueError(f"{model_dir}: not promoted ({decision.reason})")
    lineage_path = Path(model_dir) / "lineage.json"
    if not lineage_path.exists():
        raise FileNotFoundError(f"{lineage_path}: missing; a model without its lineage is never promoted")
    base = json.loads(lineage_path.read_text()).get("base_model", {})
    return {"model_dir": model_dir, "content_hash": content_hash, "dagster_run_id": run_id,
            "base_model": {k: base.get(k) for k in ("path", "name", "content_hash")}, "checks": decision.rows()}
