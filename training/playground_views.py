"""Pages of the playground (training.playground): a project's models and one's sessions, the
chat page and its polled part. Views parse input, call one service, render."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from training import playground
from training.models import ModelArtifact, PlaygroundSession


class NewSessionForm(forms.Form):
    artifact = forms.ModelChoiceField(queryset=ModelArtifact.objects.none(), label="Model")

    def __init__(self, *args, user=None, project=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["artifact"].queryset = (
            playground.artifacts_of(project) if project is not None
            else ModelArtifact.objects.exclude(stage="reward")
        )  # fmt: skip


class SendForm(forms.Form):
    text = forms.CharField(label="Message", widget=forms.Textarea(attrs={"rows": 3}))
    temperature = forms.FloatField(initial=0.7, min_value=0, max_value=5, label="Temperature")
    top_p = forms.FloatField(initial=0.95, min_value=0.01, max_value=1, label="Top p")
    max_new_tokens = forms.IntegerField(initial=128, min_value=1, max_value=2048,
                                        label="Max new tokens")  # fmt: skip
    seed = forms.IntegerField(initial=0, label="Seed")

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)


def _errors(exc: ValidationError) -> str:
    return "; ".join(exc.messages)


@login_required
def project_playground(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(playground.playground_projects(request.user), pk=pk)
    playground.playground_require(request.user, project)
    form = NewSessionForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        try:
            session = playground.playground_session_create(
                project=project, artifact=form.cleaned_data["artifact"], user=request.user
            )
        except ValidationError as exc:
            form.add_error(None, _errors(exc))
        else:
            return redirect(reverse("training:playground_session", args=[session.pk]))
    sessions = playground.sessions_for(request.user).filter(project=project, user=request.user)
    context = {"project": project, "form": form, "sessions": sessions.select_related("artifact")}
    return render(request, "training/playground.html", context)


def _session(request: HttpRequest, pk: int) -> PlaygroundSession:
    return get_object_or_404(
        playground.sessions_for(request.user).select_related("artifact", "project"), pk=pk
    )


def _live_context(session: PlaygroundSession, error: str = "") -> dict:
    from django.conf import settings

    last = session.messages[-1] if session.messages else None
    return {
        "session": session,
        "position": playground.queue_position(session),
        "busy": playground.slots_busy(),
        "limit": settings.TRAINING_PLAYGROUND_MAX_SESSIONS,
        "last_reply": last["content"] if last and last["role"] == "assistant" else None,
        "error": error,
    }


@login_required
def session_page(request: HttpRequest, pk: int) -> HttpResponse:
    session = _session(request, pk)
    initial = {f: getattr(session, f) for f in ("temperature", "top_p", "max_new_tokens", "seed")}
    context = {**_live_context(session), "form": SendForm(initial=initial)}
    return render(request, "training/playground_session.html", context)


@login_required
def session_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The polled part of the chat page; it stops polling once the reply is finished."""
    return render(request, "training/_playground_live.html", _live_context(_session(request, pk)))


def _answer(request: HttpRequest, session: PlaygroundSession, error: str = "") -> HttpResponse:
    if request.htmx:
        session.refresh_from_db()
        return render(request, "training/_playground_live.html", _live_context(session, error))
    if error:
        messages.error(request, error)
    return redirect(reverse("training:playground_session", args=[session.pk]))


@login_required
@require_POST
def session_send(request: HttpRequest, pk: int) -> HttpResponse:
    session = _session(request, pk)
    form = SendForm(request.POST)
    if not form.is_valid():
        said = "; ".join(f"{f}: {' '.join(e)}" for f, e in form.errors.items())
        return _answer(request, session, said)
    try:
        playground.playground_send(session=session, user=request.user, **form.cleaned_data)
    except ValidationError as exc:
        return _answer(request, session, _errors(exc))
    return _answer(request, session)


@login_required
@require_POST
def session_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    session = playground.playground_cancel(session=_session(request, pk), user=request.user)
    return _answer(request, session)


@login_required
@require_POST
def session_save(request: HttpRequest, pk: int, what: str) -> HttpResponse:
    session = _session(request, pk)
    try:
        if what == "prompt":
            prompt = playground.playground_save_prompt(session=session, user=request.user)
            messages.success(request, f"Saved as prompt #{prompt.pk} of {session.project}.")
        else:
            response = playground.playground_save_demonstration(
                session=session, user=request.user, text=request.POST.get("text", "")
            )
            messages.success(
                request, f"Saved as demonstration #{response.pk} of prompt #{response.prompt_id}."
            )
    except ValidationError as exc:
        messages.error(request, _errors(exc))
    return redirect(reverse("training:playground_session", args=[session.pk]))
