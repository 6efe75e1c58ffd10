"""Curator pages: browse and filter judgments, approve/reject them, mark gold, and see each
labeler's quality and the project's agreement. Curators and admins of the project only."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from annotation import access, gold, quality, selectors, services
from annotation.consensus import consensus_request
from annotation.models import (
    Annotation,
    Consensus,
    ConsensusJob,
    ReviewStatus,
    Role,
    Source,
    TaskKind,
)
from core.panels import panels

FILTERS = {
    "labeler": "labeler__username",
    "kind": "kind",
    "review": "review_status",
    "source": "source",
    "gold": "task__is_gold",
}

# The figures of a labeler with no judgment they could be compared on (demonstrations only).
NO_FIGURES = dict.fromkeys(
    ["pairwise_agreement", "consensus_agreement", "self_agreement", "gold_accuracy",
     "first_shown_wins", "first_shown_chance"]
)  # fmt: skip


def _curated_project(request: HttpRequest, slug: str):
    project = selectors.project_get(request.user, slug=slug)
    access.role_require(request.user, project, Role.CURATOR)
    return project


@login_required
def curate(request: HttpRequest, slug: str) -> HttpResponse:
    project = _curated_project(request, slug)
    annotations = (
        Annotation.objects.filter(task__project=project)
        .select_related("labeler", "task", "task__prompt")
        # The responses' texts, shown in the order or choice each judgment gave them.
        .prefetch_related("task__candidates")
        .order_by("-id")
    )
    active = {}
    for name, lookup in FILTERS.items():
        value = request.GET.get(name, "")
        if value:
            active[name] = value
            annotations = annotations.filter(**{lookup: value == "1" if name == "gold" else value})
    page = Paginator(annotations, 50).get_page(request.GET.get("page"))
    report = quality.agreement_report(project)
    usernames = dict(project.memberships.values_list("user_id", "user__username"))
    # Every labeler who judged anything, agreement or not: demonstrations and written prompts
    # have no agreement figures, and their authors are labelers all the same.
    written = selectors.judgment_counts_by_labeler(project)
    labelers = sorted(
        (
            {
                "name": usernames.get(pk, f"#{pk}"),
                "judgments": written.get(pk, {}),
                **report["labelers"].get(pk, NO_FIGURES),
            }
            for pk in written.keys() | report["labelers"].keys()
        ),
        key=lambda row: row["name"],
    )
    context = {
        "project": project,
        "page": page,
        "active": active,
        # The filters again in the pagination links, so page 2 is page 2 of the same selection.
        "filter_query": urlencode(active),
        **_consensus_context(project),
        "labelers": labelers,
        "report": report,
        "diversity": quality.diversity_report(project),
        "paused": gold.paused_members(project),
        "kinds": TaskKind.choices,
        "reviews": ReviewStatus.choices,
        "sources": Source.choices,
        "usernames": sorted(set(usernames.values())),
        "bars": [
            ("pairwise agreement", report["pairwise_agreement"]),
            ("alpha (pairwise, nominal)", report["alpha_pairwise_nominal"]),
            ("alpha (ratings, ordinal)", report["alpha_rating_ordinal"]),
            ("Kendall's tau (rankings)", report["kendall_tau_mean"]),
        ],
        # Position bias is a table beside its chance baselines (`quality.position_bias`), not a
        # bar: a share of 0.29 for 4-way rankings is at chance (0.25), not agreement.
        "position_bias": report["position_bias_by_type"],
        # Sections other apps add (training: the labeling rounds' progress).
        "panels": [] if request.htmx else panels("curate", project),
    }
    template = "curation/_annotations.html" if request.htmx else "curation/curate.html"
    return render(request, template, context)


@login_required
@require_POST
def review(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    project = _curated_project(request, slug)
    annotation = get_object_or_404(Annotation, pk=pk, task__project=project)
    decision = request.POST.get("decision", "")
    if decision not in ReviewStatus.values:
        return HttpResponse("Unknown decision.", status=400)
    annotation = services.annotation_review(
        annotation=annotation, reviewer=request.user, decision=decision
    )
    return render(request, "curation/_row.html", {"a": annotation, "project": project})


@login_required
@require_POST
def mark_gold(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    project = _curated_project(request, slug)
    annotation = get_object_or_404(Annotation, pk=pk, task__project=project)
    try:
        # Only an approved judgment becomes the answer: one labeler's unreviewed word is not gold.
        quality.task_mark_gold(task=annotation.task, judgment=annotation)
    except ValidationError as error:
        return HttpResponse(" ".join(error.messages), status=400)
    annotation.task.refresh_from_db()
    return render(request, "curation/_row.html", {"a": annotation, "project": project})


def _consensus_context(project) -> dict:
    return {
        "consensus_versions": Consensus.objects.filter(project=project).order_by("-version")[:5],
        "consensus_jobs": ConsensusJob.objects.filter(
            project=project, status__in=ConsensusJob.unfinished()
        ).order_by("-id"),
    }


@login_required
@require_POST
def consensus_compute(request: HttpRequest, slug: str) -> HttpResponse:
    """Ask for a new consensus version (a job; asking again while one waits gets that one)."""
    project = _curated_project(request, slug)
    weighted = request.POST.get("weighted", "") in {"1", "on", "true"}
    try:
        job = consensus_request(project=project, weighted=weighted, user=request.user)
    except ValidationError as error:
        return HttpResponse(" ".join(error.messages), status=400)
    what = "weighted by labeler quality" if weighted else "unweighted"
    if job.reused:
        messages.info(
            request, f"A consensus computation ({what}) is already queued: job #{job.pk}."
        )
    else:
        messages.success(request, f"Consensus computation ({what}) queued: job #{job.pk}.")
    return redirect(reverse("annotation:curate", args=[project.slug]) + "#consensus-h")


@login_required
@require_POST
def resume(request: HttpRequest, slug: str, user_id: int) -> HttpResponse:
    """Resume a paused labeler of the project (gold.labeler_resume); back to the curate page."""
    project = _curated_project(request, slug)
    membership = get_object_or_404(project.memberships.select_related("user"), user_id=user_id)
    gold.labeler_resume(project=project, user=membership.user)
    return redirect("annotation:curate", slug=project.slug)
