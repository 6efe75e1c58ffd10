"""A project's labels: its rating flags, rating scale and comparison strengths.

Stored on the project (`Project.label_config`, JSON) in one shape, checked here and nowhere else:

    {
      "flags": [{"name": "harmful", "description": "Harmful", "excludes": true}, ...],
      "rating": {"min": 1, "max": 7, "threshold": 5},
      "strengths": [{"value": 1, "label": "slightly better"}, ...]
    }

- A flag's `name` is what a rating stores in `payload.flags`; `description` is what a labeler
  reads; `excludes`: a response with this flag is kept out of datasets (never `chosen` in
  preference pairs, dropped from SFT rows by `exclude_flagged`, labelled false in KTO rows).
- `rating.threshold`: the score from which a rated response is good (KTO's `label: true`).
- `strengths`: how much better a compared response is; a vote's weight is its `value`.

A project made before labels were per project has today's global lists (`DEFAULT`); a key left
out of a stored config reads as its default, so an older row never breaks a page.

This module imports no model: `annotation.models` uses it for the field's default and check.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from django.core.exceptions import ValidationError

DEFAULT: dict = {
    "flags": [
        {"name": "fails_instruction", "description": "Fails to follow the instruction", "excludes": True},
        {"name": "made_up_facts", "description": "Makes up facts", "excludes": True},
        {"name": "harmful", "description": "Harmful", "excludes": True},
        {"name": "inappropriate", "description": "Inappropriate for a customer assistant", "excludes": True},
        {"name": "personal_data", "description": "Contains personal data", "excludes": True},
    ],
    "rating": {"min": 1, "max": 7, "threshold": 5},
    "strengths": [
        {"value": 1, "label": "slightly better"},
        {"value": 2, "label": "clearly better"},
        {"value": 3, "label": "much better"},
    ],
}  # fmt: skip

FIELD = "label_config"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_FLAGS = 30
MAX_STRENGTHS = 9
SCALE = (0, 100)  # the widest rating scale a project may set


def default() -> dict:
    """Today's labels, a fresh copy (the model field's default)."""
    return copy.deepcopy(DEFAULT)


@dataclass(frozen=True)
class Labels:
    """A project's labels, read."""

    flags: dict[str, str]  # name -> description, in the configured order
    excluding: frozenset[str]  # the names of the flags that keep a response out of datasets
    low: int
    high: int
    threshold: int
    strengths: dict[int, str]  # value -> label, in the configured order

    @property
    def scores(self) -> list[int]:
        return list(range(self.low, self.high + 1))

    def excludes(self, flags) -> bool:
        """Whether a rating with these flags keeps its response out of datasets."""
        return any(flag in self.excluding for flag in flags or ())


def labels_of(config: dict | None) -> Labels:
    """The labels of a stored config (cleaned on write; read leniently: defaults fill gaps)."""
    config = config if isinstance(config, dict) else {}
    flags = config.get("flags", DEFAULT["flags"])
    rating = {**DEFAULT["rating"], **(config.get("rating") or {})}
    strengths = config.get("strengths") or DEFAULT["strengths"]
    return Labels(
        flags={f["name"]: f.get("description") or f["name"] for f in flags},
        excluding=frozenset(f["name"] for f in flags if f.get("excludes")),
        low=rating["min"],
        high=rating["max"],
        threshold=rating["threshold"],
        strengths={s["value"]: s["label"] for s in strengths},
    )


def _error(where: str, message: str) -> ValidationError:
    return ValidationError({FIELD: f"{where}: {message}"})


def _whole(value, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _error(where, f"expected a whole number from {low} to {high}, got {value!r}.")
    return value


def _text(value, where: str, *, limit: int = 200) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(where, "expected non-empty text.")
    if len(value) > limit or "\x00" in value:
        raise _error(where, f"expected at most {limit} characters, without NUL.")
    return value.strip()


def _unknown_keys(item: dict, known: set[str], where: str) -> None:
    if unknown := sorted(set(item) - known):
        raise _error(where, f"unknown keys {unknown}; known: {sorted(known)}.")


def clean(config) -> dict:
    """The config as stored: every key present, in the documented shape; a ValidationError on
    `label_config` names the first bad entry by its path (e.g. `flags[2].name: ...`)."""
    if config is None or config == {}:
        return default()
    if not isinstance(config, dict):
        raise _error("label_config", "expected an object with flags, rating and strengths.")
    _unknown_keys(config, {"flags", "rating", "strengths"}, "label_config")

    flags = config.get("flags", DEFAULT["flags"])
    if not isinstance(flags, list) or len(flags) > MAX_FLAGS:
        raise _error("flags", f"expected a list of at most {MAX_FLAGS} flags.")
    clean_flags, names = [], set()
    for i, flag in enumerate(flags):
        where = f"flags[{i}]"
        if not isinstance(flag, dict):
            raise _error(where, "expected an object with name, description and excludes.")
        _unknown_keys(flag, {"name", "description", "excludes"}, where)
        name = flag.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise _error(
                f"{where}.name",
                f"{name!r} is not a name: lower-case letters, digits and _, starting with a "
                "letter, at most 40 characters.",
            )
        if name in names:
            raise _error(f"{where}.name", f"{name!r} is listed twice.")
        names.add(name)
        excludes = flag.get("excludes", False)
        if not isinstance(excludes, bool):
            raise _error(f"{where}.excludes", "expected true or false.")
        description = _text(flag.get("description", name), f"{where}.description")
        clean_flags.append({"name": name, "description": description, "excludes": excludes})

    rating = config.get("rating", DEFAULT["rating"])
    if not isinstance(rating, dict):
        raise _error("rating", "expected an object with min, max and threshold.")
    _unknown_keys(rating, {"min", "max", "threshold"}, "rating")
    low = _whole(rating.get("min", DEFAULT["rating"]["min"]), "rating.min", *SCALE)
    high = _whole(rating.get("max", DEFAULT["rating"]["max"]), "rating.max", low + 1, SCALE[1])
    threshold = _whole(
        rating.get("threshold", min(max(DEFAULT["rating"]["threshold"], low), high)),
        "rating.threshold",
        low,
        high,
    )

    strengths = config.get("strengths", DEFAULT["strengths"])
    if not isinstance(strengths, list) or not 1 <= len(strengths) <= MAX_STRENGTHS:
        raise _error("strengths", f"expected a list of 1 to {MAX_STRENGTHS} strengths.")
    clean_strengths, values = [], set()
    for i, strength in enumerate(strengths):
        where = f"strengths[{i}]"
        if not isinstance(strength, dict):
            raise _error(where, "expected an object with value and label.")
        _unknown_keys(strength, {"value", "label"}, where)
        value = _whole(strength.get("value"), f"{where}.value", 1, 9)
        if value in values:
            raise _error(f"{where}.value", f"{value} is listed twice.")
        values.add(value)
        clean_strengths.append(
            {"value": value, "label": _text(strength.get("label"), f"{where}.label")}
        )

    return {
        "flags": clean_flags,
        "rating": {"min": low, "max": high, "threshold": threshold},
        "strengths": clean_strengths,
    }
