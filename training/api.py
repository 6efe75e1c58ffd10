"""REST API of the training side (/api/v1/): a project's arena leaderboard and its labeling
rounds."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.exceptions import PermissionDenied as ApiPermissionDenied
from rest_framework.response import Response as ApiResponse

from annotation import access, selectors
from annotation.access import projects_at_least
from annotation.api import AllowListFilterMixin, _drf_error
from annotation.models import Role
from annotation.rules import text_refusal
from training import leaderboard, rounds
from training.models import ModelArtifact, Round


class LeaderboardViewSet(viewsets.ViewSet):
    """Bradley–Terry scores of a project's models from its arena battles, with 95% bootstrap
    intervals, battles and the win-rate matrix (see training/leaderboard.py). Curators,
    engineers and admins of the project: labelers never learn which model wrote what."""

    lookup_value_regex = r"[0-9]{1,18}"

    @extend_schema(
        parameters=[
            OpenApiParameter("id", int, OpenApiParameter.PATH, description="The project's id."),
            OpenApiParameter("tag", str, description="Only battles on prompts with this tag."),
        ],
        responses={200: dict},
    )
    def retrieve(self, request, pk=None):
        project = selectors.projects_for(request.user).filter(pk=int(pk)).first()
        if project is None:
            raise NotFound("No such project.")
        access.role_require(request.user, project, Role.CURATOR)
        unknown = set(request.query_params) - {"tag", "format"}
        if unknown:
            raise ValidationError({name: "unknown parameter; allowed: tag." for name in unknown})
        tag = request.query_params.get("tag", "").strip()
        if (refusal := text_refusal(tag)) is not None or len(tag) > 200:
            raise ValidationError({"tag": refusal or "at most 200 characters."})
        return ApiResponse(leaderboard.leaderboard(project, tag))


# Rounds name the models that wrote the candidates: never a labeler's to read.
ROUND_ROLE = Role.CURATOR


class RoundSerializer(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField()
    runs = serializers.SerializerMethodField(help_text="Runs trained on a snapshot of the round.")

    class Meta:
        model = Round
        fields = ["id", "project", "number", "policy", "kind", "budget", "source", "active", "k",
                  "temperature", "top_p", "max_new_tokens", "seed", "retries", "status",
                  "selection", "counts", "progress", "generation_jobs", "snapshots", "runs",
                  "error", "created_at", "finished_at"]  # fmt: skip
        read_only_fields = fields

    def get_progress(self, job: Round) -> dict:
        return rounds.round_progress(job)

    def get_runs(self, job: Round) -> list[int]:
        return sorted(job.runs().values_list("id", flat=True))


class RoundStartSerializer(serializers.Serializer):
    policy = serializers.IntegerField(help_text="The policy artifact the round samples from.")
    budget = serializers.IntegerField(help_text="Prompts to ask at most (the labeling budget).")
    source = serializers.DictField(
        required=False, default=dict,
        help_text="Which prompts: `batch` (an import batch id), `tags`, `snapshot` (a ready "
        "prompts snapshot id); empty: every prompt. Imported documents never.",
    )  # fmt: skip
    generators = serializers.ListField(
        child=serializers.IntegerField(), required=False, default=list,
        help_text="Other models whose samples share each task (e.g. the SFT model).",
    )  # fmt: skip
    active = serializers.BooleanField(default=False)
    reward_models = serializers.ListField(
        child=serializers.IntegerField(), required=False, default=list
    )
    k = serializers.IntegerField(required=False, allow_null=True, default=None)
    temperature = serializers.FloatField(default=1.0)
    top_p = serializers.FloatField(default=0.95)
    max_new_tokens = serializers.IntegerField(default=64, min_value=1, max_value=4096)
    seed = serializers.IntegerField(required=False, allow_null=True, default=None)
    retries = serializers.IntegerField(default=2)


class RoundViewSet(
    AllowListFilterMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Labeling rounds of the caller's projects (curators and above). POST starts the next round
    from a policy (engineers and admins): one job that selects prompts not judged yet, samples
    K distinct candidates and creates the tasks; 202, or 200 with the same request's round still
    queued or running. The round number is assigned."""

    serializer_class = RoundSerializer
    filter_fields = {"project": "project_id", "status": "status"}

    def get_queryset(self):
        projects = projects_at_least(self.request.user, ROUND_ROLE)
        return Round.objects.filter(project__in=projects).order_by("-id")

    @extend_schema(
        request=RoundStartSerializer,
        responses={
            202: RoundSerializer,
            200: RoundSerializer,
            400: OpenApiResponse(description="{field: [messages]}, e.g. `budget`."),
            403: OpenApiResponse(description="Not an engineer (or above) of the project."),
        },
    )
    def create(self, request, *args, **kwargs):
        params = RoundStartSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        visible = ModelArtifact.objects.filter(
            project__in=projects_at_least(request.user, ROUND_ROLE)
        )
        policy = visible.filter(pk=data.pop("policy")).first()
        if policy is None:
            raise NotFound("No such model.")
        found = {}
        for field in ("generators", "reward_models"):
            wanted = data.pop(field)
            found[field] = list(visible.filter(pk__in=wanted))
            if len(found[field]) != len(set(wanted)):
                raise _drf_error(DjangoValidationError({field: "no such model."}))
        try:
            job = rounds.round_start(policy=policy, user=request.user, **found, **data)
        except DjangoPermissionDenied as error:
            raise ApiPermissionDenied(str(error)) from None
        except DjangoValidationError as error:
            raise _drf_error(error) from None
        answer = status.HTTP_200_OK if job.reused else status.HTTP_202_ACCEPTED
        return ApiResponse(RoundSerializer(job).data, status=answer)
