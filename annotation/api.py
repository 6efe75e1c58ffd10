"""REST API, /api/v1/. Views parse input, call one service, and render; querysets are scoped."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response as ApiResponse

from annotation import selectors, services
from annotation.errors import IdempotencyConflict, LeaseError
from annotation.models import Annotation, Assignment, Project, Prompt, Response, Role, Task

CURATING_ROLES = (Role.CURATOR, Role.ADMIN)


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


class AllowListFilterMixin:
    """Query parameters are filters only from an allow-list; anything else is a 400."""

    filter_fields: dict[str, str] = {}
    always_allowed = {"limit", "offset", "format"}

    def check_query_params(self) -> None:
        unknown = set(self.request.query_params) - set(self.filter_fields) - self.always_allowed
        if unknown:
            raise ValidationError(
                {
                    name: f"unknown parameter; allowed: {', '.join(sorted(self.filter_fields))}."
                    for name in sorted(unknown)
                }
            )

    def filter_queryset(self, queryset):
        self.check_query_params()
        for param, lookup in self.filter_fields.items():
            value = self.request.query_params.get(param)
            if value is not None and value != "":
                queryset = queryset.filter(**{lookup: value})
        return queryset


# --- Rendering -----------------------------------------------------------------------------
# The serializers below declare the fields (the input checks and the OpenAPI schema); their
# output is built by these plain functions, a few microseconds each instead of DRF's
# field-by-field walk (which rebuilt every ModelSerializer's fields per instance: ~9 ms per
# lease on the 2-core machine). tests/web/test_api.py and the schemathesis run check the output
# against the schema the serializers describe.

_DATETIME = serializers.DateTimeField()


def _datetime(value) -> str | None:
    return _DATETIME.to_representation(value)


def prompt_data(prompt: Prompt) -> dict:
    return {
        "id": prompt.pk,
        "project": prompt.project_id,
        "text": prompt.text,
        "messages": prompt.messages,
        "source": prompt.source,
        "tags": prompt.tags,
        "language": prompt.language,
        "metadata": prompt.metadata,
        "content_hash": prompt.content_hash,
        "created_at": _datetime(prompt.created_at),
    }


def candidate_data(response: Response) -> dict:
    return {"id": response.pk, "text": response.text, "origin": response.origin}


def task_data(task: Task, shown_order: list[int] | None = None) -> dict:
    """A task with its candidates in the order shown to the caller (shuffled per labeler and
    task), or by id when there is no lease to follow."""
    by_id = {r.pk: r for r in task.candidates.all()}
    order = shown_order or sorted(by_id)
    return {
        "id": task.pk,
        "project": task.project_id,
        "kind": task.kind,
        "prompt": prompt_data(task.prompt) if task.prompt_id is not None else None,
        "candidates": [candidate_data(by_id[i]) for i in order if i in by_id],
        "required": task.required,
        "done": task.done,
        "status": task.status,
        "round": task.round,
        "created_at": _datetime(task.created_at),
    }


def lease_data(assignment: Assignment) -> dict:
    return {
        "id": assignment.pk,
        "state": assignment.state,
        "leased_at": _datetime(assignment.leased_at),
        "expires_at": _datetime(assignment.expires_at),
        "shown_order": assignment.shown_order,
        "task": task_data(assignment.task, assignment.shown_order),
    }


def annotation_data(annotation: Annotation) -> dict:
    return {
        "id": annotation.pk,
        "task": annotation.task_id,
        "labeler": annotation.labeler_id,
        "kind": annotation.kind,
        "payload": annotation.payload,
        "rationale": annotation.rationale,
        "shown_order": annotation.shown_order,
        "time_spent_ms": annotation.time_spent_ms,
        "guideline_version": annotation.guideline_version,
        "supersedes": annotation.supersedes_id,
        "source": annotation.source,
        "review_status": annotation.review_status,
        "created_at": _datetime(annotation.created_at),
    }


# --- Serializers ---------------------------------------------------------------------------


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
            "created_at",
            "role",
        ]
        read_only_fields = ["id", "created_at", "role"]

    def get_role(self, project: Project) -> str | None:
        return selectors.role_in(self.context["request"].user, project)


class PromptSerializer(serializers.ModelSerializer):
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

    def to_representation(self, prompt: Prompt) -> dict:
        return prompt_data(prompt)


class PromptCreateSerializer(serializers.Serializer):
    project = serializers.IntegerField()
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    messages = serializers.JSONField(required=False)
    tags = serializers.ListField(child=serializers.CharField(), required=False)
    language = serializers.CharField(required=False, allow_blank=True)
    metadata = serializers.DictField(required=False)


class CandidateSerializer(serializers.ModelSerializer):
    class Meta:
        model = Response
        fields = ["id", "text", "origin"]

    def to_representation(self, response: Response) -> dict:
        return candidate_data(response)


class TaskSerializer(serializers.ModelSerializer):
    prompt = PromptSerializer(read_only=True)
    candidates = serializers.SerializerMethodField()

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

    def get_candidates(self, task: Task) -> list[dict]:
        """Candidates in the order shown to the caller (shuffled per labeler and task)."""
        return task_data(task, self.context.get("shown_order"))["candidates"]

    def to_representation(self, task: Task) -> dict:
        return task_data(task, self.context.get("shown_order"))


class LeaseSerializer(serializers.ModelSerializer):
    task = serializers.SerializerMethodField()

    class Meta:
        model = Assignment
        fields = ["id", "state", "leased_at", "expires_at", "shown_order", "task"]

    def get_task(self, assignment: Assignment) -> dict:
        return task_data(assignment.task, assignment.shown_order)

    def to_representation(self, assignment: Assignment) -> dict:
        return lease_data(assignment)


class AnnotationSerializer(serializers.ModelSerializer):
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

    def to_representation(self, annotation: Annotation) -> dict:
        return annotation_data(annotation)


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
        if not (self.request.user.is_staff or self.request.user.is_superuser):
            raise PermissionDenied("Only staff can create projects.")
        data = serializer.validated_data
        try:
            serializer.instance = services.project_create(owner=self.request.user, **data)
        except DjangoValidationError as error:
            raise _drf_error(error) from None

    def perform_update(self, serializer):
        if selectors.role_in(self.request.user, serializer.instance) != Role.ADMIN:
            raise PermissionDenied("Only a project admin can change its settings.")
        serializer.save()

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
        assignment = services.next_task_for(project=project, labeler=request.user)
        if assignment is None:
            return ApiResponse(status=status.HTTP_204_NO_CONTENT)
        return ApiResponse(lease_data(assignment))


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
        if selectors.role_in(request.user, project) not in CURATING_ROLES:
            raise PermissionDenied("Only curators and admins of the project add prompts.")
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
            return ApiResponse(
                {"detail": str(error), "code": error.code}, status=status.HTTP_409_CONFLICT
            )
        return ApiResponse(
            annotation_data(annotation),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(request=None, responses={200: LeaseSerializer})
    @action(detail=True, methods=["post"])
    def lease(self, request: Request, pk=None) -> ApiResponse:
        """Heartbeat: extend the caller's lease on this task."""
        assignment = self._assignment(pk)
        try:
            assignment = services.lease_renew(assignment=assignment)
        except LeaseError as error:
            return ApiResponse(
                {"detail": str(error), "code": error.code}, status=status.HTTP_409_CONFLICT
            )
        return ApiResponse(LeaseSerializer(assignment, context={"request": request}).data)

    @extend_schema(request=None, responses={200: LeaseSerializer})
    @action(detail=True, methods=["post"])
    def skip(self, request: Request, pk=None) -> ApiResponse:
        assignment = self._assignment(pk)
        try:
            assignment = services.assignment_skip(
                assignment=assignment, reason=str(request.data.get("reason", ""))
            )
        except LeaseError as error:
            return ApiResponse(
                {"detail": str(error), "code": error.code}, status=status.HTTP_409_CONFLICT
            )
        return ApiResponse(LeaseSerializer(assignment, context={"request": request}).data)

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
