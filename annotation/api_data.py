"""REST API for data curation: imports, dataset snapshots and quality figures (/api/v1/)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from django.core.exceptions import ValidationError as DjangoValidationError
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
from annotation.imports import import_file
from annotation.imports.limits import SNIFF_BYTES, UploadRejected, check_size, check_type
from annotation.models import ConsensusJob, ImportBatch, Role, Snapshot, SnapshotKind, TaskBatch

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
            "created_at",
        ]
        read_only_fields = fields


class ImportCreateSerializer(serializers.Serializer):
    project = serializers.IntegerField()
    file = serializers.FileField()
    format = serializers.ChoiceField(choices=IMPORT_FORMATS, default="auto")
    skip_invalid = serializers.BooleanField(default=False)
    dry_run = serializers.BooleanField(default=False)


class ImportReportSerializer(serializers.Serializer):
    """What an import did (201), would do (200: dry run) or refused (400: every bad row)."""

    batch = serializers.IntegerField(allow_null=True)
    format = serializers.CharField()
    written = serializers.BooleanField()
    counts = serializers.DictField(child=serializers.IntegerField())
    errors = serializers.ListField(child=serializers.DictField())
    error_count = serializers.IntegerField()


class ImportViewSet(
    AllowListFilterMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Import a file (multipart `file`) into a project: the same service as `import_data`.
    201 with the counts; 400 naming line and field of every bad row (nothing written)."""

    serializer_class = ImportBatchSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    filter_fields = {"project": "project_id"}

    def get_queryset(self):
        projects = access.projects_at_least(self.request.user, IMPORT_ROLE)
        return ImportBatch.objects.filter(project__in=projects).order_by("-id")

    @extend_schema(
        request=ImportCreateSerializer,
        responses={
            201: ImportReportSerializer,
            200: ImportReportSerializer,
            400: OpenApiResponse(
                description="Bad rows: the import report, its errors naming line and field "
                "(nothing written). Bad form fields: {field: [messages]}."
            ),
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
            upload = data["file"]
            check_size(upload.name, upload.size)
            upload.seek(0)
            check_type(upload.name, upload.read(SNIFF_BYTES))
            upload.seek(0)
        except UploadRejected as error:
            return ApiResponse({"detail": error.message}, status=error.status)
        suffix = Path(upload.name).suffix[:16]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"upload{suffix}"
            with path.open("wb") as fh:
                for chunk in upload.chunks():
                    fh.write(chunk)
            report = import_file(
                project=project,
                path=path,
                format=data["format"],
                skip_invalid=data["skip_invalid"],
                dry_run=data["dry_run"],
                user=request.user,
                file_name=upload.name,
            )
        body = {
            "batch": report.batch_id,
            "format": report.format,
            "written": report.written,
            "counts": report.counts,
            "errors": report.errors,
            "error_count": report.error_count,
        }
        if not report.written and report.error_count:
            return ApiResponse(body, status=status.HTTP_400_BAD_REQUEST)
        return ApiResponse(body, status=status.HTTP_201_CREATED if report.written else 200)


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
