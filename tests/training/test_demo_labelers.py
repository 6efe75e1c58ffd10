"""The demo's simulated labelers judge what they see, not where the platform shows it."""

from __future__ import annotations

import random

from annotation.models import Prompt, Response, Task, TaskKind
from training.demo import labelers, world


def _rank_task(prompt: str, texts: list[str]) -> Task:
    """An unsaved rank task with its candidates loaded, as a lease hands it over."""
    task = Task(kind=TaskKind.RANK, prompt=Prompt(text=prompt))
    task.loaded_candidates = [Response(pk=i + 1, text=t) for i, t in enumerate(texts)]
    return task


def test_a_labelers_ranking_does_not_depend_on_the_order_the_candidates_are_shown_in():
    # The shown order is shuffled per (task, labeler) by database ids (`leasing._shown_order`),
    # so it differs between databases: were a simulated labeler's noise drawn in that order,
    # the same seed would give other preferences, and other figures, in a database that holds
    # anything else. A careful labeler's noise is large enough for the draw order to matter.
    prompt = world.all_prompts()[0]
    rng = random.Random(3)
    texts = [world.response(prompt, style, rng) for style in ("good", "plain", "verbose", "rude")]
    task = _rank_task(prompt, texts)
    profile = labelers.Profile("careful", noise=0.7)
    shown_orders = [[1, 2, 3, 4], [4, 3, 2, 1], [2, 4, 1, 3], [3, 1, 4, 2]]
    for seed in range(20):
        rankings = {
            str(labelers.judgment(task, order, profile, random.Random(seed))["ranking"])
            for order in shown_orders
        }
        assert len(rankings) == 1, f"seed {seed}: {rankings}"
