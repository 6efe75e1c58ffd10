"""Admin pages for curators, engineers and admins, scoped to the projects they belong to."""

from __future__ import annotations

import functools

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import ForeignKeyRawIdWidget
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from annotation import access, gold, services
from annotation.imports.errors import place, place_of
from annotation.models import (
    Annotation,
    Assignment,
    Consensus,
    ConsensusJob,
    Guideline,
    ImportBatch,
    ImportJob,
    Membership,
    Project,
    Prompt,
    Response,
    Role,
    Snapshot,
    Task,
    TaskBatch,
)
from core.admin_actions import ContributedActionsMixin

PROJECT_SETTINGS = ["name", "slug", "description", "task_kinds", "k_responses", "overlap",
                    "lease_seconds", "gold_rate", "gold_window", "gold_min_accuracy",
                    "repeats_allowed", "arena_margin", "label_config",
                    "playground_labelers"]  # fmt: skip


class ProjectFilter(admin.SimpleListFilter):
    """A project filter that offers only the projects whose rows the user may see here.

    Django's default related-field filter lists every project, which would leak their names.
    """

    title = "project"
    parameter_name = "project"
    path = "project"

    def lookups(self, request, model_admin):
        minimum = getattr(model_admin, "roles", {}).get("view", Role.CURATOR)
        projects = access.projects_at_least(request.user, minimum)
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


def users_seen_by(user) -> QuerySet:
    """The users a staff member may pick in a form: members of the projects they work in as
    curator or above (every user: superusers). Nobody else's name reaches their page."""
    users = get_user_model().objects.all()
    if user.is_superuser:
        return users
    projects = access.projects_at_least(user, Role.CURATOR)
    return users.filter(pk__in=Membership.objects.filter(project__in=projects).values("user"))


class ScopedChoicesMixin:
    """The choices of a relation field (select, raw id, many-to-many) are the rows the user sees
    in the admin of the related model, so a form offers, shows and accepts nothing of a project
    the user does not work in; a user field offers only members of the user's projects.
    Relations to other models without an admin keep Django's choices."""

    def _scoped_choices(self, db_field, request, kwargs: dict) -> None:
        if "queryset" in kwargs:
            return
        if db_field.related_model is get_user_model():
            kwargs["queryset"] = users_seen_by(request.user)
        else:
            related_admin = self.admin_site._registry.get(db_field.related_model)
            if related_admin is None:
                return
            kwargs["queryset"] = self.related_choices(db_field, request, related_admin)
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

    def related_choices(self, db_field, request, related_admin) -> QuerySet:
        return related_admin.get_queryset(request)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        self._scoped_choices(db_field, request, kwargs)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        self._scoped_choices(db_field, request, kwargs)
        return super().formfield_for_manytomany(db_field, request, **kwargs)


# What each admin permission needs unless an admin says otherwise: curators work with the rows
# of their projects, admins delete them. An admin leaves a permission out to close it for all.
DEFAULT_ROLES = {"view": Role.CURATOR, "add": Role.CURATOR, "change": Role.CURATOR,
                 "delete": Role.ADMIN}  # fmt: skip
# Django's own permissions, which the role groups (annotation/roles.py) must also open.
MODEL_PERMISSIONS = ("view", "add", "change", "delete")


def _project_at(obj, path: str):
    """The project of `obj` along `project_path` ("" : obj is the project); None if unset."""
    for name in path.split("__") if path else ():
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _action_narrowed(func, permissions: tuple[str, ...]):
    """An action that acts only on the selected rows whose project gives the user the role of
    the action's permission; the rest are named in a warning and left alone."""

    @functools.wraps(func)
    def action(modeladmin, request, queryset):
        allowed = modeladmin.rows_allowed(request, permissions, queryset)
        left_out = queryset.exclude(pk__in=allowed.values("pk")).count()
        if left_out:
            needed = " or ".join(
                sorted({modeladmin.roles[p] for p in permissions if p in modeladmin.roles})
            )
            modeladmin.message_user(
                request,
                f"{left_out} selected row(s) left alone: this needs the role {needed or 'none'} "
                "in their project.",
                messages.WARNING,
            )
        if not allowed.exists():
            return None
        return func(modeladmin, request, allowed)

    return action


class RoleScopedAdmin(ScopedChoicesMixin, admin.ModelAdmin):
    """The one way the admin asks who may do what: each admin names, per permission, the least
    role (annotation.access's ladder) that opens it in a row's project, in `roles`.

    From that table: the changelist, change pages, raw-id lookups, pop-ups, autocomplete and
    every relation's choices show the rows of projects where the user holds the "view" role;
    adding, changing and deleting a row needs the role in *its* project (a form's project
    choices are the projects where the user holds it, and the saved row is checked again);
    an action runs only on the selected rows whose project gives the role of its
    `allowed_permissions` ("train" for starting training work). The role groups' model
    permissions are required as well. Superusers hold every role."""

    project_path = "project"
    roles: dict[str, str] = DEFAULT_ROLES

    # --- rows ---------------------------------------------------------------------------

    def unowned_rows(self, request, permission: str) -> Q | None:
        """Rows without a project (legacy) that a user holding the role somewhere may reach;
        none unless an admin says so."""
        return None

    def rows_allowed(self, request, permissions, queryset: QuerySet) -> QuerySet:
        """The rows of `queryset` on which the user holds the role of one of `permissions`."""
        roles = [self.roles[p] for p in permissions if p in self.roles]
        if not roles:
            return queryset.none()
        if request.user.is_superuser:
            return queryset
        lookup = "pk__in" if self.project_path == "" else f"{self.project_path}__in"
        condition = Q(pk__in=[])
        for permission in permissions:
            if permission not in self.roles:
                continue
            projects = access.projects_at_least(request.user, self.roles[permission])
            condition |= Q(**{lookup: projects})
            unowned = self.unowned_rows(request, permission)
            if unowned is not None and projects.exists():
                condition |= unowned
        return queryset.filter(condition)

    def get_queryset(self, request):
        return self.rows_allowed(request, ("view",), super().get_queryset(request))

    # --- permissions ----------------------------------------------------------------------

    def role_allows(self, request, permission: str, obj=None) -> bool:
        if permission not in self.roles:
            return False
        user = request.user
        if user.is_superuser:
            return True
        if obj is None:
            return access.projects_at_least(user, self.roles[permission]).exists()
        if obj.pk is None:
            project = _project_at(obj, self.project_path)
            return project is not None and access.has_role(user, project, self.roles[permission])
        rows = self.model._default_manager.filter(pk=obj.pk)
        return self.rows_allowed(request, (permission,), rows).exists()

    def has_view_permission(self, request, obj=None) -> bool:
        return self.role_allows(request, "view", obj) and super().has_view_permission(request, obj)

    def has_add_permission(self, request) -> bool:
        return self.role_allows(request, "add") and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None) -> bool:
        return self.role_allows(request, "change", obj) and super().has_change_permission(
            request, obj
        )

    def has_delete_permission(self, request, obj=None) -> bool:
        return self.role_allows(request, "delete", obj) and super().has_delete_permission(
            request, obj
        )

    def has_train_permission(self, request, obj=None) -> bool:
        """Start training work (a run, a generation) from a row: not a model permission."""
        return self.role_allows(request, "train", obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        return {
            name: (
                _action_narrowed(func, tuple(getattr(func, "allowed_permissions", ("change",)))),
                name,
                description,
            )
            for name, (func, name, description) in actions.items()
        }

    # --- forms ----------------------------------------------------------------------------

    def related_choices(self, db_field, request, related_admin) -> QuerySet:
        """The field that places a row in its project offers only what lies in projects where
        the user may write (the "add" role; "change" where nothing is added here)."""
        choices = super().related_choices(db_field, request, related_admin)
        owner, _, rest = self.project_path.partition("__")
        write = self.roles.get("add") or self.roles.get("change")
        if db_field.name != owner or request.user.is_superuser:
            return choices
        if write is None:
            return choices.none()
        projects = access.projects_at_least(request.user, write)
        return choices.filter(**{f"{rest}__in" if rest else "pk__in": projects})

    def save_form(self, request, form, change):
        """The row as saved lies in a project where the user holds the role to write it (the
        form's choices say so; this is the check behind them, for every admin)."""
        obj = super().save_form(request, form, change)
        if self.project_path == "" and not change:
            return obj  # a new project: has_add_permission decided
        permission = "change" if change else "add"
        project = _project_at(obj, self.project_path)
        user = request.user
        if not user.is_superuser and (
            project is None
            or permission not in self.roles
            or not access.has_role(user, project, self.roles[permission])
        ):
            raise PermissionDenied(f"You may not {permission} this in that project.")
        return obj

    def get_list_filter(self, request):
        return [
            type("ProjectFilter", (ProjectFilter,), {"path": f})
            if isinstance(f, str) and (f == "project" or f.endswith("__project"))
            else f
            for f in super().get_list_filter(request)
        ]


class RoleScopedInline(ScopedChoicesMixin):
    """An inline's rows follow the role the user holds in the parent's project (`roles`, as
    RoleScopedAdmin's; `parent_project_path` leads from the parent to its project)."""

    roles: dict[str, str] = DEFAULT_ROLES
    parent_project_path = "project"

    def _role_allows(self, request, permission: str, obj) -> bool:
        if permission not in self.roles:
            return False
        user = request.user
        if user.is_superuser:
            return True
        project = _project_at(obj, self.parent_project_path) if obj is not None else None
        if project is None:  # the parent is being added: its project is checked on save
            return access.projects_at_least(user, self.roles[permission]).exists()
        return access.has_role(user, project, self.roles[permission])

    def has_view_permission(self, request, obj=None) -> bool:
        return self._role_allows(request, "view", obj) and super().has_view_permission(request, obj)

    def has_add_permission(self, request, obj) -> bool:
        return self._role_allows(request, "add", obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None) -> bool:
        return self._role_allows(request, "change", obj) and super().has_change_permission(
            request, obj
        )

    def has_delete_permission(self, request, obj=None) -> bool:
        return self._role_allows(request, "delete", obj) and super().has_delete_permission(
            request, obj
        )


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


# Who belongs to a project, and as what, is its admins' to decide (curators and engineers read
# it): a curator cannot make themselves admin, nor a labeler an engineer.
MEMBERSHIP_ROLES = {"view": Role.CURATOR, "add": Role.ADMIN, "change": Role.ADMIN,
                    "delete": Role.ADMIN}  # fmt: skip


# Set by annotation.gold alone (a failed gold check pauses, a curator's resume clears).
MEMBERSHIP_PAUSE = ["paused", "paused_reason", "paused_at", "gold_window_from"]


class MembershipInline(RoleScopedInline, admin.TabularInline):
    model = Membership
    extra = 0
    roles = MEMBERSHIP_ROLES
    parent_project_path = ""
    fields = ["user", "role", "paused", "paused_reason"]
    readonly_fields = ["paused", "paused_reason"]

    def get_autocomplete_fields(self, request):
        # The user search is the user admin's, open to superusers alone; the others choose
        # among the members of their projects (users_seen_by).
        return ["user"] if request.user.is_superuser else []


class GuidelineInline(RoleScopedInline, admin.StackedInline):
    """A published version is read, never edited (annotations record which one they saw); a
    new one is published through the service, which numbers it."""

    model = Guideline
    extra = 0
    parent_project_path = ""
    fields = ["version", "body", "created_by", "created_at"]
    readonly_fields = ["version", "created_by", "created_at"]
    roles = {"view": Role.CURATOR, "add": Role.CURATOR, "delete": Role.ADMIN}
    parent_project_path = ""


@admin.register(Project)
class ProjectAdmin(RoleScopedAdmin):
    """A project's settings and members are its admins' (curators and engineers read them); who
    may start a new one (and become its admin) is access.may_create_project's answer, as in
    the API: a curator or above of any project."""

    project_path = ""
    roles = {"view": Role.CURATOR, "add": Role.CURATOR, "change": Role.ADMIN, "delete": Role.ADMIN}

    def has_add_permission(self, request) -> bool:
        return access.may_create_project(request.user) and super().has_add_permission(request)

    list_display = ["name", "slug", "k_responses", "overlap", "lease_seconds", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline, GuidelineInline]

    def save_model(self, request, obj, form, change):
        settings = {name: form.cleaned_data[name] for name in PROJECT_SETTINGS}
        if change:
            services.project_update(project=obj, **settings)
            return
        owner = None if request.user.is_superuser else request.user
        obj.pk = services.project_create(owner=owner, **settings).pk
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
class MembershipAdmin(RoleScopedAdmin):
    roles = MEMBERSHIP_ROLES
    list_display = ["user", "project", "role", "paused", "created_at"]
    list_filter = ["role", "project", "paused"]
    search_fields = ["user__username", "project__name"]
    readonly_fields = MEMBERSHIP_PAUSE
    actions = ["resume"]

    def save_model(self, request, obj, form, change):
        _membership_save(obj, form.changed_data if change else [])

    @admin.action(description="Resume the selected paused labelers", permissions=["change"])
    def resume(self, request, queryset):
        resumed = 0
        for membership in queryset.filter(paused=True).select_related("project", "user"):
            gold.labeler_resume(project=membership.project, user=membership.user)
            resumed += 1
        self.message_user(request, f"{resumed} labeler(s) resumed.")

    def delete_model(self, request, obj):
        _membership_delete(obj)

    def delete_queryset(self, request, queryset):
        for membership in queryset.select_related("user"):
            _membership_delete(membership)


@admin.register(Guideline)
class GuidelineAdmin(RoleScopedAdmin):
    """Adding one publishes the project's next version; a published one is only read."""

    roles = {"view": Role.CURATOR, "add": Role.CURATOR, "delete": Role.ADMIN}

    list_display = ["project", "version", "created_at", "created_by"]
    list_filter = ["project"]
    fields = ["project", "version", "body", "created_by", "created_at"]
    readonly_fields = ["version", "created_by", "created_at"]

    def save_model(self, request, obj, form, change):
        published = services.guideline_publish(
            project=obj.project, body=obj.body, author=request.user
        )
        obj.pk = published.pk
        obj.refresh_from_db()


# A response is what judgments refer to: written once, by the service (its author the user who
# adds it), never edited; removed by the project's admins.
RESPONSE_ROLES = {"view": Role.CURATOR, "add": Role.CURATOR, "delete": Role.ADMIN}


class ResponseForm(forms.ModelForm):
    """Checked by the response service, as every write of a response is."""

    def clean(self):
        cleaned = super().clean()
        prompt = cleaned.get("prompt") or getattr(self.instance, "prompt", None)
        if self.instance.pk is None and prompt is not None and not self.errors:
            try:
                services.response_check(prompt=prompt, **_response_fields(cleaned))
            except ValidationError as error:
                _service_errors(self, error)
        return cleaned


def _response_fields(cleaned: dict) -> dict:
    return {name: cleaned.get(name) for name in ("text", "origin", "model_artifact")}


def _response_create(request, prompt: Prompt, response: Response) -> Response:
    """The response a form built, written by the service with the user as its author."""
    return services.response_create(
        prompt=prompt,
        text=response.text,
        origin=response.origin,
        model_artifact=response.model_artifact,
        author=request.user,
    )


class ResponseInline(RoleScopedInline, admin.TabularInline):
    model = Response
    form = ResponseForm
    extra = 0
    fields = ["text", "origin", "model_artifact", "generation"]
    readonly_fields = ["generation"]
    roles = RESPONSE_ROLES


def _service_errors(form: forms.ModelForm, error: ValidationError) -> None:
    """A service's refusal as the form's errors, on the fields it names that the form has."""
    for field, found in error.message_dict.items():
        form.add_error(field if field in form.fields else None, found)


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
class PromptAdmin(RoleScopedAdmin):
    form = PromptForm
    list_display = ["id", "short_text", "project", "source", "language", "created_at"]
    list_filter = ["project", "source", "language"]
    search_fields = ["text", "content_hash"]
    readonly_fields = ["content_hash", "created_by", "created_at"]
    inlines = [ResponseInline]

    def get_readonly_fields(self, request, obj=None):
        # Its tasks and their candidates belong to its project: a prompt stays where it is.
        return ["project", *self.readonly_fields] if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        services.prompt_save(prompt=obj, item=_prompt_item(form.cleaned_data))

    def save_formset(self, request, form, formset, change):
        if formset.model is not Response:
            return super().save_formset(request, form, formset, change)
        formset.save(commit=False)  # sorts the forms; saves none
        for response in formset.deleted_objects:
            response.delete()
        for response in formset.new_objects:
            response.pk = _response_create(request, form.instance, response).pk

    @admin.display(description="Prompt")
    def short_text(self, obj: Prompt) -> str:
        return obj.display_text[:100]


@admin.register(Response)
class ResponseAdmin(RoleScopedAdmin):
    project_path = "prompt__project"
    roles = RESPONSE_ROLES
    form = ResponseForm
    list_display = ["id", "short_text", "origin", "model_artifact", "created_at"]
    list_filter = ["origin", "prompt__project"]
    search_fields = ["text"]
    raw_id_fields = ["prompt"]
    fields = ["prompt", "text", "origin", "model_artifact", "generation", "metadata",
              "created_by", "created_at"]  # fmt: skip
    readonly_fields = ["generation", "metadata", "created_by", "created_at"]

    def save_model(self, request, obj, form, change):
        obj.pk = _response_create(request, obj.prompt, obj).pk
        obj.refresh_from_db()

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
            if cleaned.get("is_gold"):
                ids = (
                    [r.pk for r in cleaned.get("candidates") or []]
                    if self.instance.pk is None
                    else self.instance.candidate_ids()
                )
                new = self.instance.pk is None
                kind = cleaned["kind"] if new else self.instance.kind
                project = cleaned["project"] if new else self.instance.project
                cleaned["gold_answer"] = gold.gold_answer_check(
                    kind=kind,
                    answer=cleaned.get("gold_answer"),
                    candidate_ids=ids,
                    labels=project.labels,
                )
        except ValidationError as error:
            _service_errors(self, error)
        return cleaned


@admin.register(Task)
class TaskAdmin(RoleScopedAdmin):
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

    @admin.action(
        description="Mark as gold (the newest approved judgment is the answer)",
        permissions=["change"],
    )
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
class AssignmentAdmin(RoleScopedAdmin):
    """Leases are made, renewed and ended by leasing alone (annotation/leasing.py): a lease
    added or edited here would skip its rules (one per labeler, the project's overlap, the
    judgment it belongs to). Curators read them; the project's admin deletes them only with
    their task or prompt (Django refuses a delete that would take a row the user may not
    delete, so without it no prompt with leases could be deleted, by a superuser neither)."""

    project_path = "task__project"
    roles = {"view": Role.CURATOR, "delete": Role.ADMIN}
    list_display = ["id", "task", "labeler", "state", "leased_at", "expires_at"]
    list_filter = ["state", "task__project"]
    raw_id_fields = ["task"]


@admin.register(Annotation)
class AnnotationAdmin(RoleScopedAdmin):
    """Judgments are immutable here too: only the review fields can be changed (by curators of
    the project; a judgment is never added here)."""

    project_path = "task__project"
    roles = {"view": Role.CURATOR, "change": Role.CURATOR, "delete": Role.ADMIN}
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

    @admin.action(description="Approve selected annotations", permissions=["change"])
    def approve(self, request, queryset):
        self._review(request, queryset, "approved")

    @admin.action(
        description="Reject selected annotations (they never enter a dataset)",
        permissions=["change"],
    )
    def reject(self, request, queryset):
        self._review(request, queryset, "rejected")

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
class SnapshotAdmin(ContributedActionsMixin, RoleScopedAdmin):  # training adds "Train on"
    roles = {**DEFAULT_ROLES, "train": Role.ENGINEER}
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
        return ["project", "kind", "format", "filters", "page", *self.readonly_fields]

    @admin.display(description="Its page")
    def page(self, obj: Snapshot) -> str:
        """Where a curator reads it: the manifest laid out, a preview, the downloads."""
        url = reverse("annotation:curate_snapshot", args=[obj.project.slug, obj.pk])
        return format_html('<a href="{}" id="snapshot-page-link">Preview and download</a>', url)

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

    @admin.action(description="Build snapshot again from today's data", permissions=["add"])
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


class RecordAdmin(RoleScopedAdmin):
    """A record of what happened (an import, a consensus version): read, never edited here."""

    roles = {"view": Role.CURATOR}


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
    fields = ["project", "file_name", "format", "status", "written", "notice_rows", "error_rows",
              "created_by", "created_at"]  # fmt: skip
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
            (place(place_of(e)), e.get("field") or "-", e.get("message", ""))
            for e in obj.errors or []
        ]
        if not rows:
            return "—"
        return format_html_join("\n", "<div>{}, field {}: {}</div>", rows)

    @admin.display(description="notices (imported as less, or skipped)")
    def notice_rows(self, obj: ImportBatch):
        notices = obj.notices or {}
        counts = [(reason, n) for reason, n in sorted((notices.get("counts") or {}).items())]
        if not counts:
            return "—"
        examples = [
            (e.get("reason", ""), place(place_of(e)), e.get("field") or "-", e.get("message", ""))
            for e in notices.get("examples") or []
        ]
        return format_html_join("\n", "<div>{}: {}</div>", counts) + format_html_join(
            "\n", "<div>e.g. {} at {}, field {}: {}</div>", examples
        )


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


# The job rows' lifecycle fields, as every job kind has them (core.models.Job).
JOB_FIELDS = ["error", "worker", "started_at", "heartbeat_at", "finished_at", "created_by",
              "created_at"]  # fmt: skip


class JobRecordAdmin(RecordAdmin):
    """A job's row (core.models.Job): read, never edited here."""

    @admin.display(description="error")
    def short_error(self, obj) -> str:
        return (obj.error[:120] + "…") if len(obj.error) > 120 else (obj.error or "—")


@admin.register(TaskBatch)
class TaskBatchAdmin(JobRecordAdmin):
    """Tasks created in bulk (the curate page, the API, `manage.py tasks_create`): what each
    request asked for, how far it got and what it did. Requested there, never here."""

    list_display = ["id", "project", "kind", "status", "progress", "created", "short_error",
                    "created_by", "created_at"]  # fmt: skip
    list_filter = ["project", "kind", "status"]
    fields = ["project", "kind", "selection", "required", "priority", "round", "instructions",
              "status", "progress", "done_counts", *JOB_FIELDS]  # fmt: skip
    readonly_fields = fields

    @admin.display(description="progress")
    def progress(self, obj: TaskBatch) -> str:
        return f"{obj.prompts_done} of {obj.prompts_total} prompts ({obj.percent}%)"

    @admin.display(description="tasks created")
    def created(self, obj: TaskBatch) -> int:
        return (obj.counts or {}).get("created", 0)

    @admin.display(description="counts")
    def done_counts(self, obj: TaskBatch) -> str:
        return _counts_text({k: v for k, v in (obj.counts or {}).items() if isinstance(v, int)})


@admin.register(ConsensusJob)
class ConsensusJobAdmin(JobRecordAdmin):
    """Consensus computations (the curate page, the API): each request, its outcome and the
    version it wrote. Requested there, never here."""

    list_display = ["id", "project", "weighted", "status", "consensus", "short_error",
                    "created_by", "created_at"]  # fmt: skip
    list_filter = ["project", "status", "weighted"]
    fields = ["project", "weighted", "status", "consensus", *JOB_FIELDS]
    readonly_fields = fields


@admin.register(ImportJob)
class ImportJobAdmin(JobRecordAdmin):
    """Files uploaded to import (the curate page, the API): each upload, how far its import
    got, and its report. Uploaded there, never here; `manage.py import_data` makes none."""

    list_display = ["id", "file_name", "project", "format", "status", "progress", "short_error",
                    "created_by", "created_at"]  # fmt: skip
    list_filter = ["project", "status"]
    search_fields = ["file_name"]
    fields = ["project", "file_name", "format", "skip_invalid", "dry_run", "size", "sha256",
              "status", "progress", "report_counts", "report_notices", "report_errors",
              "import_batch", *JOB_FIELDS]  # fmt: skip
    readonly_fields = fields

    @admin.display(description="import batch written")
    def import_batch(self, obj: ImportJob) -> str:
        batch = ImportBatch.objects.filter(job=obj.pk).first()
        return f"#{batch.pk}" if batch else "—"

    @admin.display(description="progress")
    def progress(self, obj: ImportJob) -> str:
        total = f" of {obj.records_total}" if obj.records_total is not None else ""
        stage = f" ({obj.get_stage_display().lower()})" if obj.stage else ""
        return f"{obj.records_read}{total} records{stage}"

    @admin.display(description="counts")
    def report_counts(self, obj: ImportJob) -> str:
        return _counts_text((obj.report or {}).get("counts"))

    @admin.display(description="notices by reason")
    def report_notices(self, obj: ImportJob) -> str:
        return _counts_text((obj.report or {}).get("notices"))

    @admin.display(description="bad rows (the first ones)")
    def report_errors(self, obj: ImportJob):
        # Shown as the batch page shows them (a refused file wrote no batch to show them on).
        errors = ImportBatch(errors=(obj.report or {}).get("errors") or [])
        return ImportBatchAdmin.error_rows(self, errors)
