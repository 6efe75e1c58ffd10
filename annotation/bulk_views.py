"""Curator pages of tasks created at scale: the form that requests a batch, and its progress.
Curators (and above) of the project only, as every curate page."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from annotation import bulk
from annotation.curation_views import _curated_project
from annotation.models import Snapshot, SnapshotKind, TaskBatch, TaskKind

FORM_FIELDS = ("kind", "batch", "tags", "snapshot", "without_demonstrations", "required",
               "priority", "round", "instructions")  # fmt: skip


def _choices(project) -> dict:
    return {
        "kinds": [(k, TaskKind(k).label) for k in bulk.BULK_KINDS if project.enabled(k)],
        "import_batches": project.import_batches.order_by("-id")[:50],
        "snapshots": project.snapshots.filter(
            kind=SnapshotKind.PROMPTS, status=Snapshot.Status.READY
        ).order_by("-id")[:50],
    }


@login_required
def tasks_bulk(request: HttpRequest, slug: str) -> HttpResponse:
    """GET: the form and the project's latest batches. POST: request a batch, then its page."""
    project = _curated_project(request, slug)
    values = {name: request.POST.get(name, "") for name in FORM_FIELDS}
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        selection = {
            name: values[name].strip()
            for name in ("batch", "tags", "snapshot", "without_demonstrations")
            if values[name].strip()
        }
        try:
            batch = bulk.task_batch_request(
                project=project,
                kind=values["kind"],
                selection=selection,
                required=values["required"].strip() or None,
                priority=values["priority"].strip() or 0,
                round=values["round"].strip() or 1,
                instructions=values["instructions"],
                user=request.user,
            )
        except ValidationError as error:
            errors = error.message_dict
        else:
            return redirect("annotation:curate_task_batch", slug=project.slug, pk=batch.pk)
    context = {
        "project": project,
        "values": values,
        "errors": errors,
        "batches": project.task_batches.order_by("-id")[:20],
        "k": project.k_responses,
        **_choices(project),
    }
    return render(request, "curation/tasks_bulk.html", context, status=400 if errors else 200)


@login_required
def task_batch(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """A batch's progress and counts; the htmx partial polls itself while it is unfinished."""
    project = _curated_project(request, slug)
    batch = get_object_or_404(TaskBatch, pk=pk, project=project)
    context = {
        "project": project,
        "batch": batch,
        "polling": batch.status in TaskBatch.unfinished(),
    }
    template = "curation/_task_batch.html" if request.htmx else "curation/task_batch.html"
    return render(request, template, context)
