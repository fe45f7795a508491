"""The tagging stage's configuration besides the judge's (no Dagster here)."""

from __future__ import annotations

from dataclasses import dataclass

from assets.common.text.language import DETECTORS


@dataclass(frozen=True)
class TaggingConfig:
    """The tagging stage's knobs besides the judge's. ``language_detector``: ``fasttext`` (lid.176, the default) or
    ``lingua`` (75 languages, high accuracy, 28-62x slower; see assets/common/text/language.py). ``min_letters``: a text
    with fewer letters (code removed) is language ``und``. Label filters (all off by default): ``allowed_languages``,
    ISO 639-1 codes both the instruction and the response must be in (None: all); scores are the judge's 1-5, bounds
    inclusive, None off; ``reject_unparsed`` rejects rows whose judge answer did not parse."""

    language_detector: str = "fasttext"
    min_letters: int = 6

    allowed_languages: tuple[str, ...] | None = None
    min_instruction_quality: int | None = None
    min_response_quality: int | None = None
    min_difficulty: int | None = None
    max_difficulty: int | None = None
    reject_unparsed: bool = False

    def __post_init__(self) -> None:
        if self.language_detector not in DETECTORS:
            raise ValueError(f"language_detector must be one of {list(DETECTORS)}, got {self.language_detector!r}")
        if self.allowed_languages is not None:
            object.__setattr__(self, "allowed_languages", tuple(c.lower() for c in self.allowed_languages))
        for name in ("min_instruction_quality", "min_response_quality", "min_difficulty", "max_difficulty"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 5:
                raise ValueError(f"{name} must be 1-5 or None (off), got {value}")
        if None not in (self.min_difficulty, self.max_difficulty) and self.min_difficulty > self.max_difficulty:
            raise ValueError(f"min_difficulty {self.min_difficulty} > max_difficulty {self.max_difficulty}")

    @property
    def active(self) -> list[str]:
        """The rules with a threshold set."""
        on = {"unparsed": self.reject_unparsed, "language": self.allowed_languages is not None,
              "instruction_quality": self.min_instruction_quality is not None,
              "response_quality": self.min_response_quality is not None,
              "difficulty": self.min_difficulty is not None or self.max_difficulty is not None}
        return [name for name, is_on in on.items() if is_on]
