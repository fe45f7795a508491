"""The user's configuration, in one place: a profile file (profiles/<name>.yaml, or any YAML path) named by the
environment variable ``SFT_PROFILE``, read when the code location loads.

A profile is run config (top-level ``ops`` and/or ``resources``). Dagster has no "current config" of its own, and a
run launched by the automation sensor carries no run config at all, so the profile is applied to the definitions
themselves: each asset's config schema gets the profile's values as its defaults, and the resources are built from
the profile's ``resources``. A run launched from the UI (its launchpad shows the profile's values), by the schedule,
by automation or with ``dagster asset materialize`` therefore uses the same models and sizes; explicit run config
still overrides a value for one run. Unset: the code's own defaults (the recommended production values).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg
import yaml

from assets.common.data.user_files import located, read_user_text

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
PROFILE_ENV = "SFT_PROFILE"  # a profile name (demo, gpu-example) or a path to a YAML file


def profile_path(name_or_path: str) -> Path:
    """``demo`` -> profiles/demo.yaml; anything with a slash or a .yaml/.yml suffix is a path."""
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        return Path(name_or_path).expanduser()
    return PROFILES_DIR / f"{name_or_path}.yaml"


class ProfileError(ValueError):
    """A profile file cannot be used: the message names the file, the line where there is one, and the fix."""


def load_profile(name_or_path: str) -> dict:
    """The profile's contents; a file that is not UTF-8 or not YAML, or not run config, fails naming it (and the
    line)."""
    path = profile_path(name_or_path)
    if not path.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no such profile; known profiles: {known} (or give a path to a YAML file)")
    try:
        config = yaml.safe_load(read_user_text(path, ProfileError)) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = located(path, mark.line + 1 if mark is not None else None)
        column = f" at column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ProfileError(f"{where}: not valid YAML ({problem}{column}); fix that line (indent with spaces, "
                           f"quote values holding ': ' or '#'), or unset {PROFILE_ENV}") from None
    if not isinstance(config, dict) or not set(config) <= {"ops", "resources"}:
        raise ProfileError(f"{path}: a profile is run config with top-level keys 'ops' and/or 'resources'")
    return config


def active_profile() -> tuple[str | None, dict]:
    """The profile ``SFT_PROFILE`` names (its path and contents), or (None, {}) when it is unset or empty."""
    name = os.environ.get(PROFILE_ENV, "").strip()
    if not name:
        return None, {}
    return str(profile_path(name)), load_profile(name)


def _with_default(field: dg.Field, value, where: str) -> dg.Field:
    """``field`` with ``value`` as its default; a mapping into a config shape sets only the keys it names."""
    config_type = field.config_type
    if isinstance(value, Mapping) and isinstance(config_type, dg.Shape):
        fields = dict(config_type.fields)
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(fields)}")
        fields.update({name: _with_default(fields[name], v, f"{where}.{name}") for name, v in value.items()})
        shape = dg.Shape(fields, description=config_type.description,
                         field_aliases=getattr(config_type, "field_aliases", None))
        return dg.Field(shape, description=field.description)
    return dg.Field(config_type, default_value=value, is_required=False, description=field.description)


def with_config_defaults(assets_def: dg.AssetsDefinition, config: Mapping, where: str) -> dg.AssetsDefinition:
    """``assets_def`` whose op config defaults are ``config`` (the profile's ``ops.<name>.config``). The compute
    function is unchanged: its ``dg.Config`` class is built from the run's op config, which Dagster fills from these
    defaults for every key the run config leaves out."""
    op = assets_def.op
    if op.config_schema is None or not isinstance(op.config_schema.as_field().config_type, dg.Shape):
        raise ValueError(f"{where}: asset '{op.name}' takes no config")
    field = _with_default(op.config_schema.as_field(), config, where)
    new_op = op.with_replaced_properties(name=op.name, config_schema=field)
    with warnings.catch_warnings():  # (AssetsDefinition's `execution_type` parameter is marked beta)
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.AssetsDefinition(**{**assets_def.get_attributes_dict(), "node_def": new_op})


def apply_profile(assets: Sequence, profile: Mapping, source: str) -> list:
    """Every asset with the profile's ``ops`` section as its config defaults (others unchanged). An ``ops`` entry
    that names no asset, or a field the asset's config lacks, is an error naming it."""
    ops = dict(profile.get("ops") or {})
    by_op = {a.op.name: a for a in assets if isinstance(a, dg.AssetsDefinition) and a.is_executable}
    unknown = sorted(set(ops) - set(by_op))
    if unknown:
        raise ValueError(f"{source}: ops {unknown} name no asset of this project; assets: {sorted(by_op)}")
    out = []
    for asset in assets:
        name = asset.op.name if isinstance(asset, dg.AssetsDefinition) and asset.is_executable else None
        config = (ops.get(name) or {}).get("config") if name in ops else None
        out.append(with_config_defaults(asset, config, f"{source}: ops.{name}.config") if config else asset)
    return out


def resource_config(profile: Mapping, key: str) -> dict:
    """The profile's ``resources.<key>.config`` (empty when it has none)."""
    return dict(((profile.get("resources") or {}).get(key) or {}).get("config") or {})


def external_inputs(profile: Mapping) -> dict:
    """The external inputs the profile names (the `ExternalInputs` resource's fields): the teacher's and the base
    model's local directories, the user's eval files and SFT files."""
    ops = profile.get("ops") or {}

    def config(name: str) -> dict:
        return dict((ops.get(name) or {}).get("config") or {})

    files = [entry["path"] for entry in config("eval_sets").get("user_files") or []]
    sft_files = [entry["path"] for entry in config("user_sft_sources").get("sources") or []]
    return {"teacher_model_path": config("teacher_model").get("path"),
            "base_model_path": config("base_model").get("path"), "user_eval_files": files,
            "user_sft_files": sft_files}
