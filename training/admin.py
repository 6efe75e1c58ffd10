"""Training in the Django admin: runs (launch, cancel, resume, re-run), artifacts with their
lineage, workers; and actions on snapshots and artifacts that pre-fill the launch form."""

from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from annotation.access import has_role, projects_at_least
from annotation.admin import DEFAULT_ROLES, RoleScopedAdmin
from annotation.models import Role, Snapshot
from core.admin_actions import admin_action_contribute
from training import artifacts, generation, rounds, runs, selectors, views
from training.engine import STAGES, ConfigError
from training.engine.resources import format_bytes
from training.models import (
    ArenaBattleSet,
    BaseModelFetch,
    GenerationJob,
    ModelArtifact,
    Round,
    TrainingRun,
    WorkerHeartbeat,
)
from training.presets import stage_preset
from training.selectors import queued_without_worker


def preset_for_kind(kind: str) -> str | None:
    """The preset a snapshot of `kind` most likely feeds: that of the first stage whose own
    kind it is (the first of the stage's `snapshot_kinds`; preference pairs: the reward model,
    before DPO)."""
    for stage, config in STAGES.items():
        if config.snapshot_kinds[:1] == (kind,):
            return stage_preset(stage)
    return None


def _launch_url(**params) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return reverse("admin:training_trainingrun_launch") + (f"?{query}" if query else "")


def _one(modeladmin, request, queryset):
    if queryset.count() != 1:
        modeladmin.message_user(request, "Select exactly one.", messages.WARNING)
        return None
    return queryset.first()


@admin.action(
    description="Train on the selected snapshot (pre-fills the launch form)", permissions=["train"]
)
def train_on_snapshot(modeladmin, request, queryset):
    snapshot = _one(modeladmin, request, queryset)
    if snapshot is not None:
        return HttpResponseRedirect(
            _launch_url(snapshot=snapshot.pk, preset=preset_for_kind(snapshot.kind))
        )


admin_action_contribute(model=Snapshot, action=train_on_snapshot)


# Curators read what was trained on their data; engineers train (launch, cancel, resume,
# re-run, register and generate); admins delete.
TRAINING_ROLES = {**DEFAULT_ROLES, "add": Role.ENGINEER, "change": Role.ENGINEER,
                  "train": Role.ENGINEER}  # fmt: skip


@admin.register(TrainingRun)
class TrainingRunAdmin(RoleScopedAdmin):
    roles = TRAINING_ROLES
    list_display = ["id", "name", "stage", "status_badge", "progress_pct", "device", "worker",
                    "created_at", "live"]  # fmt: skip
    list_filter = ["stage", "status"]
    search_fields = ["name", "error"]
    actions = ["cancel_runs", "resume_runs", "rerun_runs"]
    readonly_fields = [
        "live", "stage", "preset", "status", "cancel_requested", "step", "total_steps",
        "checkpoint_step", "eta_seconds", "metrics", "log_tail", "output_dir", "worker",
        "device", "heartbeat_at", "error", "advice", "resume_of", "created_by", "created_at",
        "started_at", "finished_at", "config", "snapshots", "parent_artifact",
        "reward_artifact", "project", "resume_state",
    ]  # fmt: skip
    fields = ["name", *readonly_fields]
    change_list_template = "admin/training/trainingrun/change_list.html"

    def unowned_rows(self, request, permission):
        # A run of no project (its project deleted, or from before runs had one): its launcher's.
        return Q(project__isnull=True, created_by=request.user)

    def has_add_permission(self, request):
        return False  # runs start from the launch form, which validates the config

    def get_urls(self):
        return [
            path(
                "launch/",
                self.admin_site.admin_view(views.launch),
                name="training_trainingrun_launch",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="status", ordering="status")
    def status_badge(self, run):
        return format_html(
            '<span class="run-status run-{}">{}</span>', run.status, run.get_status_display()
        )

    @admin.display(description="progress")
    def progress_pct(self, run):
        return f"{run.progress * 100:.0f}% ({run.step}/{run.total_steps})"

    @admin.display(description="resume")
    def resume_state(self, run):
        """What the Resume action would do with this run (the service decides the same way)."""
        if not run.pk or run.status not in (
            TrainingRun.Status.FAILED,
            TrainingRun.Status.CANCELLED,
        ):
            return "—"
        refusal = runs.resume_refusal(run)
        if refusal:
            return f"not possible: {refusal}"
        return f"continues from the checkpoint at step {runs.resume_point(run).step}"

    @admin.display(description="run page")
    def live(self, run):
        if not run.pk:
            return "—"
        return format_html('<a href="{}">open the live run page</a>', views.run_url(run))

    def _each(self, request, queryset, action, done: str):
        count = 0
        for run in queryset:
            try:
                result = action(run=run, user=request.user)
            except (ValidationError, ConfigError) as exc:
                self.message_user(
                    request,
                    f"{run}: {'; '.join(getattr(exc, 'messages', [str(exc)]))}",
                    messages.WARNING,
                )
                continue
            if getattr(result, "reused", False):  # a re-run of a run still unfinished
                self.message_user(request, views.reused_message(result), messages.WARNING)
            else:
                count += 1
        if count:
            self.message_user(request, f"{count} run(s) {done}.", messages.SUCCESS)

    @admin.action(description="Cancel the selected runs", permissions=["train"])
    def cancel_runs(self, request, queryset):
        self._each(request, queryset, runs.run_cancel, "cancelled (or cancelling)")

    @admin.action(
        description="Resume the selected runs from their last checkpoint", permissions=["train"]
    )
    def resume_runs(self, request, queryset):
        self._each(request, queryset, runs.run_resume, "resumed")

    @admin.action(
        description="Re-run the selected runs with the same config", permissions=["train"]
    )
    def rerun_runs(self, request, queryset):
        self._each(request, queryset, runs.run_rerun, "re-queued")


class ModelArtifactForm(forms.ModelForm):
    """The path and parent rules of `training.artifacts`, checked here so a refusal is shown on
    the field it names; the save itself goes through the service (which checks them again)."""

    def clean(self):
        data = super().clean()
        # A run's model has its project and path read-only: its parent is still checked.
        project = data.get("project") if "project" in self.fields else self.instance.project
        try:
            artifacts.artifact_changes_check(
                artifact=self.instance, project=project,
                path=data.get("path") or "", parent=data.get("parent"),
                changed=self.changed_data,
            )  # fmt: skip
        except ValidationError as exc:
            self.add_error(None, exc)
        return data


@admin.register(ModelArtifact)
class ModelArtifactAdmin(RoleScopedAdmin):
    roles = TRAINING_ROLES
    list_display = ["id", "name", "project", "stage", "parent", "run", "created_at"]
    list_filter = ["stage"]
    search_fields = ["name", "path"]
    actions = ["train_from", "generate_from", "start_next_round", "arena_from"]
    form = ModelArtifactForm
    change_list_template = "admin/training/modelartifact/change_list.html"
    readonly_fields = [
        "base_model",
        "arena_gate",
        "lineage_chain",
        "run",
        "metrics",
        "model_card",
        "created_at",
        "snapshot_list",
    ]
    fields = ["project", "name", "stage", "path", "base_model", "parent", "lineage_chain",
              "arena_gate", "run", "snapshot_list", "metrics", "model_card", "created_at"]  # fmt: skip

    def get_urls(self):
        return [
            path(
                "register-base/",
                self.admin_site.admin_view(views.base_model_register),
                name="training_modelartifact_register_base",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="model")
    def base_model(self, artifact):
        """Parameters, dtype, context length (from its config.json) and what training it takes
        in memory on the workers' device: the engine's estimate, full and with LoRA."""
        if not artifact.pk:
            return "—"
        from training.engine.resources import estimate_memory

        info = artifact.info or {}
        rows = []
        if info.get("parameters"):
            how = "" if info.get("parameters_from") == "safetensors" else " (estimated)"
            rows.append(("parameters", f"{info['parameters'] / 1e6:,.1f} M{how}"))
        for key, label in (("architecture", "architecture"), ("dtype", "dtype"),
                           ("context_length", "context length"), ("vocab_size", "vocabulary")):  # fmt: skip
            if info.get(key) not in (None, ""):
                rows.append((label, f"{info[key]:,}" if isinstance(info[key], int) else info[key]))
        if not artifact.path.startswith("/") or artifact.stage == "reward":
            return format_html_join("", "<div>{}: {}</div>", rows) if rows else "—"
        device = selectors.training_device(stale_after=settings.TRAINING_STALE_AFTER_SECONDS)
        for label, extra in (("SFT, all weights", {}), ("SFT with LoRA", {"use_lora": True})):
            estimate = estimate_memory({"stage": "sft", "model": artifact.path, **extra}, device)
            if estimate.known:
                fits = {True: "fits", False: "does not fit", None: "fit unknown"}[estimate.fits]
                rows.append((f"memory, {label}", f"{format_bytes(estimate.total)} on "
                             f"{estimate.device} ({fits})"))  # fmt: skip
            else:
                rows.append((f"memory, {label}", " ".join(estimate.advice)))
        return format_html_join("", '<div class="base-model-info">{}: {}</div>', rows)

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.run_id is not None:  # a run's model: its run's folder, project
            return [*self.readonly_fields, "project", "path"]
        return self.readonly_fields

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if "project" in form.base_fields:  # registered into a project where one is an engineer
            form.base_fields["project"].queryset = projects_at_least(request.user, Role.ENGINEER)
            form.base_fields["project"].required = True
        return form

    def save_model(self, request, obj, form, change):
        """Through `training.artifacts`: role, path and parent rules (PermissionDenied: 403)."""
        data = form.cleaned_data
        if not change:
            saved = artifacts.artifact_register(
                project=data["project"], name=data["name"], stage=data["stage"],
                path=data["path"], parent=data.get("parent"), user=request.user,
            )  # fmt: skip
            # The admin goes on with `obj` (its log entry, its redirect): make it the saved row.
            obj.pk, obj.created_at, obj._state.adding = saved.pk, saved.created_at, False
            return
        editable = ("project", "name", "stage", "path", "parent")
        artifacts.artifact_update(
            artifact=ModelArtifact.objects.get(pk=obj.pk),
            user=request.user,
            **{name: data[name] for name in form.changed_data if name in editable},
        )
        obj.refresh_from_db()

    def unowned_rows(self, request, permission):
        # A model registered before artifacts had a project (a shared base model): read and
        # trained from as before, by whoever held the role somewhere; changed by superusers.
        if permission not in ("view", "train"):
            return None
        from training.selectors import artifacts_for

        return Q(project__isnull=True, pk__in=artifacts_for(request.user).values("pk"))

    @admin.display(description="lineage")
    def lineage_chain(self, artifact):
        if not artifact.pk:
            return "—"
        return format_html_join(
            " → ",
            '<a href="{}">{} <small>({})</small></a>',
            (
                (
                    reverse("admin:training_modelartifact_change", args=[a.pk]),
                    a.name,
                    a.get_stage_display(),
                )
                for a in artifact.lineage()
            ),
        )

    @admin.display(description="arena")
    def arena_gate(self, artifact):
        if not artifact.pk:
            return "—"
        status = "promoted" if artifact.promoted_at else "score against its parent"
        return format_html(
            '<a href="{}" id="arena-gate-link">Promotion gate</a> ({})',
            reverse("training:artifact_arena", args=[artifact.pk]),
            status,
        )

    @admin.display(description="snapshots")
    def snapshot_list(self, artifact):
        return ", ".join(str(s) for s in artifact.snapshots.all()) or "—"

    @admin.action(
        description="Train from the selected model (pre-fills the launch form)",
        permissions=["train"],
    )
    def train_from(self, request, queryset):
        artifact = _one(self, request, queryset)
        if artifact is None:
            return None
        next_preset = {"pretrain": "sft-lora", "sft": "reward", "instruction": "reward",
                       "reward": "ppo"}.get(artifact.stage, "sft-lora")  # fmt: skip
        if artifact.stage == "reward":
            return HttpResponseRedirect(
                _launch_url(reward=artifact.pk, preset=next_preset, parent=artifact.parent_id)
            )
        return HttpResponseRedirect(_launch_url(parent=artifact.pk, preset=next_preset))

    @admin.action(
        description="Generate candidates for labelers from the selected model",
        permissions=["train"],
    )
    def generate_from(self, request, queryset):
        artifact = _one(self, request, queryset)
        if artifact is not None and self._generates(request, artifact, "generate candidates"):
            return HttpResponseRedirect(reverse("training:generate", args=[artifact.pk]))

    def _generates(self, request, artifact, what: str) -> bool:
        if not artifact.generates:
            self.message_user(
                request, artifacts.generation_refusal(artifact, what), messages.WARNING
            )
        return artifact.generates

    @admin.action(
        description="Start the next labeling round from the selected policy",
        permissions=["train"],
    )
    def start_next_round(self, request, queryset):
        artifact = _one(self, request, queryset)
        if artifact is not None and self._generates(request, artifact, "start a round"):
            return HttpResponseRedirect(reverse("training:round_start", args=[artifact.pk]))

    @admin.action(description="Start an arena between the selected models")
    def arena_from(self, request, queryset):
        chosen = list(queryset.select_related("project"))
        scorers = [a for a in chosen if not a.generates]
        if scorers:
            self.message_user(
                request, artifacts.generation_refusal(scorers[0], "battle"), messages.WARNING
            )
            return None
        projects = {a.project for a in chosen}
        if len(projects) != 1 or None in projects:
            self.message_user(request, "Choose models of one project.", messages.WARNING)
            return None
        ids = ",".join(str(a.pk) for a in chosen)
        url = reverse("training:battle_set_new", args=[projects.pop().slug])
        return HttpResponseRedirect(f"{url}?{urlencode({'artifacts': ids})}")


@admin.register(BaseModelFetch)
class BaseModelFetchAdmin(RoleScopedAdmin):
    """Base models being fetched from the hub (requested from "Register a base model")."""

    roles = TRAINING_ROLES
    list_display = ["id", "hub_name", "project", "status", "fetched", "artifact", "created_at"]
    list_filter = ["status"]
    readonly_fields = ["project", "hub_name", "name", "status", "cancel_requested", "fetched",
                       "artifact", "worker", "started_at", "heartbeat_at", "finished_at", "error",
                       "created_by", "created_at"]  # fmt: skip
    fields = readonly_fields

    def has_add_permission(self, request):
        return False  # requested from "Register a base model", which checks the name first

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # The Cancel button (training.views.base_model_fetch_cancel): for an unfinished fetch
        # not already stopping, to its project's engineers only; the service checks it again.
        job = self.get_object(request, object_id)
        may_cancel = (
            job is not None
            and job.status in job.unfinished()
            and not job.cancel_requested
            and has_role(request.user, job.project, Role.ENGINEER)
        )
        extra_context = {**(extra_context or {}), "may_cancel": may_cancel}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="progress")
    def fetched(self, job):
        if not job.files_total:
            return "—" if job.status != BaseModelFetch.Status.RUNNING else "listing its files…"
        return (
            f"{job.progress * 100:.0f}% ({format_bytes(job.bytes_done)} of "
            f"{format_bytes(job.bytes_total)}, {job.files_done}/{job.files_total} files)"
        )


@admin.register(ArenaBattleSet)
class ArenaBattleSetAdmin(RoleScopedAdmin):
    """Battle sets are started from the arena pages (training.arena); here they are listed."""

    list_display = ["id", "name", "project", "status", "battles_created", "created_at"]
    list_filter = ["status"]
    readonly_fields = ["project", "name", "temperature", "top_p", "max_new_tokens", "seed",
                       "required", "status", "round", "battles_created", "error", "created_by",
                       "created_at"]  # fmt: skip
    exclude = ["prompts", "artifacts"]

    def has_add_permission(self, request):
        return False


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ["hostname", "pid", "queues", "seen_at", "stopped_at"]
    readonly_fields = ["hostname", "pid", "queues", "devices", "cpu", "started_at", "seen_at",
                       "stopped_at"]  # fmt: skip
    change_list_template = "admin/training/workerheartbeat/change_list.html"

    def has_add_permission(self, request):
        return False


@admin.register(GenerationJob)
class GenerationJobAdmin(RoleScopedAdmin):
    roles = TRAINING_ROLES
    list_display = [
        "id",
        "artifact",
        "project",
        "k",
        "status",
        "worker",
        "heartbeat_at",
        "responses_created",
        "tasks_created",
        "created_at",
    ]
    list_filter = ["status"]
    readonly_fields = ["waiting", "project", "artifact", "k", "temperature", "top_p",
                       "max_new_tokens", "seed", "round", "status", "worker", "started_at",
                       "heartbeat_at", "responses_created", "tasks_created", "error", "created_by",
                       "created_at", "finished_at"]  # fmt: skip
    exclude = ["prompts"]
    actions = ["generate_again"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="queue")
    def waiting(self, job):
        return queued_without_worker(job) or "—"

    @admin.action(
        description="Generate again with the same model, prompts and settings",
        permissions=["train"],
    )
    def generate_again(self, request, queryset):
        jobs = []
        for job in queryset:
            try:
                jobs.append(generation.generation_job_repeat(job=job, user=request.user))
            except ValidationError as error:  # e.g. its prompts were deleted since
                self.message_user(
                    request, f"Generation #{job.pk}: {' '.join(error.messages)}", messages.WARNING
                )
        new = [job for job in jobs if not job.reused]
        if new:
            numbers = ", ".join(f"#{job.pk}" for job in new)
            self.message_user(request, f"Queued generation {numbers}.", messages.SUCCESS)
        reused = sorted({job.pk for job in jobs} - {job.pk for job in new})
        if reused:
            numbers = ", ".join(f"#{pk}" for pk in reused)
            self.message_user(
                request,
                f"Generation {numbers}: the same model, prompts and settings are still queued or "
                "running; reused, nothing new was queued.",
                messages.WARNING,
            )


@admin.register(Round)
class RoundAdmin(RoleScopedAdmin):
    """Rounds are written by "Start next round" only: read here, with their progress."""

    roles = TRAINING_ROLES
    list_display = ["number", "project", "policy", "kind", "budget", "active", "status",
                    "progress", "created_at"]  # fmt: skip
    list_filter = ["status", "active"]
    readonly_fields = ["project", "number", "policy", "kind", "budget", "source", "active", "k",
                       "temperature", "top_p", "max_new_tokens", "seed", "retries", "status",
                       "worker", "selection", "counts", "progress", "error", "created_by",
                       "created_at", "started_at", "finished_at"]  # fmt: skip
    exclude = ["generators", "reward_models", "generation_jobs", "snapshots"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="progress")
    def progress(self, job):
        p = rounds.round_progress(job)
        agreement = "—" if p["agreement"] is None else f"{p['agreement']:.0%}"
        gained = "—" if p["pairs_gained"] is None else p["pairs_gained"]
        return f"{p['tasks_done']}/{p['tasks']} tasks, agreement {agreement}, pairs gained {gained}"
