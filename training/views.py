"""Staff pages of training: launch form (mounted in the admin), live run page, workers page,
"generate candidates" from a model. Views parse input, call one service, render."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from annotation.access import projects_at_least
from annotation.models import Prompt, Role
from core.jobs import jobs_reap_stale
from training import base_models, charts, generation, presets, rounds, runs, selectors
from training.artifacts import engineer_require, generation_refusal
from training.engine import STAGES, ConfigError
from training.engine.checkpoints import tensorboard_dir
from training.engine.resources import MemoryEstimate, estimate_memory, format_bytes
from training.forms import (
    BaseModelForm,
    GenerateForm,
    LaunchForm,
    RoundStartForm,
    config_text,
    dumps,
)
from training.models import TrainingRun

Status = TrainingRun.Status


def _admin_context(request: HttpRequest, title: str) -> dict:
    return {**admin.site.each_context(request), "title": title}


def reused_message(run: TrainingRun) -> str:
    """What a launch or re-run says when the same run is already queued or running."""
    return (
        f"Reused {run}: it has the same stage, config and inputs and is still "
        f"{run.get_status_display().lower()}, so nothing new was queued."
    )


def run_url(run: TrainingRun) -> str:
    return reverse("training:run", args=[run.pk])


# --- Launch ---------------------------------------------------------------------------------


def _initial_from_query(request: HttpRequest, form_cls_user) -> dict:
    initial: dict = {}
    preset = request.GET.get("preset", "")
    if preset in presets.PRESETS:
        config = presets.preset_config(preset)
        initial.update(preset=preset, stage=config.pop("stage"), config=config_text(config))
    elif request.GET.get("stage"):
        initial["stage"] = request.GET["stage"]
    for key in ("snapshot", "parent", "reward"):
        if request.GET.get(key, "").isdigit():
            initial[key] = int(request.GET[key])
    return initial


def estimate_view(estimate: MemoryEstimate) -> dict:
    """The engine's estimate with sizes for people (the template shows no raw byte counts)."""
    view = estimate.as_dict()
    if not estimate.known:
        return view
    return {
        **view,
        "parts_h": {k.replace("_", " "): format_bytes(v) for k, v in estimate.parts.items()},
        "total_h": format_bytes(estimate.total),
        "available_h": format_bytes(estimate.available) if estimate.available else "unknown",
        "parameters_h": f"{estimate.parameters / 1e6:.1f} M",
        "trainable_h": f"{estimate.trainable_parameters / 1e6:.2f} M",
    }


def config_error_field(stage: str, message: str, typed: dict) -> str:
    """The launch form's field an engine error is about: the snapshot for the data key, the
    parent or reward model for theirs, else the config (also where the key was typed there)."""
    cls = STAGES.get(stage)
    key = message.split(":", 1)[0].strip()
    if key.removeprefix(f"{stage}.") in typed:
        return "config"
    fields = {"parent": "parent", "reward": "reward", f"{stage}.model": "parent",
              f"{stage}.reward_model": "reward"}  # fmt: skip
    if cls is not None:
        fields[f"{stage}.{cls.snapshot_field}"] = "snapshot"
    return fields.get(key, "config")


def launch(request: HttpRequest) -> HttpResponse:
    """The "Launch training" form. `Estimate` shows memory; `Launch` validates and queues.
    For engineers (and admins): a run belongs to a project where the user is one."""
    if not projects_at_least(request.user, Role.ENGINEER).exists():
        raise PermissionDenied("Only an engineer or admin of a project can launch training.")
    estimate = None
    if request.method == "POST":
        form = LaunchForm(request.POST, user=request.user)
        if form.is_valid():
            data = form.cleaned_data
            snapshots = [data["snapshot"]] if data["snapshot"] else []
            config = dict(data["config"])
            preset = data["preset"]
            try:
                filled = runs.fill_inputs(
                    data["stage"], config, snapshots, data["parent"], data["reward"]
                )
                # Against the workers' devices, which the run will use, not this web server's
                # (no training worker online: this machine's, said on the form).
                device = selectors.training_device(
                    stale_after=settings.TRAINING_STALE_AFTER_SECONDS
                )
                estimate = estimate_view(estimate_memory(filled, device=device))
                estimate["no_worker"] = device is None
                too_big = estimate["fits"] is False  # None: shape or device memory unknown
                if "launch" in request.POST and too_big and not data["ignore_memory"]:
                    form.add_error(
                        None,
                        f"This run needs about {estimate['total_h']} but {estimate['device']} "
                        f"has {estimate['available_h']}: change the config (see the advice) or tick "
                        "'Launch even if…'.",
                    )
                elif "launch" in request.POST:
                    run = runs.run_launch(
                        stage=data["stage"],
                        config=config,
                        snapshots=snapshots,
                        parent=data["parent"],
                        reward=data["reward"],
                        user=request.user,
                        project=data["project"],
                        name=data["name"],
                        preset=preset,
                        num_processes=data["num_processes"],
                    )
                    if run.reused:
                        messages.warning(request, reused_message(run))
                    else:
                        messages.success(request, f"{run} queued.")
                    return redirect(run_url(run))
            except ConfigError as exc:
                field = (
                    "num_processes"
                    if str(exc).startswith("num_processes:")
                    else config_error_field(data["stage"], str(exc), data["config"])
                )
                form.add_error(field, str(exc))
            except PermissionDenied as exc:
                form.add_error(None, str(exc))
    else:
        form = LaunchForm(initial=_initial_from_query(request, None), user=request.user)
    context = {
        **_admin_context(request, "Launch training"),
        "form": form,
        "presets": presets.PRESETS,
        "estimate": estimate,
        "query": request.GET.copy(),
    }
    return render(request, "admin/training/trainingrun/launch.html", context)


# --- Base models ----------------------------------------------------------------------------


def _models_dir_folders() -> list[str]:
    """The model folders under MODELS_DIR (those with a config.json), for the form's help."""
    root = base_models.models_dir()
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "config.json").is_file()]
    hub = root / "hub"
    if hub.is_dir():
        found += [p for p in hub.iterdir() if (p / "config.json").is_file()]
    return sorted(str(p.relative_to(root)) for p in found)[:50]


def base_model_register(request: HttpRequest) -> HttpResponse:
    """ "Register a base model" (mounted in the admin): by folder at once, by hub name as a
    fetch job a worker runs. For engineers (and admins) of a project."""
    if not projects_at_least(request.user, Role.ENGINEER).exists():
        raise PermissionDenied("Only an engineer or admin of a project can register a model.")
    form = BaseModelForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            if data["folder"].strip():
                artifact = base_models.base_model_register(
                    project=data["project"], folder=data["folder"], name=data["name"],
                    user=request.user,
                )  # fmt: skip
                messages.success(request, f"Registered {artifact.name} in {artifact.project}.")
                return redirect(reverse("admin:training_modelartifact_change", args=[artifact.pk]))
            job = base_models.base_model_fetch_request(
                project=data["project"], hub_name=data["hub_name"], name=data["name"],
                user=request.user,
            )  # fmt: skip
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            if job.reused:
                messages.warning(
                    request, f"{job.hub_name} is already being fetched: nothing new was queued."
                )
            else:
                messages.success(
                    request,
                    f"Fetching {job.hub_name}: a worker downloads it, then registers it in "
                    f"{job.project}. Its progress is below.",
                )
            return redirect(reverse("admin:training_basemodelfetch_change", args=[job.pk]))
    context = {
        **_admin_context(request, "Register a base model"),
        "form": form,
        "models_dir": base_models.models_dir(),
        "folders": _models_dir_folders(),
        "offline": base_models.hub_offline(),
        "offline_advice": base_models.offline_advice(),
    }
    return render(request, "admin/training/modelartifact/register_base.html", context)


# --- Run page -------------------------------------------------------------------------------


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def _resume_context(run: TrainingRun) -> dict:
    """What the page offers a stopped run: Resume from the checkpoint on disk, a link to the
    run that already resumed it, or why it cannot be resumed."""
    if run.status not in (Status.FAILED, Status.CANCELLED):
        return {}
    later = run.resumed_by.order_by("pk").first()
    if later is not None:
        return {"resumed_by": later}
    refusal = runs.resume_refusal(run)
    if refusal:
        return {"refusal": refusal}
    return {"point": runs.resume_point(run)}


def _live_context(run: TrainingRun) -> dict:
    series = selectors.run_series(run)
    resumed_from = run.metrics.get("resumed_from") or {}
    marks = {"resumed": resumed_from["step"]} if resumed_from.get("step") else {}
    chart_list = [
        c
        for key, title, _ in selectors.CHARTS
        if (c := charts.line_chart(title, series.get(key, {}), marks=marks)) is not None
    ]
    latest = run.metrics.get("latest", {})
    final = run.metrics.get("final") or {}
    return {
        "resume": _resume_context(run),
        "resumed_from": resumed_from,
        "notes": [n for n in run.metrics.get("notes", []) if isinstance(n, str)],
        "run": run,
        "percent": round(run.progress * 100, 1),
        "eta": _eta(run.eta_seconds),
        "charts": chart_list,
        "throughput": latest.get("tokens_per_s"),
        "evaluation": {**run.metrics.get("eval", {}), **final} if run.is_finished else {},
        "artifact": getattr(run, "artifact", None) if run.status == Status.SUCCEEDED else None,
        "polling": not run.is_finished,
        "heartbeat_age": (timezone.now() - run.heartbeat_at).total_seconds()
        if run.heartbeat_at
        else None,
        "no_worker": selectors.queued_without_worker(run),
        "tensorboard": _tensorboard_folder(run),
    }


def _tensorboard_folder(run: TrainingRun):
    """The run's TensorBoard folder (`report_to: tensorboard`) once it holds event files."""
    if run.config.get("report_to") != "tensorboard" or not run.output_dir:
        return None
    folder = tensorboard_dir(Path(run.output_dir))
    return folder if any(folder.rglob("events.out.tfevents.*")) else None


@staff_member_required
def run_tensorboard(request: HttpRequest, pk: int) -> HttpResponse:
    """The run's TensorBoard event files as one .tar.gz, for `tensorboard --logdir` on any
    machine; to whoever may see the run page (a 404 for other projects' runs)."""
    import io
    import tarfile

    run = selectors.run_get(request.user, pk)
    folder = _tensorboard_folder(run)
    if folder is None:
        raise Http404("this run wrote no TensorBoard event files")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=f"run-{run.pk}/{path.relative_to(folder)}")
    response = HttpResponse(buffer.getvalue(), content_type="application/gzip")
    response["Content-Disposition"] = f'attachment; filename="run-{run.pk}-tensorboard.tar.gz"'
    return response


# Run pages: curators and above of the run's project (`runs_for`); what changes a run (cancel,
# resume, re-run): its engineers and admins (the services check it and answer 403).


@staff_member_required
def run_page(request: HttpRequest, pk: int) -> HttpResponse:
    run = selectors.run_get(request.user, pk)
    context = {
        **_admin_context(request, str(run)),
        **_live_context(run),
        "config_json": dumps(run.config),
        "snapshots": list(run.snapshots.all()),
    }
    return render(request, "training/run.html", context)


@staff_member_required
def run_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The polled part of the run page; polling stops once the run has finished."""
    run = selectors.run_get(request.user, pk)
    stale = settings.TRAINING_STALE_AFTER_SECONDS
    if (
        run.status == Status.RUNNING
        and run.heartbeat_at
        and ((timezone.now() - run.heartbeat_at).total_seconds() > stale)
    ):
        # Nobody may be left to sweep (the only worker died): the page watching it does.
        jobs_reap_stale(models=[TrainingRun])
        run.refresh_from_db()
    return render(request, "training/_run_live.html", _live_context(run))


@staff_member_required
@require_POST
def run_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    run = selectors.run_get(request.user, pk)
    try:
        if action == "cancel":
            run = runs.run_cancel(run=run, user=request.user)
            messages.info(request, "Cancel requested: the run stops after its current step.")
        elif action == "resume":
            run = runs.run_resume(run=run, user=request.user)
            messages.success(request, f"Resuming as {run}.")
        elif action == "rerun":
            run = runs.run_rerun(run=run, user=request.user)
            if run.reused:
                messages.warning(request, reused_message(run))
            else:
                messages.success(request, f"Re-run queued as {run}.")
    except (ValidationError, ConfigError) as exc:
        messages.error(request, "; ".join(getattr(exc, "messages", [str(exc)])))
    return redirect(run_url(run))


@staff_member_required
@require_POST
def base_model_fetch_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    """The Cancel button of a fetch's page: its project's engineers (the service answers 403)."""
    job = get_object_or_404(selectors.fetches_for(request.user).select_related("project"), pk=pk)
    try:
        job = base_models.base_model_fetch_cancel(job=job, user=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        if job.status == job.Status.CANCELLED:
            messages.info(request, f"Cancelled the fetch of {job.hub_name}.")
        else:
            messages.info(
                request,
                f"Cancel requested: the fetch of {job.hub_name} stops after the file it is "
                "downloading (those fetched so far are kept: fetching it again finishes them).",
            )
    return redirect(reverse("admin:training_basemodelfetch_change", args=[job.pk]))


# --- Workers --------------------------------------------------------------------------------


@staff_member_required
def workers_page(request: HttpRequest) -> HttpResponse:
    """The training machines: for those who launch runs (engineers and admins of a project)."""
    if not projects_at_least(request.user, Role.ENGINEER).exists():
        raise PermissionDenied("Only an engineer or admin of a project can see the workers.")
    rows = selectors.workers_list(stale_after=settings.TRAINING_STALE_AFTER_SECONDS)
    for row in rows:
        w = row["worker"]
        row["gpus"] = [
            {
                **g,
                "total_h": format_bytes(g["memory_total"]),
                "free_h": format_bytes(g["memory_free"]),
            }
            for g in w.devices
        ]
        row["cpu_total_h"] = format_bytes(w.cpu.get("memory_total", 0))
        row["cpu_available_h"] = format_bytes(w.cpu.get("memory_available", 0))
        row["running"] = TrainingRun.objects.filter(
            status=Status.RUNNING, worker__startswith=w.hostname
        ).count()
    context = {**_admin_context(request, "Workers and devices"), "rows": rows}
    return render(request, "training/workers.html", context)


# --- Generate candidates --------------------------------------------------------------------


def _scorer_refused(request: HttpRequest, artifact, what: str) -> HttpResponse | None:
    """A reward model's page for generating: back to the model, with why (it writes nothing)."""
    if artifact.generates:
        return None
    messages.error(request, generation_refusal(artifact, what))
    return redirect(reverse("admin:training_modelartifact_change", args=[artifact.pk]))


@staff_member_required
def generate(request: HttpRequest, pk: int) -> HttpResponse:
    artifact = get_object_or_404(selectors.artifacts_for(request.user), pk=pk)
    engineer_require(request.user, artifact.project)
    if (refused := _scorer_refused(request, artifact, "generate candidates")) is not None:
        return refused
    form = GenerateForm(request.POST or None, user=request.user, artifact=artifact)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            # Prompts only (never imported documents), those not judged yet first.
            ids = rounds.prompts_unjudged_first(
                data["project"],
                rounds.prompts_selectable(
                    data["project"], {"tags": [data["tag"]]} if data["tag"] else {}
                ),
            )[: data["limit"]]
            prompts = list(Prompt.objects.filter(pk__in=ids).order_by("pk"))
            job = generation.generation_job_create(
                project=data["project"],
                artifact=artifact,
                prompts=prompts,
                k=data["k"],
                temperature=data["temperature"],
                top_p=data["top_p"],
                max_new_tokens=data["max_new_tokens"],
                seed=data["seed"],
                round=data["round"],
                user=request.user,
            )
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            if job.reused:
                messages.warning(
                    request,
                    f"Reused generation #{job.pk}: the same model, prompts and settings are "
                    f"still {job.get_status_display().lower()}, so nothing new was queued.",
                )
            else:
                messages.success(
                    request,
                    f"Generation #{job.pk} queued: {job.k} responses for each of {len(prompts)} "
                    "prompts, then one ranking task per prompt.",
                )
            return redirect(reverse("admin:training_modelartifact_change", args=[artifact.pk]))
    context = {
        **_admin_context(request, f"Generate candidates from {artifact}"),
        "form": form,
        "artifact": artifact,
        "jobs": artifact.generation_jobs.all()[:10],
    }
    return render(request, "training/generate.html", context)


# --- Start next round -----------------------------------------------------------------------


@staff_member_required
def round_start(request: HttpRequest, pk: int) -> HttpResponse:
    artifact = get_object_or_404(selectors.artifacts_for(request.user), pk=pk)
    engineer_require(request.user, artifact.project)
    if (refused := _scorer_refused(request, artifact, "start a round")) is not None:
        return refused
    form = RoundStartForm(request.POST or None, artifact=artifact)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            job = rounds.round_start(
                policy=artifact, budget=data["budget"], source=form.source(),
                generators=list(data["generators"]), active=data["active"],
                reward_models=list(data["reward_models"]), k=data["k"],
                temperature=data["temperature"], top_p=data["top_p"],
                max_new_tokens=data["max_new_tokens"], seed=data["seed"], user=request.user,
            )  # fmt: skip
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                name = field.removeprefix("selection.")
                name = "tag" if name == "tags" else name
                form.add_error(name if name in form.fields else None, errors)
        else:
            verb = "is still" if job.reused else "queued:"
            messages.success(
                request,
                f"Round {job.number} of {job.project} {verb} {job.get_status_display().lower()}"
                f" — up to {job.budget} prompts, {job.k} responses each.",
            )
            return redirect(reverse("admin:training_round_change", args=[job.pk]))
    context = {
        **_admin_context(request, f"Start the next round from {artifact}"),
        "form": form,
        "artifact": artifact,
        "rounds": artifact.project.rounds.all()[:10] if artifact.project else [],
    }
    return render(request, "training/round_start.html", context)
