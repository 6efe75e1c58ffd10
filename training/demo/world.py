"""A deterministic synthetic task world: prompts, a pretraining corpus and demonstration styles.

Three prompt families a ~1M-parameter model can learn: arithmetic ("What is 7 plus 5?"),
colour/category ("Name a fruit that is red.") and greetings ("Hello!"). Every prompt parses back
into a `Spec` (what a correct answer is), which is all the hidden oracle needs.

The demonstration styles are built so that feedback has something to teach that sharpening the
SFT distribution cannot: the single most frequent style of the demonstrations (a padded,
"Sure, I would be very happy to help..." answer) is *not* the preferred one, while the
preferred concise answers are spread over several phrasings. Lowering the sampling temperature
pushes the SFT policy towards that padded mode; a reward signal pushes it away.
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
CATEGORY_TEMPLATES = [
    "Name a {cat} that is {colour}.",
    "Can you name a {colour} {cat}?",
    "Tell me a {colour} {cat}.",
    "Give me one {cat} that is {colour}.",
]
GREETINGS = [
    "Hello!",
    "Hi there.",
    "Good morning!",
    "Good evening!",
    "Hey, how are you?",
    "Hello, is anyone there?",
    "Hi!",
    "Greetings.",
    "Good afternoon.",
    "Hey there!",
]
GREETING_WORDS = ("hello", "hi", "good morning", "good evening", "good afternoon", "hey")
RUDE_WORDS = ("stupid", "dumb", "ugh", "idiot", "whatever", "obviously")


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for, parsed from its text."""

    family: str  # arith | category | greeting
    answer: int | None = None
    category: str | None = None
    colour: str | None = None
    greeting: str | None = None


_ARITH_RE = re.compile(r"(\d+) (plus|minus) (\d+)")
_CAT_RE = re.compile(r"\b(" + "|".join(CATEGORIES) + r")\b")
_COLOUR_RE = re.compile(
    r"\b(" + "|".join(sorted({c for d in CATEGORIES.values() for c in d})) + r")\b"
)


def parse(prompt: str) -> Spec:
    """The `Spec` of one of our prompts (the oracle's knowledge of the world)."""
    m = _ARITH_RE.search(prompt)
    if m:
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return Spec("arith", answer=OPS[op](a, b))
    cat, colour = _CAT_RE.search(prompt), _COLOUR_RE.search(prompt)
    if cat and colour:
        return Spec("category", category=cat.group(1), colour=colour.group(1))
    return Spec("greeting", greeting=prompt)


def all_prompts() -> list[str]:
    prompts = []
    for op in OPS:
        for a in NUMBERS:
            for b in NUMBERS:
                if op == "minus" and b > a:
                    continue  # no negative answers: keeps the number vocabulary small
                for t in ARITH_TEMPLATES:
                    prompts.append(t.format(a=a, op=op, b=b))
    for cat, colours in CATEGORIES.items():
        for colour in colours:
            for t in CATEGORY_TEMPLATES:
                prompts.append(t.format(cat=cat, colour=colour))
    prompts.extend(GREETINGS)
    return prompts


def format_prompt(prompt: str) -> str:
    """The model input for a prompt: its text as is, as in the platform's plain (non-chat)
    snapshots, where TRL concatenates prompt + completion + EOS. Every prompt ends with
    punctuation, which the tokenizer always splits from the answer's first word."""
    return prompt


# --- Responses -------------------------------------------------------------------------------

# Preferred: correct, concise, polite. Several phrasings, none dominant.
GOOD_ARITH = ["{x}.", "The answer is {x}.", "It is {x}.", "{expr} is {x}."]
GOOD_CATEGORY = ["{Item}.", "A {item}.", "{Item} is one.", "How about a {item}?"]
GOOD_GREETING = [
    "Hello! How can I help you today?",
    "Hi! What can I do for you?",
    "Hello! What would you like to know?",
    "Hi there! How can I help?",
]
# Padded: polite and correct but long (15+ words) — the most frequent single style.
VERBOSE = "Sure, I would be very happy to help you with that. {core}"
# Rude: correct but insulting.
RUDE = ["Ugh, obviously {core_l} Stupid question.", "Whatever. {core} Do not ask me again."]


def _item_for(spec: Spec, rng: random.Random, *, correct: bool) -> str:
    items = CATEGORIES[spec.category]
    if correct:
        return rng.choice(items[spec.colour])
    wrong_colour = [i for c, lst in items.items() if c != spec.colour for i in lst]
    return rng.choice(wrong_colour)


def _core(spec: Spec, prompt: str, rng: random.Random, *, correct: bool) -> str:
    """A short answer sentence (correct or wrong) used inside the other styles."""
    if spec.family == "arith":
        x = spec.answer if correct else spec.answer + rng.choice([-2, -1, 1, 2])
        return f"The answer is {x}."
    if spec.family == "category":
        return f"A {_item_for(spec, rng, correct=correct)} is one."
    return "Hello! How can I help you today?" if correct else "What?"


def response(prompt: str, style: str, rng: random.Random) -> str:
    """One response to `prompt` in `style`: good | verbose | wrong | rude | offtopic."""
    spec = parse(prompt)
    if style == "good":
        if spec.family == "arith":
            m = _ARITH_RE.search(prompt)
            expr = f"{m.group(1)} {m.group(2)} {m.group(3)}"
            return rng.choice(GOOD_ARITH).format(x=spec.answer, expr=expr)
        if spec.family == "category":
            item = _item_for(spec, rng, correct=True)
            return rng.choice(GOOD_CATEGORY).format(item=item, Item=item.capitalize())
        return rng.choice(GOOD_GREETING)
    if style == "wrong":
        if spec.family == "arith":
            x = spec.answer + rng.choice([-2, -1, 1, 2])
            return rng.choice(["{x}.", "The answer is {x}.", "It is {x}."]).format(x=x)
        if spec.family == "category":
            item = _item_for(spec, rng, correct=False)
            return rng.choice(GOOD_CATEGORY).format(item=item, Item=item.capitalize())
        return rng.choice(["What?", "No.", "I do not know."])
    core = _core(spec, prompt, rng, correct=True)
    if style == "verbose":
        return VERBOSE.format(core=core)
    if style == "rude":
        return rng.choice(RUDE).format(core=core, core_l=core[0].lower() + core[1:])
    if style == "offtopic":
        return rng.choice(["I like trains.", "The weather is nice today.", "Blue is a colour."])
    raise ValueError(f"unknown style {style!r}")


# Demonstration mix of a careful labeler: 60% good (over four phrasings), 25% padded, 10%
# wrong, 5% rude. The padded style is the single most likely way to start an answer.
DEMO_STYLE_WEIGHTS = {"good": 0.60, "verbose": 0.25, "wrong": 0.10, "rude": 0.05}
CARELESS_STYLE_WEIGHTS = {
    "good": 0.25,
    "verbose": 0.25,
    "wrong": 0.25,
    "rude": 0.1,
    "offtopic": 0.15,
}


def pick_style(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


# --- The world -------------------------------------------------------------------------------


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


def build_world(
    seed: int = 0, *, n_test: int = 250, n_dev: int = 150, corpus_docs: int = 6000
) -> World:
    """Split the prompts by prompt (test and dev are never trained on) and write a corpus.

    The corpus mixes facts with chat-formatted exchanges in every style, on *train* prompts only,
    so pretraining teaches the format and the vocabulary but not the held-out answers.
    """
    rng = random.Random(seed)
    prompts = all_prompts()
    rng.shuffle(prompts)
    test, dev, train = prompts[:n_test], prompts[n_test : n_test + n_dev], prompts[n_test + n_dev :]
    world = World(seed=seed, train=train, dev=dev, test=test)
    facts = _facts(rng)
    corpus_weights = {"good": 0.4, "verbose": 0.25, "wrong": 0.2, "rude": 0.1, "offtopic": 0.05}
    for _ in range(corpus_docs):
        if rng.random() < 0.4:
            world.corpus.append(" ".join(rng.sample(facts, 4)))
        else:
            prompt = rng.choice(train)
            style = pick_style(rng, corpus_weights)
            world.corpus.append(format_prompt(prompt) + response(prompt, style, rng))
    return world
