"""REST API of the arena: a project's leaderboard (curators and above), /api/v1/leaderboard/."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response as ApiResponse

from annotation import access, selectors
from annotation.models import Role
from annotation.rules import text_refusal
from training import leaderboard


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
