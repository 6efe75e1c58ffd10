"""Arena pages: the leaderboard of a project (curators and above), a new battle set (curators
and above), and a model's promotion gate (staff who see the model; promoting: engineers).
Labelers reach none of them: a battle shows them text only (annotation's task page)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from annotation import access, selectors
from annotation.models import Role
from annotation.rules import clean_tags
from training import arena, leaderboard
from training import selectors as training_selectors
from training.forms import BattleSetForm


def _arena_project(request: HttpRequest, slug: str):
    project = selectors.project_get(request.user, slug=slug)
    access.role_require(request.user, project, Role.CURATOR)
    return project


def _tag(request: HttpRequest) -> str:
    tags = clean_tags([request.GET.get("tag", "")[:100]])
    return tags[0] if tags else ""


@login_required
def leaderboard_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = _arena_project(request, slug)
    tag = _tag(request)
    board = leaderboard.leaderboard(project, tag)
    names = {row["artifact"]: row["name"] for row in board["rows"]}
    context = {
        "project": project,
        "board": board,
        "names": names,
        "battle_sets": project.battle_sets.all()[:10],
        "staff": request.user.is_staff,
    }
    return render(request, "training/leaderboard.html", context)


@login_required
def battle_set_new(request: HttpRequest, slug: str) -> HttpResponse:
    project = _arena_project(request, slug)
    initial = {}
    chosen = request.GET.get("artifacts", "")
    if chosen:
        initial["artifacts"] = [int(pk) for pk in chosen.split(",") if pk.isdigit()]
    form = BattleSetForm(request.POST or None, project=project, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        prompts = project.prompts.order_by("pk")
        if data["tag"]:
            prompts = prompts.filter(tags__icontains=f'"{data["tag"]}"')
        try:
            battle_set = arena.battle_set_create(
                project=project, artifacts=list(data["artifacts"]),
                prompts=list(prompts[: data["limit"]]), temperature=data["temperature"],
                top_p=data["top_p"], max_new_tokens=data["max_new_tokens"], seed=data["seed"],
                required=data["required"], name=data["name"], user=request.user,
            )  # fmt: skip
        except ValidationError as error:
            for field, errors in error.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            messages.success(
                request,
                f"{battle_set} queued: each model answers the prompts, then every pair of "
                "models battles on each prompt.",
            )
            return redirect(reverse("training:leaderboard", args=[project.slug]))
    return render(request, "training/battle_set_new.html", {"project": project, "form": form})


def _artifact(request: HttpRequest, pk: int):
    return get_object_or_404(
        training_selectors.artifacts_for(request.user).select_related("project", "parent", "run"),
        pk=pk,
    )


@staff_member_required
def artifact_arena(request: HttpRequest, pk: int) -> HttpResponse:
    """The promotion gate of a model: its arena score against its parent's."""
    artifact = _artifact(request, pk)
    context = {
        "artifact": artifact,
        "gate": leaderboard.promotion_gate(artifact),
        "engineer": artifact.project is not None
        and access.has_role(request.user, artifact.project, Role.ENGINEER),
    }
    return render(request, "training/artifact_arena.html", context)


@staff_member_required
@require_POST
def artifact_promote(request: HttpRequest, pk: int) -> HttpResponse:
    artifact = _artifact(request, pk)
    try:
        arena.artifact_promote(artifact=artifact, user=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(
            request, f"{artifact.name} is promoted: the default parent of the next run."
        )
    return redirect(reverse("training:artifact_arena", args=[artifact.pk]))
