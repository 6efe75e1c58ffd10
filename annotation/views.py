"""Labeler pages (server-rendered, htmx). Views parse input, call one service, render."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from annotation import selectors, services


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


@login_required
def home(request: HtmxHttpRequest) -> HttpResponse:
    projects = [
        {
            "project": p,
            "role": selectors.role_in(request.user, p),
            **selectors.project_progress(p, request.user),
        }
        for p in selectors.projects_for(request.user).order_by("name")
    ]
    return render(request, "annotation/home.html", {"projects": projects})


@login_required
@require_POST
def project_next(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get(request.user, slug=slug)
    assignment = services.next_task_for(project=project, labeler=request.user)
    if assignment is None:
        return render(request, "annotation/_no_task.html", {"project": project})
    url = f"/tasks/{assignment.task_id}/"
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


@login_required
def task_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    assignment = selectors.assignment_for(request.user, task_pk=pk)
    task = assignment.task
    by_id = {r.pk: r for r in task.candidates.all()}
    candidates = [by_id[i] for i in assignment.shown_order if i in by_id]
    guideline = task.project.current_guideline()
    return render(
        request,
        "annotation/task.html",
        {
            "assignment": assignment,
            "task": task,
            "project": task.project,
            "candidates": candidates,
            "guideline": guideline,
        },
    )
