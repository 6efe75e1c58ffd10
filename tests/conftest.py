"""Shared fixtures: the three users of every permission test (owner, member, outsider) and a
project with tasks, built through the services as the platform itself builds them.

The environment (development settings, a temporary var/) is set by tests/testenv.py, which
pytest loads before the settings; this file is read after them."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_user(db, django_user_model):
    def make(username: str, **extra):
        user = django_user_model.objects.create_user(
            username=username, password="pw-" + username, **extra
        )
        return user

    return make


@pytest.fixture
def project_factory(db):
    from annotation import services
    from annotation.models import Source, TaskKind

    def make(
        slug: str = "alpha",
        *,
        prompts: int = 3,
        k: int = 4,
        overlap: int = 1,
        kinds=(TaskKind.RANK,),
        lease_seconds: int = 900,
        members=(),
    ):
        project = services.project_create(
            name=slug.title(),
            slug=slug,
            k_responses=k,
            overlap=overlap,
            lease_seconds=lease_seconds,
            guidelines="Prefer correct answers.",
        )
        for user, role in members:
            services.membership_set(project=project, user=user, role=role)
        for i in range(prompts):
            (prompt,), _ = services.prompts_create(
                project=project, items=[{"text": f"{slug} prompt {i}"}]
            )
            responses = [
                services.response_create(
                    prompt=prompt, text=f"{slug} answer {i}.{j}", origin=Source.SEED
                )
                for j in range(k)
            ]
            for kind in kinds:
                candidates = {
                    TaskKind.RANK: responses,
                    TaskKind.COMPARE: responses[:2],
                    TaskKind.RATE: responses[:1],
                }.get(kind, [])
                services.task_create(
                    project=project, kind=kind, prompt=prompt, candidates=candidates
                )
        return project

    return make
