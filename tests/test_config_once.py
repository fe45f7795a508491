"""Each knob is declared once in effect: a stage's Dagster config (what the launchpad shows) and its core config
(what the Dagster-free code runs with) agree on every shared field's default, and every field one side has and
the other lacks is listed here with the reason. The pairs are found from the Definitions: every asset's config
class, its nested config classes and every resource, paired with the dataclass their conversion method returns."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import dagster as dg
import pydantic
import pytest

from pipelines.definitions import defs

# (Dagster config class, field) -> why it has no field of that name in the core config
DAGSTER_ONLY = {
    ("DedupSettings", "semantic"): "nested SemanticDedupSettings, paired with SemanticDedupConfig on its own",
    ("DecontamSettings", "similarity_threshold"): "becomes minhash.threshold (0 disables the MinHash detector)",
    ("DecontamSettings", "semantic"): "nested SemanticSettings, paired with SemanticConfig on its own; becomes "
                                      "semantic_detector (None when semantic.enabled is false)",
    ("SemanticSettings", "enabled"): "whether the semantic detector runs at all (off: semantic_detector None)",
    ("SemanticSettings", "verify"): "nested RephraseVerifySettings, paired with RephraseVerifyConfig on its own",
    ("RephraseVerifySettings", "enabled"): "whether the judge is asked at all (off: SemanticConfig.verify None)",
    ("RephraseVerifySettings", "judge_model_path"): "which model directory the judge runs on, resolved by the asset",
    ("FilterSettings", "extra_special_tokens"): "merged with the models' special tokens into special_tokens",
    ("MagpieGenerationConfig", "batch_size"): "checkpointing granularity, not what is generated",
    ("SFTModelConfig", "model_name"): "names the model directory",
    ("TaggingSettings", "use_judge"): "whether the engine is started at all (off: the fallback regex tagger)",
    ("TaggingSettings", "judge_model_path"): "which model directory the judge runs on, resolved by the asset",
    ("TaggingSettings", "judge"): "nested JudgeSettings, paired with JudgeConfig on its own",
    ("TaggingSettings", "calibrate"): "whether the asset also judges the planted set",
}
# (Dagster config class, field) -> why the two defaults differ in form but not in meaning
SAME_MEANING = {
    ("MagpieGenerationConfig", "system_prompts"): "[] = no system message = the core's ((\"\", 1.0),)",
}
# (core config class, field) -> why the launchpad does not expose it
CORE_ONLY = {
    ("MinHashConfig", "hash"): "xxh64; sha1 exists to compare with datasketch in tests and benchmarks",
    ("MinHashConfig", "weights"): "LSH false positive/negative weights: derived, not a user knob",
    ("MinHashConfig", "bands"): "chosen by optimal_param from threshold and weights",
    ("MinHashConfig", "rows"): "chosen by optimal_param from threshold and weights",
    ("DecontamConfig", "roles"): "both sides are always compared (prompts and responses)",
    ("DecontamConfig", "minhash"): "built from similarity_threshold",
    ("DecontamConfig", "minhash_min_words"): "fixed by the detector's design (short texts go to the n-gram side)",
    ("SemanticConfig", "judge"): "built from the nested verify settings (None when verify.enabled is false)",
    ("DecontamConfig", "semantic_detector"): "built from the nested `semantic` settings; None in the library calls "
                                             "(no embedding cache or judge there), on by default in the asset",
    ("FilterConfig", "special_tokens"): "read from the model manifests, plus extra_special_tokens",
    ("FilterConfig", "template_markers"): "read from the student's manifest (its chat template's markers)",
    ("MagpieConfig", "shard"): "the Dagster partition key",
    ("TrainConfig", "lora_target_modules"): "all-linear, the recipe's default",
    ("TrainConfig", "weight_decay"): "0, the recipe's default",
    ("TrainConfig", "per_device_eval_batch_size"): "follows the training batch size's default",
    ("TrainConfig", "save_total_limit"): "checkpoint housekeeping",
    ("TrainConfig", "logging_steps"): "logging cadence",
    ("TrainConfig", "precision"): "auto: bf16 on a GPU that supports it, fp32 on CPU",
    ("TrainConfig", "extra"): "escape hatch for python -m training",
    ("TrainConfig", "memory_budget_gb"): "gradient checkpointing budget: from the training device (training/memory.py)",
}


def _core_of(cls) -> list[type]:
    """Dataclasses returned by the class's own methods (to_core, engine_config, ...)."""
    cores = []
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_") or name not in vars(cls):
            continue
        returned = typing.get_type_hints(member).get("return")
        if isinstance(returned, type) and dataclasses.is_dataclass(returned) and returned.__name__.endswith("Config"):
            cores.append(returned)
    return cores


def _config_classes() -> set[type]:
    found, todo = set(), []
    for assets_def in defs.resolve_asset_graph().assets_defs:
        fn = getattr(assets_def.op.compute_fn, "decorated_fn", None)
        if fn is not None and "config" in inspect.signature(fn).parameters:
            todo.append(typing.get_type_hints(fn)["config"])
    todo += [type(r) for r in (defs.resources or {}).values() if isinstance(r, dg.ConfigurableResource)]
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.add(cls)
        for field in cls.model_fields.values():
            for arg in [field.annotation, *typing.get_args(field.annotation)]:
                if isinstance(arg, type) and issubclass(arg, pydantic.BaseModel):
                    todo.append(arg)
    return found


PAIRS = sorted({(c, tuple(_core_of(c))) for c in _config_classes() if _core_of(c)}, key=lambda p: p[0].__name__)


def _plain(value):
    if isinstance(value, pydantic.BaseModel):
        return _plain(value.model_dump())
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _dagster_defaults(cls) -> dict:
    return {name: f.get_default(call_default_factory=True) for name, f in cls.model_fields.items()}


def _core_defaults(cls) -> dict:
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def test_every_stage_config_is_paired_with_its_core():
    names = {(c.__name__, k.__name__) for c, cores in PAIRS for k in cores}
    assert {("DedupSettings", "MinHashConfig"), ("DecontamSettings", "DecontamConfig"), ("Sampling", "SamplingConfig"),
            ("SFTModelConfig", "TrainConfig"), ("SFTModelConfig", "ContinualConfig"),
            ("VLLMEngine", "EngineConfig")} <= names, names


@pytest.mark.parametrize(("dagster_cls", "cores"), PAIRS, ids=[c.__name__ for c, _ in PAIRS])
def test_dagster_and_core_configs_agree(dagster_cls, cores):
    ours = _dagster_defaults(dagster_cls)
    drift, covered = [], set()
    for core_cls in cores:
        theirs = _core_defaults(core_cls)
        covered |= {f.name for f in dataclasses.fields(core_cls)}  # required fields (no default) pair by name
        drift += [f"{dagster_cls.__name__}.{n} = {_plain(ours[n])!r} but {core_cls.__name__}.{n} = "
                  f"{_plain(theirs[n])!r}" for n in sorted(set(ours) & set(theirs))
                  if _plain(ours[n]) != _plain(theirs[n]) and (dagster_cls.__name__, n) not in SAME_MEANING]
        hidden = [f"{core_cls.__name__}.{n}" for n in sorted(set(theirs) - set(ours))
                  if (core_cls.__name__, n) not in CORE_ONLY]
        assert not hidden, f"{hidden}: not settable from {dagster_cls.__name__}; expose it or list why in CORE_ONLY"
    assert not drift, drift
    unpaired = [f"{dagster_cls.__name__}.{n}" for n in sorted(set(ours) - covered)
                if (dagster_cls.__name__, n) not in DAGSTER_ONLY]
    names = [k.__name__ for k in cores]
    assert not unpaired, f"{unpaired}: no field of that name in {names}; add one, or list why in DAGSTER_ONLY"


def test_the_exception_lists_name_real_fields():
    names = [c.__name__ for c, _ in PAIRS]
    assert len(names) == len(set(names)), f"config classes share a name (the lists above key by name): {names}"
    fields = {c.__name__: set(c.model_fields) for c, _ in PAIRS} | {
        k.__name__: {f.name for f in dataclasses.fields(k)} for _, cores in PAIRS for k in cores}
    stale = [key for key in [*DAGSTER_ONLY, *SAME_MEANING, *CORE_ONLY] if key[1] not in fields.get(key[0], set())]
    assert not stale, f"listed but no such field (remove them): {stale}"
