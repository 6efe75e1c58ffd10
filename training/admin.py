from __future__ import annotations

from django.contrib import admin

from annotation import selectors
from training.models import ModelArtifact, TrainingRun


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "stage", "status", "step", "total_steps", "device", "created_at"]
    list_filter = ["stage", "status"]
    readonly_fields = ["heartbeat_at", "started_at", "finished_at", "worker", "device"]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(
            project__in=selectors.projects_for(request.user, roles=selectors.STAFF_ROLES)
        )


@admin.register(ModelArtifact)
class ModelArtifactAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "stage", "parent", "created_at"]
    list_filter = ["stage"]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(
            run__project__in=selectors.projects_for(request.user, roles=selectors.STAFF_ROLES)
        )
