from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from annotation import api as annotation_api
from annotation import api_data as annotation_api_data
from training import api as training_api

router = DefaultRouter()
router.register("projects", annotation_api.ProjectViewSet, basename="project")
router.register("prompts", annotation_api.PromptViewSet, basename="prompt")
router.register("tasks", annotation_api.TaskViewSet, basename="task")
router.register("annotations", annotation_api.AnnotationViewSet, basename="annotation")
router.register("snapshots", annotation_api_data.SnapshotViewSet, basename="snapshot")
router.register("imports", annotation_api_data.ImportViewSet, basename="import")
router.register("import-jobs", annotation_api_data.ImportJobViewSet, basename="import-job")
router.register("quality", annotation_api_data.QualityViewSet, basename="quality")
router.register("task-batches", annotation_api_data.TaskBatchViewSet, basename="task-batch")
router.register("consensus", annotation_api_data.ConsensusJobViewSet, basename="consensus")
router.register("leaderboard", training_api.LeaderboardViewSet, basename="leaderboard")
router.register("rounds", training_api.RoundViewSet, basename="round")

# A body over UPLOAD_MAX_BYTES is answered 413 with the limit named (core/middleware.py).
handler400 = "core.middleware.bad_request"

admin.site.site_header = "RLHF platform"
admin.site.site_title = "RLHF platform"
admin.site.index_title = "Curation and training"

# Every log-in form, these two included, goes through one failure limit (core/login.py).
urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("training/demo/", include("training.demo.urls")),
    path("training/", include("training.urls")),
    path("", include("annotation.urls")),
]
