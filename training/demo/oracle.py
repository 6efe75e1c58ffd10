"""The hidden oracle: the preference the simulated labelers approximate and evaluation trusts.

score = correctness (0-2) - 1.5 if rude - 0.1 per word over 7
        - 0.1 per garbled character (a symbol no answer of the world has; at most -2)
        - 1 if the response never ended (no end token within the length limit).

For a prompt with a constraint, correctness is compliance first: 2 for an answer that follows
the constraint and is about the item asked about, 1.5 for one that follows it off topic, 0.5
for an on-topic answer that ignores it, 0 otherwise. For the old families it is the right
number or an item of the right category and colour (partial credit for near misses). So the
oracle ranks compliance first, then brevity and politeness. Nothing in training ever sees it
directly: only the labelers' noisy rankings do.
"""

from __future__ import annotations

import re

from .world import CATEGORIES, CONSTRAINT_TYPES, ITEMS, RUDE_WORDS, Spec, parse

MAX_WORDS = 7
_NUMBER_RE = re.compile(r"-?\d+")
_WORD_RE = re.compile(r"[a-z]+")
_TEXT_WORD_RE = re.compile(r"[A-Za-z']+")


def words(text: str) -> list[str]:
    """The words of an answer, punctuation dropped ("Red, fruit." has two)."""
    return _TEXT_WORD_RE.findall(text)


def complies(prompt: str, response: str, spec: Spec | None = None) -> bool | None:
    """Whether `response` follows the constraint of `prompt` (None: the prompt has none)."""
    spec = spec or parse(prompt)
    text = response.strip()
    ws = words(text)
    kind = spec.family
    if kind == "one_word":
        return len(ws) == 1
    if kind == "capitals":
        letters = [c for c in text if c.isalpha()]
        return len(letters) >= 2 and not any(c.islower() for c in letters)
    if kind == "three_items":
        parts = [p.strip() for p in text.rstrip(".!").split(",")]
        return len(parts) == 3 and all(1 <= len(words(p)) <= 3 for p in parts)
    if kind == "yes_no":
        return bool(ws) and ws[0].lower() in ("yes", "no")
    if kind == "question_end":
        return text.endswith("?")
    if kind == "max_words":
        return 1 <= len(ws) <= spec.n
    if kind == "include_word":
        return spec.word in (w.lower() for w in ws)
    return None


def on_topic(spec: Spec, response: str) -> bool:
    """Mentions the item asked about, its colour or its category."""
    text = response.lower()
    names = [spec.item, spec.colour, spec.category] if spec.item in ITEMS else []
    return any(re.search(rf"\b{re.escape(n)}s?\b", text) for n in names)


def correctness(prompt: str, response: str) -> float:
    spec = parse(prompt)
    text = response.lower()
    if spec.constrained:
        ok = complies(prompt, response, spec)
        topical = on_topic(spec, response)
        return (1.5 if ok else 0.0) + (0.5 if topical else 0.0)
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
    return 0.0


_GARBLED_RE = re.compile(r"[^A-Za-z0-9\s.,!?'\":;-]")


def garbled(response: str) -> int:
    """Characters no answer of the world has (stray symbols, broken bytes): unreadable text."""
    return len(_GARBLED_RE.findall(response))


def score(prompt: str, response: str, *, ended: bool = True) -> float:
    value = correctness(prompt, response)
    # Unreadable answers are worse, the more so the more garbled (at most -2): what tells one
    # barely trained model's answers apart, where little else does.
    value -= 0.1 * min(20, garbled(response))
    if any(w in RUDE_WORDS for w in _WORD_RE.findall(response.lower())):
        value -= 1.5
    value -= 0.1 * max(0, len(response.split()) - MAX_WORDS)
    if not ended:
        value -= 1.0
    return round(value, 6)


def prefer(prompt: str, a: str, b: str, *, a_ended: bool = True, b_ended: bool = True) -> float:
    """1.0 if the oracle prefers `a`, 0.0 if `b`, 0.5 for a tie."""
    sa, sb = score(prompt, a, ended=a_ended), score(prompt, b, ended=b_ended)
    return 1.0 if sa > sb else 0.0 if sa < sb else 0.5


def compliance_table(samples_by_policy: dict[str, list]) -> dict:
    """Per constraint type, each policy's share of answers that follow the constraint.

    `samples_by_policy`: policy name -> samples with `.prompt` and `.text` (or
    `[prompt, text, ended]` rows, as report.json stores them). Prompts without a constraint
    are left out. {type: {"prompts": n, policy: share, ...}}."""
    out: dict[str, dict] = {}
    for name, samples in samples_by_policy.items():
        counts: dict[str, list[int]] = {}
        for smp in samples:
            if isinstance(smp, list | tuple):
                prompt, text = smp[0], smp[1]
            else:
                prompt, text = smp.prompt, smp.text
            spec = parse(prompt)
            if not spec.constrained:
                continue
            c = counts.setdefault(spec.family, [0, 0])
            c[0] += bool(complies(prompt, text, spec))
            c[1] += 1
        for kind, (ok, n) in counts.items():
            row = out.setdefault(kind, {"prompts": n})
            row[name] = round(ok / n, 4)
    return {kind: out[kind] for kind in CONSTRAINT_TYPES if kind in out}
