"""The license of generated text: what the teacher's own files or package say (no Dagster here).

Text a model generates is used under that model's terms, so the dataset card's ``license`` is the teacher's, as far
as it is written down: for the embedded teacher, its package's metadata (``License-Expression``, ``License`` or a
license classifier); for a local teacher directory, the ``license`` field of its model card's YAML front matter
(``README.md``, as on the Hugging Face Hub), else the presence of a LICENSE file. Nothing is guessed: when no file
states an identifier the license is ``other`` and the card says what was found and that the terms must be checked.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

UNKNOWN = "other"  # the Hub's identifier for a license that is not one of its list (or not known)
# Trove classifiers of the licenses teachers ship under, as Hub identifiers.
_CLASSIFIERS = {"Apache Software License": "apache-2.0", "MIT License": "mit",
                "BSD License": "bsd", "GNU General Public License v3 (GPLv3)": "gpl-3.0"}
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")


@dataclass(frozen=True)
class TeacherLicense:
    """``identifier``: a Hub license identifier (e.g. ``apache-2.0``), or ``other`` when no file states one;
    ``evidence``: where it was read, or what was looked at."""

    identifier: str
    evidence: str

    @property
    def known(self) -> bool:
        return self.identifier != UNKNOWN


def _identifier(value: str | None) -> str | None:
    """A single license identifier as the Hub spells it (lower case); None for free text or an expression."""
    value = (value or "").strip()
    return value.lower() if _IDENTIFIER.match(value) else None


def package_license(distribution: str) -> TeacherLicense:
    """What an installed Python distribution's metadata declares."""
    try:
        meta = importlib.metadata.distribution(distribution).metadata
    except importlib.metadata.PackageNotFoundError:
        return TeacherLicense(UNKNOWN, f"the package {distribution} is not installed: its license cannot be read")
    version = meta.get("Version")
    for field in ("License-Expression", "License"):
        identifier = _identifier(meta.get(field))
        if identifier:
            return TeacherLicense(identifier, f"package metadata of {distribution}=={version}: {field}: "
                                              f"{meta.get(field)}")
    for classifier in meta.get_all("Classifier") or []:
        name = classifier.rsplit("::", 1)[-1].strip()
        if classifier.startswith("License ::") and name in _CLASSIFIERS:
            return TeacherLicense(_CLASSIFIERS[name], f"package metadata of {distribution}=={version}: {classifier}")
    return TeacherLicense(UNKNOWN, f"package metadata of {distribution}=={version} declares no license identifier")


def model_card_license(model_dir: str | Path, name: str) -> TeacherLicense:
    """What a model directory's ``README.md`` front matter (``license:``) or LICENSE file says. ``name`` (the model's
    name) is what the evidence calls the directory: the card never shows a local path."""
    root = Path(model_dir)
    readme = root / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            try:
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
            except yaml.YAMLError:
                front = {}
            value = front.get("license") if isinstance(front, dict) else None
            identifier = _identifier(value) if isinstance(value, str) else None
            if identifier:
                extra = f" ({front['license_name']})" if identifier == UNKNOWN and front.get("license_name") else ""
                return TeacherLicense(identifier, f"README.md front matter of {name}: license: {value}{extra}")
    licenses = sorted(p.name for p in root.glob("LICEN[CS]E*") if p.is_file()) if root.is_dir() else []
    if licenses:
        return TeacherLicense(UNKNOWN, f"{name} ships {', '.join(licenses)} but states no license identifier: read "
                                       "it and set the card's license before publishing")
    return TeacherLicense(UNKNOWN, f"{name} has no README.md `license:` field and no LICENSE file: find the "
                                   "teacher's terms and set the card's license before publishing")


def teacher_license(manifest: dict) -> TeacherLicense:
    """The license of the text ``teacher_model`` (its manifest) generates: its package's for the embedded teacher
    (``source`` ``embedded:<distribution>==<version>:<file>``), its directory's otherwise."""
    if not manifest:
        return TeacherLicense(UNKNOWN, "no teacher_model manifest in storage: the teacher is not known")
    source = str(manifest.get("source") or "")
    if source.startswith("embedded:"):
        distribution = source.removeprefix("embedded:").split("==", 1)[0].split(":", 1)[0]
        return package_license(distribution)
    return model_card_license(manifest.get("path") or "", str(manifest.get("name") or "the teacher"))
