"""Helpers for snapshot, import and quality tests (a unique module name: tests/ share sys.path)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from annotation import services
from annotation.models import Assignment, Source, Task, TaskKind


def judge(task: Task, labeler, payload: dict):
    """Submit a judgment as `labeler` through the real service (lease, then submit)."""
    assignment, _ = Assignment.objects.get_or_create(
        task=task,
        labeler=labeler,
        defaults={
            "expires_at": timezone.now() + timedelta(minutes=10),
            "shown_order": task.candidate_ids(),
        },
    )
    annotation, _ = services.annotation_submit(task=task, labeler=labeler, payload=payload)
    return annotation


def prompt_with(project, text, answers, *, kind=TaskKind.RANK, required=None, **prompt_fields):
    (prompt,), _ = services.prompts_create(project=project, items=[{"text": text, **prompt_fields}])
    responses = [
        services.response_create(prompt=prompt, text=a, origin=Source.SEED) for a in answers
    ]
    task = services.task_create(
        project=project, kind=kind, prompt=prompt, candidates=responses, required=required
    )
    return prompt, responses, task


def demonstrate(project, prompt_fields: dict, completion: str, labeler):
    (prompt,), _ = services.prompts_create(project=project, items=[prompt_fields])
    task = services.task_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt)
    return judge(task, labeler, {"text": completion})
