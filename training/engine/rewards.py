"""Rule-based rewards for the online RL stages (GRPO, RLOO), named in a config's `reward_rules`.

Each rule is a mapping `{name: ..., <its options>, weight: 1.0}`; `REWARD_RULES` is the one
registry of names: a rule's builder takes its options and returns a TRL reward function, which
gets the batch's prompts and completions and returns one float per completion. The trainer sums
the rules and the reward model (each times its weight) and logs each as `rewards/<name>/mean`.

- `length_limit` (`max_chars`, > 0): 0 for a completion of at most max_chars characters, minus
  (characters beyond) / max_chars otherwise: -1 at twice the limit. Keeps completions short
  without a hard cut.
- `format_regex` (`pattern`, a Python regular expression): 1 when `re.search` finds it in the
  completion, else 0. Rewards a required shape ("^Answer:", a closing tag, JSON braces).
"""

from __future__ import annotations

import re
from collections.abc import Callable


def _text(completion) -> str:
    """A completion's text: a string, or (conversational prompts) the assistant's messages."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def length_limit(*, max_chars: int) -> Callable:
    def reward(completions, **_) -> list[float]:
        return [-max(len(_text(c)) - max_chars, 0) / max_chars for c in completions]

    return reward


def format_regex(*, pattern: str) -> Callable:
    compiled = re.compile(pattern)

    def reward(completions, **_) -> list[float]:
        return [1.0 if compiled.search(_text(c)) else 0.0 for c in completions]

    return reward


# name -> (builder, {option: type}); every option is required.
REWARD_RULES: dict[str, tuple[Callable[..., Callable], dict[str, type]]] = {
    "length_limit": (length_limit, {"max_chars": int}),
    "format_regex": (format_regex, {"pattern": str}),
}


def rules_check(stage: str, rules: list[dict]) -> None:
    """Each rule names a registered reward with its options of the right type, or a
    ValueError naming `<stage>.reward_rules[i].<key>` (config.py raises it as a ConfigError;
    this module stays below config so that the two do not import each other)."""
    for i, rule in enumerate(rules):
        where = f"{stage}.reward_rules[{i}]"
        name = rule.get("name")
        if name not in REWARD_RULES:
            raise ValueError(
                f"{where}.name: {name!r} is not a reward rule (one of: {', '.join(REWARD_RULES)})"
            )
        _, options = REWARD_RULES[name]
        for key in rule:
            if key not in (*options, "name", "weight"):
                raise ValueError(
                    f"{where}: {name} has no option {key!r} (options: "
                    f"{', '.join((*options, 'weight'))})"
                )
        for key, tp in options.items():
            value = rule.get(key)
            if value is None or not isinstance(value, tp) or isinstance(value, bool):
                raise ValueError(f"{where}.{key}: required, {tp.__name__}, got {value!r}")
        weight = rule.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"{where}.weight: expected a number, got {weight!r}")
        if name == "length_limit" and rule["max_chars"] <= 0:
            raise ValueError(f"{where}.max_chars: must be positive, got {rule['max_chars']}")
        if name == "format_regex":
            try:
                re.compile(rule["pattern"])
            except re.error as exc:
                raise ValueError(f"{where}.pattern: not a regular expression: {exc}") from None


def rule_rewards(rules: list[dict]) -> tuple[list[Callable], list[float]]:
    """The reward functions of `rules` (already checked) and their weights, in order. Each
    function is named after its rule, which is how TRL labels its metrics."""
    funcs, weights = [], []
    for i, rule in enumerate(rules):
        builder, options = REWARD_RULES[rule["name"]]
        func = builder(**{k: rule[k] for k in options})
        func.__name__ = (
            rule["name"]
            if i == 0 or rule["name"] not in [r["name"] for r in rules[:i]]
            else f"{rule['name']}_{i}"
        )
        funcs.append(func)
        weights.append(float(rule.get("weight", 1.0)))
    return funcs, weights
