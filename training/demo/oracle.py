"""The hidden oracle: the preference the simulated labelers approximate and evaluation trusts.

score = correctness (0-2, with partial credit) - 1.5 if rude - 0.1 per word over 7
        - 1 if the response never ended (no end token within the length limit).
It is plausible as a human preference (correct, on-topic, polite, concise) and learnable by a
tiny model. Nothing in training ever sees it directly: only the labelers' noisy rankings do.
"""

from __future__ import annotations

import re

from .world import CATEGORIES, GREETING_WORDS, RUDE_WORDS, parse

MAX_WORDS = 7
_NUMBER_RE = re.compile(r"-?\d+")
_WORD_RE = re.compile(r"[a-z]+")


def correctness(prompt: str, response: str) -> float:
    spec = parse(prompt)
    text = response.lower()
    if spec.family == "arith":
        numbers = [int(n) for n in _NUMBER_RE.findall(text)]
        if not numbers:
            return 0.0
        last = numbers[-1]  # "7 plus 5 is 12." answers with its last number
        if last == spec.answer:
            return 2.0
        return 1.0 if abs(last - spec.answer) == 1 else 0.0
    if spec.family == "category":
        items = CATEGORIES[spec.category]
        best = 0.0
        for colour, names in items.items():
            for name in names:
                if re.search(rf"\b{re.escape(name)}s?\b", text):
                    best = max(best, 2.0 if colour == spec.colour else 1.0)
        return best
    greets = any(re.search(rf"\b{w}\b", text) for w in GREETING_WORDS)
    offers = "help" in text or "what can i do" in text or "like to know" in text
    return 1.0 * greets + 1.0 * offers


def score(prompt: str, response: str, *, ended: bool = True) -> float:
    words = response.split()
    value = correctness(prompt, response)
    if any(w in RUDE_WORDS for w in _WORD_RE.findall(response.lower())):
        value -= 1.5
    value -= 0.1 * max(0, len(words) - MAX_WORDS)
    if not ended:
        value -= 1.0
    return round(value, 6)


def prefer(prompt: str, a: str, b: str, *, a_ended: bool = True, b_ended: bool = True) -> float:
    """1.0 if the oracle prefers `a`, 0.0 if `b`, 0.5 for a tie."""
    sa, sb = score(prompt, a, ended=a_ended), score(prompt, b, ended=b_ended)
    return 1.0 if sa > sb else 0.0 if sa < sb else 0.5
