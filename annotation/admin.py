"""Admin pages for curators, engineers and admins, scoped to the projects they belong to."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.contrib.admin.widgets import ForeignKeyRawIdWidget
from django.core.exceptions import ValidationError
from django.utils.html import format_html_join

from annotation import selectors, services
from annotation.models import (
    Annotation,
    Assignment,
    Consensus,
    Guideline,
    ImportBatch,
    Membership,
    Project,
    Prompt,
    Response,
    Snapshot,
    Task,
)
from core.admin_actions import ContributedActionsMixin

PROJECT_SETTINGS = ["name", "slug", "description", "task_kinds", "k_responses", "overlap",
                    "lease_seconds"]  # fmt: skip


class ProjectFilter(admin.SimpleListFilter):
    """A project filter that offers only the projects the staff user may see.

    Django's default related-field filter lists every project, which would leak their names.
    """

    title = "project"
    parameter_name = "project"
    path = "project"

    def lookups(self, request, model_admin):
        projects = selectors.projects_for(request.user, roles=selectors.STAFF_ROLES)
        return [(str(p.pk), p.name) for p in projects.order_by("name")]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{f"{self.path}__id": self.value()})
        return queryset


class ScopedRawIdWidget(ForeignKeyRawIdWidget):
    """A raw id box that names the row it holds only when the user may see that row (Django's
    looks the id up unscoped, so `?prompt=<id>` would print any project's prompt)."""

    def __init__(self, *args, queryset, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queryset = queryset

    def label_and_url_for_value(self, value):
        try:
            visible = self.queryset.filter(**{self.rel.get_related_field().name: value}).exists()
        except (TypeError, ValueError, ValidationError):
            visible = False
        return super().label_and_url_for_value(value) if visible else ("", "")


class ScopedChoicesMixin:
    """The choices of a relation field (select, raw id, many-to-many) are the rows the user sees
    in the admin of the related model, so a form offers, shows and accepts nothing of a project
    the user does not work in. Relations to models without an admin keep Django's choices."""

    def _scoped_choices(self, db_field, request, kwargs: dict) -> None:
        related_admin = self.admin_site._registry.get(db_field.related_model)
        if related_admin is None or "queryset" in kwargs:
            return
        kwargs["queryset"] = related_admin.get_queryset(request)
        if db_field.many_to_one and db_field.name in self.raw_id_fields:
            kwargs.setdefault(
                "widget",
                ScopedRawIdWidget(
                    db_field.remote_field,
                    self.admin_site,
                    using=kwargs.get("using"),
                    queryset=kwargs["queryset"],
                ),
            )

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        self._scoped_choices(db_field, request, kwargs)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        self._scoped_choices(db_field, request, kwargs)
        return super().formfield_for_manytomany(db_field, request, **kwargs)


class ProjectScopedAdmin(ScopedChoicesMixin, admin.ModelAdmin):
    """Staff see and choose only objects of projects where they are curator, engineer or admin."""

    project_path = "project"

    def staff_projects(self, request):
        return selectors.projects_for(request.user, roles=selectors.STAFF_ROLES)

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        lookup = "pk__in" if self.project_path == "" else f"{self.project_path}__in"
        return queryset.filter(**{lookup: self.staff_projects(request)})

    def get_list_filter(self, request):
        return [
            type("ProjectFilter", (ProjectFilter,), {"path": f})
            if isinstance(f, str) and (f == "project" or f.endswith("__project"))
            else f
            for f in super().get_list_filter(request)
        ]


def _membership_save(membership: Membership, changed: list[str]) -> None:
    """Save a membership from an admin form through the services, so the user's groups and staff
    status follow their roles (a direct save skipped that)."""
    if membership.pk and {"project", "user"} & set(changed):
        services.membership_remove(membership=Membership.objects.get(pk=membership.pk))
    saved = services.membership_set(
        project=membership.project, user=membership.user, role=membership.role
    )
    membership.pk = saved.pk


def _membership_delete(membership: Membership) -> None:
    services.membership_remove(membership=membership)


class MembershipInline(ScopedChoicesMixin, admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class GuidelineInline(ScopedChoicesMixin, admin.StackedInline):
    """A published version is read, never edited (annotations record which one they saw); a
    new one is published through the service, which numbers it."""

    model = Guideline
    extra = 0
    fields = ["version", "body", "created_by", "created_at"]
    readonly_fields = ["version", "created_by", "created_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Project)
class ProjectAdmin(ProjectScopedAdmin):
    project_path = ""
    list_display = ["name", "slug", "k_responses", "overlap", "lease_seconds", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline, GuidelineInline]

    def save_model(self, request, obj, form, change):
        settings = {name: form.cleaned_data[name] for name in PROJECT_SETTINGS}
        if change:
            services.project_update(project=obj, **settings)
            return
        obj.pk = services.project_create(**settings).pk
        obj.refresh_from_db()

    def save_formset(self, request, form, formset, change):
        if formset.model is Guideline:
            formset.save(commit=False)
            for guideline in formset.deleted_objects:
                guideline.delete()
            for guideline in formset.new_objects:
                published = services.guideline_publish(
                    project=form.instance, body=guideline.body, author=request.user
                )
                guideline.pk = published.pk
            return
        if formset.model is not Membership:
            return super().save_formset(request, form, formset, change)
        formset.save(commit=False)  # sorts the forms into new, changed and deleted; saves none
        for membership in formset.deleted_objects:
            _membership_delete(membership)
        for membership in formset.new_objects:
            _membership_save(membership, [])
        for membership, changed in formset.changed_objects:
            _membership_save(membership, changed)


@admin.register(Membership)
class MembershipAdmin(ProjectScopedAdmin):
    list_display = ["user", "project", "role", "created_at"]
    list_filter = ["role", "project"]
    search_fields = ["user__username", "project__name"]

    def save_model(self, request, obj, form, change):
        _membership_save(obj, form.changed_data if change else [])

    def delete_model(self, request, obj):
        _membership_delete(obj)

    def delete_queryset(self, request, queryset):
        for membership in queryset.select_related("user"):
            _membership_delete(membership)


@admin.register(Guideline)
class GuidelineAdmin(ProjectScopedAdmin):
    """Adding one publishes the project's next version; a published one is only read."""

    list_display = ["project", "version", "created_at", "created_by"]
    list_filter = ["project"]
    fields = ["project", "version", "body", "created_by", "created_at"]
    readonly_fields = ["version", "created_by", "created_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        published = services.guideline_publish(
            project=obj.project, body=obj.body, author=request.user
        )
        obj.pk = published.pk
        obj.refresh_from_db()


class ResponseInline(ScopedChoicesMixin, admin.TabularInline):
    model = Response
    extra = 0
    fields = ["text", "origin", "model_artifact", "generation"]
    readonly_fields = ["generation"]


def _service_errors(form: forms.ModelForm, error: ValidationError) -> None:
    """A service's refusal as the form's errors, on the fields it names that the form has."""
    for field, messages in error.message_dict.items():
        form.add_error(field if field in form.fields else None, messages)


def _prompt_item(cleaned: dict) -> dict:
    return {
        name: cleaned.get(name) for name in ("text", "messages", "tags", "language", "metadata")
    }


class PromptForm(forms.ModelForm):
    """Checked by the prompt service, as every write of a prompt is: its text, and no other
    prompt of the project with the same content (the database would refuse the save)."""

    def clean(self):
        cleaned = super().clean()
        project = cleaned.get("project") or (self.instance.project if self.instance.pk else None)
        if project is not None and not self.errors:
            probe = Prompt(pk=self.instance.pk, project=project)
            try:
                services.prompt_check(prompt=probe, item=_prompt_item(cleaned))
            except ValidationError as error:
                _service_errors(self, error)
        return cleaned


@admin.register(Prompt)
class PromptAdmin(ProjectScopedAdmin):
    form = PromptForm
    list_display = ["id", "short_text", "project", "source", "language", "created_at"]
    list_filter = ["project", "source", "language"]
    search_fields = ["text", "content_hash"]
    readonly_fields = ["content_hash", "created_at"]
    inlines = [ResponseInline]

    def get_readonly_fields(self, request, obj=None):
        # Its tasks and their candidates belong to its project: a prompt stays where it is.
        return ["project", *self.readonly_fields] if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        services.prompt_save(prompt=obj, item=_prompt_item(form.cleaned_data))

    @admin.display(description="Prompt")
    def short_text(self, obj: Prompt) -> str:
        return obj.display_text[:100]


@admin.register(Response)
class ResponseAdmin(ProjectScopedAdmin):
    project_path = "prompt__project"
    list_display = ["id", "short_text", "origin", "model_artifact", "created_at"]
    list_filter = ["origin", "prompt__project"]
    search_fields = ["text"]
    raw_id_fields = ["prompt"]

    @admin.display(description="Text")
    def short_text(self, obj: Response) -> str:
        return obj.text[:100]


TASK_SETTINGS = ["required", "status", "priority", "round", "is_gold", "gold_answer",
                 "instructions"]  # fmt: skip
TASK_IDENTITY = ["project", "kind", "prompt", "candidates"]


class TaskForm(forms.ModelForm):
    """Checked by the task services: a new task as task_create checks it (kind, candidates of
    its prompt, the prompt of its project), a changed one as task_update does."""

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            if self.instance.pk is None:
                services.task_check(
                    project=cleaned["project"],
                    kind=cleaned["kind"],
                    prompt=cleaned.get("prompt"),
                    candidates=list(cleaned.get("candidates") or []),
                )
            else:
                services.task_settings_check(
                    task=self.instance, required=cleaned["required"], status=cleaned["status"]
                )
        except ValidationError as error:
            _service_errors(self, error)
        return cleaned


@admin.register(Task)
class TaskAdmin(ProjectScopedAdmin):
    """A task is created as task_create makes one (open, nothing done); afterwards only its
    settings change: its judgments refer to its prompt and candidates, and `done` and
    `started` are kept by the leases and submissions."""

    form = TaskForm
    list_display = ["id", "project", "kind", "status", "done", "required", "is_gold", "round"]
    list_filter = ["project", "kind", "status", "is_gold", "round"]
    raw_id_fields = ["prompt"]
    filter_horizontal = ["candidates"]
    actions = ["mark_gold"]

    def get_fields(self, request, obj=None):
        return [*TASK_IDENTITY, *TASK_SETTINGS, "done", "started", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ["status", "done", "started", "created_at"]
        return [*TASK_IDENTITY, "done", "started", "created_at"]

    def save_model(self, request, obj, form, change):
        settings = {name: form.cleaned_data[name] for name in TASK_SETTINGS if name != "status"}
        if change:
            services.task_update(task=obj, status=form.cleaned_data["status"], **settings)
            return
        task = services.task_create(
            project=obj.project,
            kind=obj.kind,
            prompt=obj.prompt,
            candidates=list(form.cleaned_data.get("candidates") or []),
            **settings,
        )
        obj.pk = task.pk
        obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        # The candidates were set by the service; the form's own many-to-many save would set
        # them again (and, on a change, they are read-only).
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    @admin.action(description="Mark as gold (the newest approved judgment is the answer)")
    def mark_gold(self, request, queryset):
        from django.core.exceptions import ValidationError

        from annotation.quality import task_mark_gold

        marked = 0
        for task in queryset:
            try:
                task_mark_gold(task=task)
                marked += 1
            except ValidationError as error:
                self.message_user(request, " ".join(error.messages), level="warning")
        self.message_user(request, f"{marked} task(s) marked as gold.")


@admin.register(Assignment)
class AssignmentAdmin(ProjectScopedAdmin):
    project_path = "task__project"
    list_display = ["id", "task", "labeler", "state", "leased_at", "expires_at"]
    list_filter = ["state", "task__project"]
    raw_id_fields = ["task"]


@admin.register(Annotation)
class AnnotationAdmin(ProjectScopedAdmin):
    """Judgments are immutable here too: only the review fields can be changed."""

    project_path = "task__project"
    list_display = ["id", "task", "labeler", "kind", "review_status", "source", "created_at"]
    list_filter = ["task__project", "kind", "review_status", "source"]
    search_fields = ["rationale", "labeler__username"]
    fields = [
        "task",
        "labeler",
        "kind",
        "payload",
        "rationale",
        "shown_order",
        "time_spent_ms",
        "guideline_version",
        "supersedes",
        "source",
        "provenance",
        "created_at",
        "review_status",
        "review_note",
        "reviewed_by",
        "reviewed_at",
    ]

    actions = ["approve", "reject"]

    def get_readonly_fields(self, request, obj=None):
        return [f for f in self.fields if f not in {"review_status", "review_note"}]

    def _review(self, request, queryset, decision: str) -> None:
        for annotation in queryset:
            services.annotation_review(
                annotation=annotation, reviewer=request.user, decision=decision
            )
        self.message_user(request, f"{queryset.count()} annotation(s) {decision}.")

    @admin.action(description="Approve selected annotations")
    def approve(self, request, queryset):
        self._review(request, queryset, "approved")

    @admin.action(description="Reject selected annotations (they never enter a dataset)")
    def reject(self, request, queryset):
        self._review(request, queryset, "rejected")

    def has_add_permission(self, request) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        services.annotation_review(
            annotation=obj,
            reviewer=request.user,
            decision=form.cleaned_data["review_status"],
            note=form.cleaned_data.get("review_note", ""),
        )


class SnapshotForm(forms.ModelForm):
    format = forms.ChoiceField(
        choices=[("jsonl", "JSONL"), ("parquet", "Parquet"), ("hf", "datasets (load_from_disk)")]
    )

    class Meta:
        model = Snapshot
        fields = ["project", "kind", "format", "filters"]

    def clean_filters(self):
        from annotation.exports import filters_clean

        try:
            return filters_clean(self.cleaned_data.get("filters") or {})
        except ValidationError as error:
            raise ValidationError(
                [f"{k}: {' '.join(v)}" for k, v in error.message_dict.items()]
            ) from None


@admin.register(Snapshot)
class SnapshotAdmin(ContributedActionsMixin, ProjectScopedAdmin):  # training adds "Train on"
    form = SnapshotForm
    list_display = ["id", "project", "kind", "status", "row_count", "short_hash", "created_at"]
    list_filter = ["project", "kind", "status"]
    readonly_fields = [
        "status", "sha256", "path", "manifest", "row_count", "error", "created_by", "worker",
        "started_at", "heartbeat_at", "finished_at",
    ]  # fmt: skip
    actions = ["build_again"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:  # the add form is "build a snapshot": project, kind, format, filters
            return self.readonly_fields
        return ["project", "kind", "format", "filters", *self.readonly_fields]

    def save_model(self, request, obj, form, change):
        from django.contrib import messages

        from annotation.exports import snapshot_request

        if change:
            return
        built = snapshot_request(
            project=obj.project,
            kind=obj.kind,
            format=obj.format,
            filters=obj.filters,
            user=request.user,
        )
        if built.reused:
            self.message_user(request, _reused_message(built), level=messages.WARNING)
        else:
            self.message_user(request, f"Snapshot #{built.pk} queued.", level=messages.SUCCESS)
        obj.pk = built.pk
        obj.refresh_from_db()

    @admin.action(description="Build snapshot again from today's data")
    def build_again(self, request, queryset):
        from annotation.exports import snapshot_request

        built = [
            snapshot_request(
                project=snapshot.project,
                kind=snapshot.kind,
                format=snapshot.format,
                filters=snapshot.filters,
                user=request.user,
            )
            for snapshot in queryset
        ]
        new = {s.pk for s in built if not s.reused}
        # Two selected snapshots of one request make one build.
        reused = sorted({s.pk for s in built} - new)
        message = f"{len(new)} snapshot build(s) queued."
        if reused:
            message += (
                f" Already queued or building for the same request, reused: "
                f"{', '.join(f'#{pk}' for pk in reused)}."
            )
        self.message_user(request, message)

    @admin.display(description="sha256")
    def short_hash(self, obj: Snapshot) -> str:
        return obj.sha256[:12]


def _reused_message(snapshot: Snapshot) -> str:
    return (
        f"Snapshot #{snapshot.pk} of the same request is already "
        f"{snapshot.get_status_display().lower()}: reused it, nothing new was queued."
    )


class RecordAdmin(ProjectScopedAdmin):
    """A record of what happened (an import, a consensus version): read, never edited here."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted((counts or {}).items()) if n) or "—"


@admin.register(ImportBatch)
class ImportBatchAdmin(RecordAdmin):
    """Every import into a project (command line, API, admin), with what it wrote and the first
    bad rows it reported: the provenance curators look up when a judgment came from a file."""

    list_display = ["id", "file_name", "project", "format", "status", "written", "bad_rows",
                    "created_by", "created_at"]  # fmt: skip
    list_filter = ["project", "status", "format"]
    search_fields = ["file_name"]
    fields = ["project", "file_name", "format", "status", "written", "error_rows", "created_by",
              "created_at"]  # fmt: skip
    readonly_fields = fields

    @admin.display(description="counts")
    def written(self, obj: ImportBatch) -> str:
        return _counts_text(obj.counts)

    @admin.display(description="bad rows")
    def bad_rows(self, obj: ImportBatch) -> int:
        return len(obj.errors or [])

    @admin.display(description="bad rows (the first ones)")
    def error_rows(self, obj: ImportBatch):
        rows = [
            (e.get("line", "?"), e.get("field") or "-", e.get("message", ""))
            for e in obj.errors or []
        ]
        if not rows:
            return "—"
        return format_html_join("\n", "<div>line {}, field {}: {}</div>", rows)


@admin.register(Consensus)
class ConsensusAdmin(RecordAdmin):
    """The versions of a project's aggregated preferences; the scores themselves (one per
    response of every prompt) are read through the API, not listed here."""

    list_display = ["project", "version", "method", "weighted", "scored_prompts", "created_at"]
    list_filter = ["project", "method"]
    fields = ["project", "version", "method", "weighted", "scored_prompts", "summary",
              "created_at"]  # fmt: skip
    readonly_fields = fields

    @admin.display(description="prompts scored")
    def scored_prompts(self, obj: Consensus) -> int:
        return len(obj.scores or {})
