"""REST API for data curation: imports, dataset snapshots and quality figures (/api/v1/)."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import NotFound
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response as ApiResponse

from annotation import access, bulk, quality, selectors
from annotation.api import AllowListFilterMixin, _drf_error
from annotation.exports import FORMATS as SNAPSHOT_FORMATS
from annotation.exports import snapshot_request
from annotation.imports import FORMATS as IMPORT_FORMATS
from annotation.imports.jobs import import_request, upload_check
from annotation.imports.limits import UploadRejected, check_size
from annotation.models import (
    ConsensusJob,
    ImportBatch,
    ImportJob,
    Role,
    Snapshot,
    SnapshotKind,
    TaskBatch,
)

# Snapshots, imports, task batches and consensus are curators' work (and so engineers' and
# admins', see access).
SNAPSHOT_ROLE = IMPORT_ROLE = TASK_BATCH_ROLE = CONSENSUS_ROLE = Role.CURATOR


def _project_for(user, pk, minimum: str):
    """The project when the user holds `minimum` or above in it; 404 when they cannot see it."""
    project = selectors.projects_for(user).filter(pk=pk).first()
    if project is None:
        raise NotFound("No such project.")
    access.role_require(user, project, minimum)  # DRF answers its PermissionDenied with 403
    return project


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = Snapshot
        fields = ["id", "project", "kind", "format", "filters", "status", "sha256", "path",
                  "manifest", "row_count", "error", "created_at", "finished_at"]  # fmt: skip
        read_only_fields = fields


class SnapshotCreateSerializer(serializers.Serializer):
    project = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=SnapshotKind.choices)
    format = serializers.ChoiceField(choices=SNAPSHOT_FORMATS, default="jsonl")
    filters = serializers.DictField(required=False, default=dict)


class SnapshotViewSet(
    AllowListFilterMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Dataset snapshots of the projects where the caller is curator, engineer or admin. POST
    queues a build (202), or answers with the snapshot of the same request (project, kind,
    format, filters) that is still queued or building (200); poll the snapshot until `status`
    is ready or failed."""

    serializer_class = SnapshotSerializer
    filter_fields = {"project": "project_id", "kind": "kind", "status": "status"}

    def get_queryset(self):
        projects = access.projects_at_least(self.request.user, SNAPSHOT_ROLE)
        return Snapshot.objects.filter(project__in=projects).order_by("-id")

    @extend_schema(
        request=SnapshotCreateSerializer,
        responses={202: SnapshotSerializer, 200: SnapshotSerializer},
    )
    def create(self, request, *args, **kwargs):
        params = SnapshotCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        project = _project_for(request.user, data["project"], SNAPSHOT_ROLE)
        try:
            snapshot = snapshot_request(
                project=project,
                kind=data["kind"],
                format=data["format"],
                filters=data["filters"],
                user=request.user,
            )
        except DjangoValidationError as error:
            raise _drf_error(error) from None
        answer = status.HTTP_200_OK if snapshot.reused else status.HTTP_202_ACCEPTED
        return ApiResponse(SnapshotSerializer(snapshot).data, status=answer)


class ImportBatchSerializer(serializers.ModelSerializer):
    class Meta:
        model = ImportBatch
        fields = [
            "id",
            "project",
            "file_name",
            "format",
            "status",
            "counts",
            "errors",
            "job",
            "created_at",
        ]
        read_only_fields = fields


class ImportCreateSerializer(serializers.Serializer):
    project = serializers.IntegerField()
    file = serializers.FileField()
    format = serializers.ChoiceField(choices=IMPORT_FORMATS, default="auto")
    skip_invalid = serializers.BooleanField(default=False)
    dry_run = serializers.BooleanField(default=False)


class ImportJobSerializer(serializers.ModelSerializer):
    batch = serializers.SerializerMethodField(
        help_text="The import batch the job wrote (null until then, and for a dry run)."
    )
    stage = serializers.CharField(
        read_only=True,
        help_text="`checking` every record (all or nothing), then `writing`; empty until it "
        "starts. Kept once finished: where it ended.",
    )
    percent = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="Of the write, once the check counted."
    )
    report = serializers.JSONField(
        read_only=True,
        help_text="Once finished: `format` (detected), `counts`, `notices` ({reason: count} "
        "of records skipped or imported as less), `errors` (the first bad rows: line, field, "
        "message), `error_count`, `written`, `batch_id`.",
    )

    class Meta:
        model = ImportJob
        fields = ["id", "project", "file_name", "format", "skip_invalid", "dry_run", "size",
                  "status", "stage", "records_read", "records_total", "percent", "report",
                  "batch", "error", "created_at", "started_at", "finished_at"]  # fmt: skip
        read_only_fields = fields

    def get_batch(self, job: ImportJob) -> int | None:
        return (job.report or {}).get("batch_id")


class ImportViewSet(
    AllowListFilterMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Import a file (multipart `file`) into a project: the same service as `import_data`, run
    by a worker. POST stores the file and answers 202 with its import job (200: the same file
    and options still queued or running); poll `/api/v1/import-jobs/{id}/` until `status` is
    done or failed, then read its `report`. GET lists the import batches written."""

    serializer_class = ImportBatchSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    filter_fields = {"project": "project_id"}

    def get_queryset(self):
        projects = access.projects_at_least(self.request.user, IMPORT_ROLE)
        return ImportBatch.objects.filter(project__in=projects).order_by("-id")

    @extend_schema(
        request=ImportCreateSerializer,
        responses={
            202: ImportJobSerializer,
            200: ImportJobSerializer,
            400: OpenApiResponse(description="Bad form fields: {field: [messages]}."),
            403: OpenApiResponse(description="Not a curator (or above) of the project."),
            413: OpenApiResponse(description="The file is over IMPORT_MAX_BYTES."),
            415: OpenApiResponse(description="Not an accepted type (jsonl, json, csv, parquet)."),
        },
    )
    def create(self, request, *args, **kwargs):
        try:
            # Before the body is read: an oversized upload is refused without spooling it.
            length = request.META.get("CONTENT_LENGTH")
            check_size("The upload", int(length) if length and length.isdigit() else None)
            params = ImportCreateSerializer(data=request.data)
            params.is_valid(raise_exception=True)
            data = params.validated_data
            project = _project_for(request.user, data["project"], IMPORT_ROLE)
            upload_check(data["file"])
        except UploadRejected as error:
            return ApiResponse({"detail": error.message}, status=error.status)
        try:
            job = import_request(
                project=project,
                upload=data["file"],
                format=data["format"],
                skip_invalid=data["skip_invalid"],
                dry_run=data["dry_run"],
                user=request.user,
            )
        except DjangoValidationError as error:
            raise _drf_error(error) from None
        answer = status.HTTP_200_OK if job.reused else status.HTTP_202_ACCEPTED
        where = {"Location": reverse("import-job-detail", args=[job.pk])}
        return ApiResponse(ImportJobSerializer(job).data, status=answer, headers=where)


class ImportJobViewSet(
    AllowListFilterMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Import jobs of the projects where the caller is curator, engineer or admin (made by
    POST /api/v1/imports/): `status`, the progress (`stage`, `records_read` of
    `records_total`) while it runs, and its `report` once finished."""

    serializer_class = ImportJobSerializer
    filter_fields = {"project": "project_id", "status": "status"}

    def get_queryset(self):
        projects = access.projects_at_least(self.request.user, IMPORT_ROLE)
        return ImportJob.objects.filter(project__in=projects).order_by("-id")


class QualityViewSet(viewsets.ViewSet):
    """Agreement and diversity figures of a project (curators, engineers, admins)."""

    @extend_schema(
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)], responses={200: dict}
    )
    def retrieve(self, request, pk=None):
        project = _project_for(request.user, pk, SNAPSHOT_ROLE)
        agreement = quality.agreement_report(project)
        agreement["labelers"] = {str(k): v for k, v in agreement["labelers"].items()}
        return ApiResponse({"agreement": agreement, "diversity": quality.diversity_report(project)})


class TaskBatchSerializer(serializers.ModelSerializer):
    class Meta:
        model = TaskBatch
        fields = ["id", "project", "kind", "selection", "required", "priority", "round",
                  "instructions", "status", "prompts_total", "prompts_done", "percent", "counts",
                  "error", "created_at", "finished_at"]  # fmt: skip
        read_only_fields = fields

    percent = serializers.IntegerField(read_only=True)


class TaskBatchCreateSerializer(serializers.Serializer):
    project = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=bulk.BULK_KINDS)
    selection = serializers.DictField(
        help_text="Which prompts; all criteria given must hold: `batch` (an import batch id), "
        "`tags` (prompts with every one), `snapshot` (a ready prompts snapshot id), "
        "`without_demonstrations` (N: prompts with fewer than N demonstrations yet)."
    )
    required = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="Labelers per task; the project's overlap if unset.",
    )
    priority = serializers.IntegerField(default=0)
    round = serializers.IntegerField(default=1)
    instructions = serializers.CharField(
        default="", allow_blank=True, trim_whitespace=False, help_text="Shown with each task."
    )


class TaskBatchViewSet(
    AllowListFilterMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Tasks created at scale (curators, engineers, admins of the project): one kind of task
    (demonstration, rank, compare, rate) for every prompt of a selection. POST queues a batch
    (202), or answers with the same request's batch still queued or running (200); poll it
    until `status` is done or failed. Idempotent: a task of the same prompt, kind, round and
    candidates is never created twice (`counts.already_there`); a prompt with too few
    responses for the kind is skipped and counted (`counts.skipped_too_few_responses`). Rank
    tasks take the prompt's latest K (the project's `k_responses`) responses; compare tasks
    every pair of them; rate tasks each of them."""

    serializer_class = TaskBatchSerializer
    filter_fields = {"project": "project_id", "kind": "kind", "status": "status"}

    def get_queryset(self):
        projects = access.projects_at_least(self.request.user, TASK_BATCH_ROLE)
        return TaskBatch.objects.filter(project__in=projects).order_by("-id")

    @extend_schema(
        request=TaskBatchCreateSerializer,
        responses={
            202: TaskBatchSerializer,
            200: TaskBatchSerializer,
            400: OpenApiResponse(description="{field: [messages]}, e.g. `selection.batch`."),
            403: OpenApiResponse(description="Not a curator (or above) of the project."),
        },
    )
    def create(self, request, *args, **kwargs):
        params = TaskBatchCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        project = _project_for(request.user, data.pop("project"), TASK_BATCH_ROLE)
        try:
            batch = bulk.task_batch_request(project=project, user=request.user, **data)
        except DjangoValidationError as error:
            raise _drf_error(error) from None
        answer = status.HTTP_200_OK if batch.reused else status.HTTP_202_ACCEPTED
        return ApiResponse(TaskBatchSerializer(batch).data, status=answer)


class ConsensusJobSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(
        source="consensus.version",
        allow_null=True,
        read_only=True,
        help_text="The consensus version the job wrote (null until it is done).",
    )

    class Meta:
        model = ConsensusJob
        fields = ["id", "project", "weighted", "status", "version", "error", "created_at",
                  "finished_at"]  # fmt: skip
        read_only_fields = fields


class ConsensusCreateSerializer(serializers.Serializer):
    project = serializers.IntegerField()
    weighted = serializers.BooleanField(
        default=False,
        help_text="Weight each labeler's votes by their agreement with consensus.",
    )


class ConsensusJobViewSet(
    AllowListFilterMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Consensus computations of the projects where the caller is curator, engineer or admin.
    POST queues one (202), or answers with the same request (project, weighted) still queued or
    running (200); poll the job until `status` is done (then `version` is the new consensus
    version, which `aggregate=bradley_terry` snapshots use) or failed."""

    serializer_class = ConsensusJobSerializer
    filter_fields = {"project": "project_id", "status": "status"}

    def get_queryset(self):
        projects = access.projects_at_least(self.request.user, CONSENSUS_ROLE)
        return (
            ConsensusJob.objects.filter(project__in=projects)
            .select_related("consensus")
            .order_by("-id")
        )

    @extend_schema(
        request=ConsensusCreateSerializer,
        responses={202: ConsensusJobSerializer, 200: ConsensusJobSerializer},
    )
    def create(self, request, *args, **kwargs):
        from annotation.consensus import consensus_request

        params = ConsensusCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        project = _project_for(request.user, data["project"], CONSENSUS_ROLE)
        job = consensus_request(project=project, weighted=data["weighted"], user=request.user)
        answer = status.HTTP_200_OK if job.reused else status.HTTP_202_ACCEPTED
        return ApiResponse(ConsensusJobSerializer(job).data, status=answer)
