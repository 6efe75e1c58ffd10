"""REST API, /api/v1/. Views parse input, call one service, and render; querysets are scoped."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response as ApiResponse

from annotation import access, gold, leasing, selectors, services
from annotation.errors import IdempotencyConflict, LabelerPaused, LeaseError
from annotation.models import Annotation, Assignment, Project, Prompt, Response, Role, Task


class JsonAnswer(DefaultContentNegotiation):
    """Answer JSON whatever the Accept header says: the only renderer these views have (the
    default negotiation parses the header on every request to end up with the same)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


# The labeling hot paths (lease, submit) speak JSON only: no form parsing, no browsable API.
JSON_ONLY = {
    "parser_classes": [JSONParser],
    "renderer_classes": [JSONRenderer],
    "content_negotiation_class": JsonAnswer,
}


def _drf_error(error: DjangoValidationError) -> ValidationError:
    return ValidationError(error.message_dict if hasattr(error, "error_dict") else error.messages)


def _conflict(error: LeaseError | IdempotencyConflict) -> ApiResponse:
    """409: the lease or the idempotency key says no; `code` tells a client which."""
    return ApiResponse({"detail": str(error), "code": error.code}, status=status.HTTP_409_CONFLICT)


class AllowListFilterMixin:
    """Query parameters are filters only from an allow-list, each value checked against its
    model field (type, choices, the 64-bit id range, no NUL); anything else is a 400 that
    names the parameter, never a database error."""

    filter_fields: dict[str, str] = {}
    always_allowed = {"limit", "offset", "format"}

    def check_query_params(self) -> None:
        params = self.request.query_params
        unknown = set(params) - set(self.filter_fields) - self.always_allowed
        if unknown:
            raise ValidationError(
                {
                    name: f"unknown parameter; allowed: {', '.join(sorted(self.filter_fields))}."
                    for name in sorted(unknown)
                }
            )
        for name in ("limit", "offset"):
            value = params.get(name)
            if value not in (None, "") and not (value.isdigit() and int(value) <= PAGE_BOUND):
                raise ValidationError(
                    {name: f"{value[:40]!r} is not a whole number up to {PAGE_BOUND}."}
                )

    def filter_queryset(self, queryset):
        self.check_query_params()
        for param, lookup in self.filter_fields.items():
            value = self.request.query_params.get(param)
            if value is not None and value != "":
                value = filter_value(queryset.model, param, lookup, value)
                queryset = queryset.filter(**{lookup: value})
        return queryset


# Offsets and limits past this are refused (their sum must stay a 64-bit integer in SQL).
PAGE_BOUND = 2**62
_INT64 = (-(2**63), 2**63 - 1)


def filter_field(model, lookup: str) -> models.Field:
    """The model field a filter lookup such as "task__project_id" ends on."""
    *path, last = lookup.split("__")
    for name in path:
        model = model._meta.get_field(name).related_model
    field = model._meta.get_field(last)
    while isinstance(field, models.ForeignKey):
        field = field.target_field
    return field


def filter_value(model, param: str, lookup: str, raw: str):
    """`raw` as the value of the field behind `param`; a 400 naming `param` if it is not one."""
    field = filter_field(model, lookup)
    shown = repr(raw[:40]) + ("…" if len(raw) > 40 else "")
    if "\x00" in raw:
        raise ValidationError({param: f"{shown} contains a NUL character."})
    try:
        value = field.to_python(raw)
    except DjangoValidationError:
        kind = "whole number" if isinstance(field, models.IntegerField) else "value"
        raise ValidationError({param: f"{shown} is not a {kind}."}) from None
    if isinstance(field, models.IntegerField) and not _INT64[0] <= value <= _INT64[1]:
        raise ValidationError({param: f"{shown} is outside the 64-bit integer range."})
    if field.choices:
        allowed = [str(choice) for choice, _ in field.flatchoices]
        if str(value) not in allowed:
            raise ValidationError({param: f"{shown} is not one of {', '.join(allowed)}."})
    return value


# --- Serializers ---------------------------------------------------------------------------


# Fields whose representation of a model attribute's value is the value itself (str for
# CharField and ChoiceField, int, bool, a JSON field's Python value): read with no call at all.
_AS_STORED = (
    serializers.CharField,
    serializers.IntegerField,
    serializers.BooleanField,
    serializers.ChoiceField,
    serializers.ReadOnlyField,
)
_NOT_AS_STORED = (serializers.MultipleChoiceField, serializers.FilePathField)


def _renderer(field: serializers.Field) -> tuple[Callable, bool]:
    """How `field` of a bound serializer reads and renders its value from an instance, exactly
    as DRF's `Serializer.to_representation` does, minus the per-instance field machinery:
    (reader, whether the reader takes the serializer as well as the instance)."""
    if isinstance(field, serializers.SerializerMethodField):
        method = field.method_name
        return (lambda serializer, instance: getattr(serializer, method)(instance)), True
    if isinstance(field, serializers.ManyRelatedField) or not field.source.isidentifier():
        # Shapes the fast path does not cover ("*", dotted sources, lists of ids): DRF's own.
        def read(instance):
            value = field.get_attribute(instance)
            return None if value is None else field.to_representation(value)

        return read, False
    if isinstance(field, serializers.PrimaryKeyRelatedField):
        return attrgetter(f"{field.source}_id"), False  # the id the row holds, no query
    plain_json = isinstance(field, serializers.JSONField) and not field.binary
    if plain_json or (isinstance(field, _AS_STORED) and not isinstance(field, _NOT_AS_STORED)):
        return attrgetter(field.source), False
    source, render = field.source, field.to_representation
    return (lambda instance: None if (v := getattr(instance, source)) is None else render(v)), False


# A ModelSerializer rendered from its declared fields, without DRF's per-instance walk. The
# fields are the one description of a resource: its input checks, its OpenAPI schema and its
# output all come from them. DRF builds a ModelSerializer's fields afresh for every instance it
# renders and reads each through `get_attribute` (~9 ms per lease on the 2-core machine, with
# the nested task and prompt); here a class works out once how each of its fields is read and
# rendered, and rendering an instance is a dict comprehension. tests/web/test_api_hot_paths.py
# checks the output against DRF's own rendering. (A comment, not a docstring: the schema would
# give it as the description of every resource.)
class RenderedSerializer(serializers.ModelSerializer):
    def to_representation(self, instance) -> dict:
        return {
            name: read(self, instance) if with_serializer else read(instance)
            for name, read, with_serializer in self._readers()
        }

    @classmethod
    def _readers(cls) -> list[tuple[str, Callable, bool]]:
        readers = cls.__dict__.get("_compiled")
        if readers is None:  # once per class (a race computes the same list twice)
            fields = cls().fields.items()
            readers = [(name, *_renderer(f)) for name, f in fields if not f.write_only]
            cls._compiled = readers
        return readers


class ProjectSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "slug",
            "description",
            "task_kinds",
            "k_responses",
            "overlap",
            "lease_seconds",
            "gold_rate",
            "gold_window",
            "gold_min_accuracy",
            "repeats_allowed",
            "label_config",
            "created_at",
            "role",
        ]
        read_only_fields = ["id", "created_at", "role"]

    def get_role(self, project: Project) -> str | None:
        return selectors.role_in(self.context["request"].user, project)


class PromptSerializer(RenderedSerializer):
    class Meta:
        model = Prompt
        fields = [
            "id",
            "project",
            "text",
            "messages",
            "source",
            "tags",
            "language",
            "metadata",
            "content_hash",
            "created_at",
        ]
        read_only_fields = ["id", "source", "content_hash", "created_at"]


class PromptCreateSerializer(serializers.Serializer):
    project = serializers.IntegerField()
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    messages = serializers.JSONField(required=False)
    tags = serializers.ListField(child=serializers.CharField(), required=False)
    language = serializers.CharField(required=False, allow_blank=True)
    metadata = serializers.DictField(required=False)


class CandidateSerializer(RenderedSerializer):
    class Meta:
        model = Response
        fields = ["id", "text", "origin"]


class TaskSerializer(RenderedSerializer):
    prompt = PromptSerializer(read_only=True)
    candidates = serializers.SerializerMethodField(
        help_text="Candidates in the order shown to the caller (shuffled per labeler and task)."
    )

    class Meta:
        model = Task
        fields = [
            "id",
            "project",
            "kind",
            "prompt",
            "candidates",
            "required",
            "done",
            "status",
            "round",
            "created_at",
        ]

    @extend_schema_field(CandidateSerializer(many=True))
    def get_candidates(self, task: Task) -> list[dict]:
        """Candidates in the order shown to the caller (`shown_order` in the context: shuffled
        per labeler and task), or by id when there is no lease to follow."""
        by_id = {r.pk: r for r in task.candidate_list()}
        order = self.context.get("shown_order") or sorted(by_id)
        return [_CANDIDATE.to_representation(by_id[i]) for i in order if i in by_id]


_CANDIDATE = CandidateSerializer()  # needs no context: one instance renders them all


class LeaseSerializer(RenderedSerializer):
    task = serializers.SerializerMethodField()

    class Meta:
        model = Assignment
        fields = ["id", "state", "leased_at", "expires_at", "shown_order", "task"]

    @extend_schema_field(TaskSerializer)
    def get_task(self, assignment: Assignment) -> dict:
        """The task, its candidates in the order this lease shows them."""
        task = TaskSerializer(context={**self.context, "shown_order": assignment.shown_order})
        return task.to_representation(assignment.task)


class AnnotationSerializer(RenderedSerializer):
    class Meta:
        model = Annotation
        fields = [
            "id",
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
            "review_status",
            "created_at",
        ]
        read_only_fields = fields


class AnnotationSubmitSerializer(serializers.Serializer):
    payload = serializers.JSONField()
    rationale = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    time_spent_ms = serializers.IntegerField(required=False, min_value=0)


# --- Views ---------------------------------------------------------------------------------


class ProjectViewSet(AllowListFilterMixin, viewsets.ModelViewSet):
    serializer_class = ProjectSerializer
    filter_fields = {"slug": "slug"}
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self):
        return selectors.projects_for(self.request.user).order_by("id")

    def perform_create(self, serializer):
        if not access.may_create_project(self.request.user):
            raise PermissionDenied("Only a curator, engineer or admin of a project can start one.")
        data = serializer.validated_data
        try:
            serializer.instance = services.project_create(owner=self.request.user, **data)
        except DjangoValidationError as error:
            raise _drf_error(error) from None

    def perform_update(self, serializer):
        access.role_require(self.request.user, serializer.instance, Role.ADMIN)
        try:
            services.project_update(project=serializer.instance, **serializer.validated_data)
        except DjangoValidationError as error:
            raise _drf_error(error) from None

    @extend_schema(
        request=None,
        responses={
            200: LeaseSerializer,
            204: OpenApiResponse(description="No task is left for you."),
        },
    )
    @action(detail=True, methods=["post"], url_path="tasks/next", **JSON_ONLY)
    def next_task(self, request: Request, pk=None) -> ApiResponse:
        """Lease the next task to the caller (or return the live lease they already hold)."""
        self.check_query_params()
        project = selectors.project_get(request.user, pk=pk)
        try:
            assignment = leasing.next_task_for(project=project, labeler=request.user)
        except LabelerPaused as error:
            return _conflict(error)
        if assignment is None:
            return ApiResponse(status=status.HTTP_204_NO_CONTENT)
        return ApiResponse(LeaseSerializer(assignment).data)

    @extend_schema(
        request=None,
        responses={
            204: OpenApiResponse(description="The labeler is resumed."),
            404: OpenApiResponse(description="No such member of this project."),
        },
    )
    @action(
        detail=True,
        methods=["post"],
        url_path=r"labelers/(?P<user_id>[0-9]{1,18})/resume",
        **JSON_ONLY,
    )
    def labeler_resume(self, request: Request, pk=None, user_id=None) -> ApiResponse:
        """Resume a paused labeler of the project (curators and above); their gold accuracy is
        measured afresh from now."""
        self.check_query_params()
        project = selectors.project_get(request.user, pk=pk)
        access.role_require(request.user, project, Role.CURATOR)
        membership = get_object_or_404(project.memberships.select_related("user"), user_id=user_id)
        gold.labeler_resume(project=project, user=membership.user)
        return ApiResponse(status=status.HTTP_204_NO_CONTENT)


class PromptViewSet(
    AllowListFilterMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = PromptSerializer
    filter_fields = {"project": "project_id", "source": "source"}

    def get_queryset(self):
        return Prompt.objects.filter(project__in=selectors.projects_for(self.request.user))

    @extend_schema(
        request=PromptCreateSerializer(many=True),
        responses={201: PromptSerializer(many=True)},
        description="Create one prompt (an object) or many (a list). Duplicates are skipped.",
    )
    def create(self, request: Request, *args, **kwargs) -> ApiResponse:
        items = request.data if isinstance(request.data, list) else [request.data]
        if not items:
            raise ValidationError({"items": "the list is empty."})
        project_ids = {item.get("project") for item in items if isinstance(item, dict)}
        if len(project_ids) != 1 or None in project_ids:
            raise ValidationError({"project": "every item needs the same project id."})
        project_id = project_ids.pop()
        if not isinstance(project_id, int):
            raise ValidationError({"project": "expected a project id."})
        project = selectors.projects_for(request.user).filter(pk=project_id).first()
        if project is None:
            raise NotFound("No such project.")
        access.role_require(request.user, project, Role.CURATOR)
        try:
            created, duplicates = services.prompts_create(
                project=project, items=items, author=request.user
            )
        except DjangoValidationError as error:
            raise _drf_error(error) from None
        data = PromptSerializer(created, many=True).data
        return ApiResponse(
            data, status=status.HTTP_201_CREATED, headers={"X-Duplicates-Skipped": str(duplicates)}
        )


class TaskViewSet(AllowListFilterMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = TaskSerializer
    filter_fields = {"project": "project_id", "status": "status", "kind": "kind"}

    def get_queryset(self):
        queryset = selectors.tasks_for(self.request.user)
        if self.action in ("annotations", "lease", "skip"):
            # These actions only need the task row itself (the scoping check and its kind);
            # the prompt and candidates would be loaded for nothing on the hot submit path.
            return queryset
        return queryset.select_related("prompt").prefetch_related("candidates")

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if self.kwargs.get("pk"):
            shown = (
                Assignment.objects.filter(task_id=self.kwargs["pk"], labeler=self.request.user)
                .values_list("shown_order", flat=True)
                .first()
            )
            context["shown_order"] = shown
        return context

    @extend_schema(
        methods=["post"],
        request=AnnotationSubmitSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="A retry with the same key returns the first result.",
            )
        ],
        responses={201: AnnotationSerializer, 200: AnnotationSerializer},
    )
    @extend_schema(methods=["get"], responses={200: AnnotationSerializer(many=True)})
    # Unpaginated (a task has a handful of judgments): say so, or the schema promises a page.
    @action(detail=True, methods=["get", "post"], pagination_class=None, **JSON_ONLY)
    def annotations(self, request: Request, pk=None) -> ApiResponse:
        if request.method == "GET":
            task = self.get_object()
            rows = selectors.annotations_for(request.user).filter(task=task)
            return ApiResponse(AnnotationSerializer(rows, many=True).data)
        self.check_query_params()
        task = selectors.task_get(request.user, pk=pk)
        body = AnnotationSubmitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            annotation, created = services.annotation_submit(
                task=task,
                labeler=request.user,
                payload=body.validated_data["payload"],
                rationale=body.validated_data.get("rationale", ""),
                time_spent_ms=body.validated_data.get("time_spent_ms", 0),
                idempotency_key=request.headers.get("Idempotency-Key", ""),
            )
        except DjangoValidationError as error:
            raise _drf_error(error) from None
        except (LeaseError, IdempotencyConflict) as error:
            return _conflict(error)
        return ApiResponse(
            AnnotationSerializer(annotation).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(request=None, responses={200: LeaseSerializer})
    @action(detail=True, methods=["post"])
    def lease(self, request: Request, pk=None) -> ApiResponse:
        """Heartbeat: extend the caller's lease on this task."""
        assignment = self._assignment(pk)
        try:
            assignment = leasing.lease_renew(assignment=assignment)
        except LeaseError as error:
            return _conflict(error)
        return ApiResponse(LeaseSerializer(assignment).data)

    @extend_schema(request=None, responses={200: LeaseSerializer})
    @action(detail=True, methods=["post"])
    def skip(self, request: Request, pk=None) -> ApiResponse:
        assignment = self._assignment(pk)
        try:
            assignment = leasing.assignment_skip(
                assignment=assignment, reason=str(request.data.get("reason", ""))
            )
        except LeaseError as error:
            return _conflict(error)
        except DjangoValidationError as error:
            raise _drf_error(error) from None
        return ApiResponse(LeaseSerializer(assignment).data)

    def _assignment(self, pk) -> Assignment:
        self.get_object()  # 404 outside the caller's projects
        return get_object_or_404(Assignment, task_id=pk, labeler=self.request.user)


class AnnotationViewSet(AllowListFilterMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = AnnotationSerializer
    filter_fields = {
        "project": "task__project_id",
        "task": "task_id",
        "kind": "kind",
        "review_status": "review_status",
    }

    def get_queryset(self):
        return selectors.annotations_for(self.request.user).order_by("id")
