"""Simulated labelers: real user accounts that lease and submit through the annotation services.

Each labeler judges with the oracle plus Gaussian noise of its own size; the careless one
writes sloppy demonstrations and ranks almost at random. They take tasks with
`next_task_for` and answer with `annotation_submit`, exactly as the browser does, so leases,
overlap, idempotency and task completion all run for real.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from django.contrib.auth import get_user_model

from annotation import leasing, services
from annotation.models import Project, Role, Task, TaskKind

from . import oracle, world


@dataclass(frozen=True)
class Profile:
    name: str
    noise: float  # std-dev of the Gaussian noise added to oracle scores when judging
    careless: bool = False


PROFILES = [
    Profile("demo-ana", 0.2),
    Profile("demo-ben", 0.4),
    Profile("demo-chen", 0.7),
    Profile("demo-dev-careless", 4.0, careless=True),
]
PASSWORD_SUFFIX = "-demo-pass"


def labelers_ensure(*, project: Project, profiles=PROFILES) -> dict[str, object]:
    """The labeler accounts, created once and made labelers of `project`."""
    User = get_user_model()
    users = {}
    for p in profiles:
        user, created = User.objects.get_or_create(username=p.name)
        if created:
            user.set_password(p.name + PASSWORD_SUFFIX)
            user.save(update_fields=["password"])
        services.membership_set(project=project, user=user, role=Role.LABELER)
        users[p.name] = user
    return users


def _noisy_scores(task: Task, order: list[int], profile: Profile, rng: random.Random) -> dict:
    prompt = task.prompt.text
    by_id = {r.pk: r for r in task.candidate_list()}
    scores = {}
    # Noise drawn in the candidates' own order, not the shown one: the platform shuffles what
    # it shows per (task, labeler) by database ids, so the same seed would judge otherwise in a
    # database that holds anything else (the demo's figures depended on it).
    for rid in sorted(order):
        r = by_id[rid]
        ended = (r.generation or {}).get("ended", True)
        scores[rid] = oracle.score(prompt, r.text, ended=ended) + rng.gauss(0.0, profile.noise)
    return scores


def judgment(task: Task, order: list[int], profile: Profile, rng: random.Random) -> dict:
    """The payload this labeler submits for `task` (candidates shown in `order`)."""
    if task.kind == TaskKind.DEMONSTRATION:
        return {"text": world.demonstration(task.prompt.text, rng, careless=profile.careless)}
    scores = _noisy_scores(task, order, profile, rng)
    if task.kind == TaskKind.RANK:
        ranked = sorted(order, key=lambda rid: -scores[rid])  # stable: shown order breaks ties
        return {"ranking": [[rid] for rid in ranked], "all_unacceptable": False}
    if task.kind == TaskKind.COMPARE:
        a, b = order
        diff = scores[a] - scores[b]
        if abs(diff) < 0.05:
            return {"winner": None}
        strength = 1 if abs(diff) < 0.5 else 2 if abs(diff) < 1.5 else 3
        return {"winner": a if diff > 0 else b, "strength": strength}
    if task.kind == TaskKind.ARENA:
        a, b = order
        diff = scores[a] - scores[b]
        if abs(diff) < 0.05:
            # A tie; "both bad" when neither answer is even half right to this labeler.
            return {"winner": None, "both_bad": max(scores[a], scores[b]) < 1.0}
        return {"winner": a if diff > 0 else b}
    raise ValueError(f"simulated labelers do not do {task.kind} tasks")


def labelers_work(
    *, project: Project, users: dict, profiles=PROFILES, seed: int = 0, progress=None
) -> int:
    """Let every labeler take and answer tasks, in turns, until no one gets another task.

    Returns the number of annotations submitted.
    """
    rngs = {p.name: random.Random(f"{seed}:{p.name}") for p in profiles}
    active = list(profiles)
    submitted = 0
    while active:
        still = []
        for p in active:
            user = users[p.name]
            assignment = leasing.next_task_for(project=project, labeler=user)
            if assignment is None:
                continue
            task = assignment.task
            order = assignment.shown_order or task.candidate_ids()
            payload = judgment(task, order, p, rngs[p.name])
            services.annotation_submit(
                task=task,
                labeler=user,
                payload=payload,
                time_spent_ms=rngs[p.name].randint(2000, 20000),
                idempotency_key=f"demo-{assignment.pk}",
            )
            submitted += 1
            still.append(p)
            if progress and submitted % 200 == 0:
                progress(submitted)
        active = still
    return submitted
