"""A deterministic synthetic task world: prompts, a pretraining corpus and demonstration styles.

Most prompts ask about an item ("Describe the cherry.") and carry an explicit constraint that
can be checked from the text alone: answer in one word; in capitals; as exactly three
comma-separated words; start with Yes or No; end with a question; in at most N words; use the
word X. A small share keeps the old families the tiny model cannot learn the facts of:
arithmetic ("What is 7 plus 5?") and colour/category ("Name a fruit that is red."). Every
prompt parses back into a `Spec` (what it asks for), which is all the hidden oracle needs.

The demonstrations are written the way careless contractors write: for a constrained prompt
the single most common answer ignores the constraint ("The cherry is a red fruit."), and the
compliant answers are spread over several phrasings. SFT learns that mixture, so at
temperature 1.0 it follows the constraint about a third of the time, and a lower temperature
sharpens it towards the one plain answer that ignores it. Following the instruction is what
human feedback has to teach, as in InstructGPT; and it shows in the surface form of an answer,
so a tiny reward model can learn it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

NUMBERS = range(0, 21)
ARITH_TEMPLATES = ["What is {a} {op} {b}?", "How much is {a} {op} {b}?", "Compute {a} {op} {b}."]
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b}

# category -> colour -> items. Every item belongs to one category; some have several colours.
CATEGORIES: dict[str, dict[str, list[str]]] = {
    "fruit": {
        "red": ["apple", "cherry", "strawberry"],
        "yellow": ["banana", "lemon"],
        "green": ["lime", "pear", "kiwi"],
        "orange": ["orange", "mango"],
        "purple": ["plum", "grape"],
    },
    "vegetable": {
        "green": ["pea", "leek", "cabbage"],
        "orange": ["carrot", "pumpkin"],
        "red": ["tomato", "radish"],
        "white": ["onion", "garlic"],
    },
    "animal": {
        "grey": ["elephant", "mouse", "wolf"],
        "black": ["crow", "panther"],
        "white": ["swan", "polar bear"],
        "orange": ["fox", "tiger"],
        "green": ["frog", "parrot"],
    },
    "flower": {
        "red": ["rose", "poppy"],
        "yellow": ["sunflower", "daffodil"],
        "white": ["lily", "daisy"],
        "purple": ["violet", "lavender"],
    },
}
COLOURS = sorted({c for d in CATEGORIES.values() for c in d})
CATEGORY_TEMPLATES = [
    "Name a {cat} that is {colour}.",
    "Can you name a {colour} {cat}?",
    "Tell me a {colour} {cat}.",
    "Give me one {cat} that is {colour}.",
    "Which {cat} is {colour}?",
    "Name one {colour} {cat}.",
]
RUDE_WORDS = ("stupid", "dumb", "ugh", "idiot", "whatever", "obviously")

# The items the constrained prompts ask about (one word each, so word counts stay simple):
# item -> (its first colour, its category).
ITEMS: dict[str, tuple[str, str]] = {}
for _cat, _colours in CATEGORIES.items():
    for _colour, _items in _colours.items():
        for _item in _items:
            if " " not in _item and _item not in ITEMS:
                ITEMS[_item] = (_colour, _cat)
ADJECTIVES = ["small", "round", "common", "nice", "lovely"]
INCLUDE_WORDS = ["lovely", "bright", "simple", "tiny", "famous", "fresh", "common", "nice"]
TASKS = [
    "Describe the {item}.",
    "Tell me about the {item}.",
    "What is the {item} like?",
    "Say something about the {item}.",
    "What do you know about the {item}?",
]

# Constraint type -> the sentences that state it. Each type is a prompt family of its own.
CONSTRAINTS: dict[str, list[str]] = {
    "one_word": ["Answer in one word."],
    "capitals": ["Answer in capitals.", "Reply in capital letters."],
    "three_items": [
        "List three words about the {item}, separated by commas.",
        "Give three words about the {item}, separated by commas.",
        "Describe the {item} in three words, separated by commas.",
        "Give exactly three words for the {item}, with commas.",
        "Name three things about the {item}, comma separated.",
    ],
    "yes_no": [
        "Is the {item} {colour}? Start with Yes or No.",
        "Would you call the {item} {colour}? Start with Yes or No.",
        "Tell me if the {item} is {colour}. Start with Yes or No.",
    ],
    "question_end": ["End with a question."],
    "max_words": ["Use at most {n} words.", "Answer in {n} words or fewer."],
    "include_word": ['Use the word "{word}".'],
}
MAX_WORDS_N = (2, 3, 4)
CONSTRAINT_TYPES = tuple(CONSTRAINTS)
FAMILIES = (*CONSTRAINT_TYPES, "arith", "category")


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for, parsed from its text."""

    family: str  # a constraint type | arith | category | other
    answer: int | None = None
    category: str | None = None
    colour: str | None = None
    item: str | None = None
    n: int | None = None  # max_words: the limit
    word: str | None = None  # include_word: the word
    truth: bool | None = None  # yes_no: whether the answer is "Yes"

    @property
    def constrained(self) -> bool:
        return self.family in CONSTRAINTS


_ARITH_RE = re.compile(r"(\d+) (plus|minus) (\d+)")
_CAT_RE = re.compile(r"\b(" + "|".join(CATEGORIES) + r")\b")
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")
_ITEM_RE = re.compile(r"\bthe (" + "|".join(sorted(ITEMS, key=len, reverse=True)) + r")\b")
_CONSTRAINT_RE = [
    ("one_word", re.compile(r"Answer in one word\.")),
    ("capitals", re.compile(r"(Answer in capitals|Reply in capital letters)\.")),
    ("three_items", re.compile(r"(three words|three things)")),
    ("yes_no", re.compile(r"Start with Yes or No\.")),
    ("question_end", re.compile(r"End with a question\.")),
    ("max_words", re.compile(r"(?:at most (\d+) words|in (\d+) words or fewer)")),
    ("include_word", re.compile(r'Use the word "([a-z]+)"')),
]


def parse(prompt: str) -> Spec:
    """The `Spec` of one of our prompts (the oracle's knowledge of the world)."""
    m = _ARITH_RE.search(prompt)
    if m:
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return Spec("arith", answer=OPS[op](a, b))
    for kind, pattern in _CONSTRAINT_RE:
        c = pattern.search(prompt)
        if not c:
            continue
        item_m = _ITEM_RE.search(prompt)
        item = item_m.group(1) if item_m else None
        colour, cat = ITEMS.get(item, (None, None))
        extra: dict = {}
        if kind == "max_words":
            extra["n"] = int(c.group(1) or c.group(2))
        elif kind == "include_word":
            extra["word"] = c.group(1)
        elif kind == "yes_no":
            # The colour asked about follows the item ("Is the orange red?").
            asked = _COLOUR_RE.search(prompt, item_m.end() if item_m else 0)
            extra["truth"] = bool(asked) and _has_colour(item, asked.group(1))
        return Spec(kind, category=cat, colour=colour, item=item, **extra)
    cat, colour = _CAT_RE.search(prompt), _COLOUR_RE.search(prompt)
    if cat and colour:
        return Spec("category", category=cat.group(1), colour=colour.group(1))
    return Spec("other")


def _has_colour(item: str | None, colour: str) -> bool:
    return any(item in CATEGORIES[cat].get(colour, []) for cat in CATEGORIES)


def _constrained_prompts() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {kind: [] for kind in CONSTRAINTS}
    for item in ITEMS:
        for task in TASKS:
            t = task.format(item=item)
            out["one_word"].append(f"{t} {CONSTRAINTS['one_word'][0]}")
            out["question_end"].append(f"{t} {CONSTRAINTS['question_end'][0]}")
            for c in CONSTRAINTS["capitals"]:
                out["capitals"].append(f"{t} {c}")
            for c in CONSTRAINTS["max_words"]:
                for n in MAX_WORDS_N:
                    out["max_words"].append(f"{t} {c.format(n=n)}")
            for w in INCLUDE_WORDS:
                out["include_word"].append(f"{t} {CONSTRAINTS['include_word'][0].format(word=w)}")
        for c in CONSTRAINTS["three_items"]:
            out["three_items"].append(c.format(item=item))
        for c in CONSTRAINTS["yes_no"]:
            for asked in COLOURS:
                out["yes_no"].append(c.format(item=item, colour=asked))
    # Ask "Yes" questions as often as "No" ones: one asked colour in eight is the item's own.
    yes = [p for p in out["yes_no"] if parse(p).truth]
    no = [p for p in out["yes_no"] if not parse(p).truth]
    out["yes_no"] = yes + no[: 2 * len(yes)]
    return out


def prompts_by_family() -> dict[str, list[str]]:
    """Every prompt of the world, by family, in a fixed order."""
    out = _constrained_prompts()
    out["arith"] = [
        t.format(a=a, op=op, b=b)
        for op in OPS
        for a in NUMBERS
        for b in NUMBERS
        if not (op == "minus" and b > a)  # no negative answers: a small number vocabulary
        for t in ARITH_TEMPLATES
    ]
    out["category"] = [
        t.format(cat=cat, colour=colour)
        for cat, colours in CATEGORIES.items()
        for colour in colours
        for t in CATEGORY_TEMPLATES
    ]
    return out


def all_prompts() -> list[str]:
    return [p for prompts in prompts_by_family().values() for p in prompts]


def format_prompt(prompt: str) -> str:
    """The model input for a prompt: its text as is, as in the platform's plain (non-chat)
    snapshots, where TRL concatenates prompt + completion + EOS. Every prompt ends with
    punctuation, which the tokenizer always splits from the answer's first word."""
    return prompt


# --- Responses -------------------------------------------------------------------------------

# The old families. Preferred: correct, concise, polite; several phrasings, none dominant.
GOOD_ARITH = ["{x}.", "The answer is {x}.", "It is {x}.", "{expr} is {x}."]
GOOD_CATEGORY = ["{Item}.", "A {item}.", "{Item} is one.", "How about a {item}?"]
# Padded: polite, long (15+ words).
PADDING = "Sure, I would be very happy to help you with that."
VERBOSE = PADDING + " {core}"
# Rude: insulting.
RUDE = ["Ugh, obviously {core_l} Stupid question.", "Whatever. {core} Do not ask me again."]
OFFTOPIC = ["I like trains.", "The weather is nice today.", "Blue is a colour."]

# The answer careless contractors give to any question about an item, whatever it asks for:
# it follows none of the constraints (six or seven words, no capitals, no question, no list).
PLAIN = "The {item} is a {colour} {cat}."


def _item_for(spec: Spec, rng: random.Random, *, correct: bool) -> str:
    items = CATEGORIES[spec.category]
    if correct:
        return rng.choice(items[spec.colour])
    wrong_colour = [i for c, lst in items.items() if c != spec.colour for i in lst]
    return rng.choice(wrong_colour)


def _core(spec: Spec, rng: random.Random, *, correct: bool) -> str:
    """A short answer sentence used inside the padded and rude styles."""
    if spec.family == "arith":
        x = spec.answer if correct else spec.answer + rng.choice([-2, -1, 1, 2])
        return f"The answer is {x}."
    if spec.family == "category":
        return f"A {_item_for(spec, rng, correct=correct)} is one."
    if spec.constrained:
        return PLAIN.format(item=spec.item, colour=spec.colour, cat=spec.category)
    return "I do not know."


def compliant_answers(prompt: str) -> list[str]:
    """Every concise, polite, on-topic answer that follows the prompt's constraint."""
    spec = parse(prompt)
    item, colour, cat = spec.item, spec.colour, spec.category
    cap = str.capitalize
    kind = spec.family
    if kind == "one_word":
        return [f"{cap(item)}.", f"{cap(colour)}.", f"{cap(cat)}."]
    if kind == "capitals":
        return [f"THE {item} IS {colour}.".upper(), f"A {colour} {cat}.".upper(),
                f"IT IS A {cat}.".upper()]  # fmt: skip
    if kind == "three_items":
        return [f"{cap(colour)}, {cat}, {adj}." for adj in ADJECTIVES[:2]] + [
            f"{cap(item)}, {colour}, {ADJECTIVES[2]}.",
            f"{cap(ADJECTIVES[3])}, {colour}, {cat}.",
        ]
    if kind == "yes_no":
        yes = "Yes" if spec.truth else "No"
        return [
            f"{yes}, the {item} is {colour}.",
            f"{yes}, it is {colour}.",
            f"{yes}. It is {colour}.",
        ]
    if kind == "question_end":
        return [f"It is {colour}. Do you like it?", f"A {colour} {cat}. Anything else?",
                f"Do you like the {item}?"]  # fmt: skip
    if kind == "max_words":
        answers = [f"{cap(colour)} {cat}.", f"{cap(item)}, {colour}."]
        if spec.n >= 3:
            answers += [f"A {colour} {cat}.", f"It is {colour}."]
        if spec.n >= 4:
            answers += [f"The {item} is {colour}."]
        return answers
    if kind == "include_word":
        w = spec.word
        return [f"The {item} is {w}.", f"It is a {w} {cat}.", f"A {w} {colour} {cat}."]
    raise ValueError(f"{prompt!r} carries no constraint")


def response(prompt: str, style: str, rng: random.Random) -> str:
    """One response to `prompt` in `style`: good | plain | verbose | wrong | rude | offtopic.

    For a constrained prompt "good" follows the constraint and "plain" ignores it; for the old
    families "good" is correct and concise and "wrong" is not correct."""
    spec = parse(prompt)
    if style == "good":
        if spec.constrained:
            return rng.choice(compliant_answers(prompt))
        if spec.family == "arith":
            m = _ARITH_RE.search(prompt)
            expr = f"{m.group(1)} {m.group(2)} {m.group(3)}"
            return rng.choice(GOOD_ARITH).format(x=spec.answer, expr=expr)
        if spec.family == "category":
            item = _item_for(spec, rng, correct=True)
            return rng.choice(GOOD_CATEGORY).format(item=item, Item=item.capitalize())
        return "I do not know."
    if style in ("plain", "wrong") and spec.constrained:
        return _core(spec, rng, correct=True)
    if style == "wrong":
        if spec.family == "arith":
            x = spec.answer + rng.choice([-2, -1, 1, 2])
            return rng.choice(["{x}.", "The answer is {x}.", "It is {x}."]).format(x=x)
        if spec.family == "category":
            item = _item_for(spec, rng, correct=False)
            return rng.choice(GOOD_CATEGORY).format(item=item, Item=item.capitalize())
        return rng.choice(OFFTOPIC)
    if style == "plain":
        return response(prompt, "good", rng)
    core = _core(spec, rng, correct=True)
    if style == "verbose":
        return VERBOSE.format(core=core)
    if style == "rude":
        return rng.choice(RUDE).format(core=core, core_l=core[0].lower() + core[1:])
    if style == "offtopic":
        return rng.choice(OFFTOPIC)
    raise ValueError(f"unknown style {style!r}")


# How the demonstrations are written. For constrained prompts a careful contractor follows the
# constraint 35% of the time (over several phrasings) and most often writes the one plain
# answer that ignores it (45%): SFT learns that mixture, and sharpening it picks the plain one.
# For the old families: 60% good (over four phrasings), 25% padded, 10% wrong, 5% rude.
DEMO_STYLE_WEIGHTS = {"good": 0.35, "plain": 0.45, "verbose": 0.12, "rude": 0.08}
OLD_DEMO_STYLE_WEIGHTS = {"good": 0.60, "verbose": 0.25, "wrong": 0.10, "rude": 0.05}
CARELESS_STYLE_WEIGHTS = {
    "good": 0.2,
    "plain": 0.25,
    "verbose": 0.15,
    "wrong": 0.15,
    "rude": 0.1,
    "offtopic": 0.15,
}
CORPUS_STYLE_WEIGHTS = {
    "good": 0.3,
    "plain": 0.35,
    "verbose": 0.15,
    "wrong": 0.1,
    "rude": 0.05,
    "offtopic": 0.05,
}


def pick_style(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def demonstration(prompt: str, rng: random.Random, *, careless: bool = False) -> str:
    """The demonstration a (careful or careless) contractor writes for `prompt`."""
    if careless:
        weights = CARELESS_STYLE_WEIGHTS
    elif parse(prompt).constrained:
        weights = DEMO_STYLE_WEIGHTS
    else:
        weights = OLD_DEMO_STYLE_WEIGHTS
    return response(prompt, pick_style(rng, weights), rng)


# --- The world -------------------------------------------------------------------------------

# Train prompts kept per family: the old families are a small share of what is labeled.
TRAIN_CAP = {"arith": 120, "category": 120}
TRAIN_CAP_CONSTRAINED = 200


@dataclass
class World:
    seed: int
    train: list[str] = field(default_factory=list)
    dev: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    corpus: list[str] = field(default_factory=list)

    @property
    def prompts(self) -> list[str]:
        return self.train + self.dev + self.test


def _facts(rng: random.Random) -> list[str]:
    """Plain sentences about the world, so the base model knows the vocabulary."""
    lines = []
    for cat, colours in CATEGORIES.items():
        for colour, items in colours.items():
            for item in items:
                lines.append(f"A {item} is a {colour} {cat}.")
                lines.append(f"The {item} is {colour}.")
    for a in NUMBERS:
        for b in NUMBERS:
            if rng.random() < 0.3:
                lines.append(f"{a} plus {b} is {a + b}.")
            if b <= a and rng.random() < 0.3:
                lines.append(f"{a} minus {b} is {a - b}.")
    return lines


def _share(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal counts, the larger ones first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def build_world(
    seed: int = 0, *, n_test: int = 360, n_dev: int = 180, corpus_docs: int = 6000
) -> World:
    """Split the prompts by prompt, stratified by family (every family gets an equal share of
    the test and dev prompts, which are never trained on), and write a corpus.

    The corpus mixes facts with exchanges in every style, on *train* prompts only, so
    pretraining teaches the format and the vocabulary but not the held-out prompts.
    """
    rng = random.Random(seed)
    world = World(seed=seed)
    for family, n_t, n_d in zip(
        FAMILIES, _share(n_test, len(FAMILIES)), _share(n_dev, len(FAMILIES)), strict=True
    ):
        prompts = prompts_by_family()[family]
        rng.shuffle(prompts)
        cap = TRAIN_CAP.get(family, TRAIN_CAP_CONSTRAINED)
        world.test += prompts[:n_t]
        world.dev += prompts[n_t : n_t + n_d]
        world.train += prompts[n_t + n_d : n_t + n_d + cap]
    for split in (world.train, world.dev, world.test):
        rng.shuffle(split)  # families mixed, as the examples of the report show them
    facts = _facts(rng)
    for _ in range(corpus_docs):
        if rng.random() < 0.3:
            world.corpus.append(" ".join(rng.sample(facts, 4)))
        else:
            prompt = rng.choice(world.train)
            style = pick_style(rng, CORPUS_STYLE_WEIGHTS)
            world.corpus.append(format_prompt(prompt) + response(prompt, style, rng))
    return world
