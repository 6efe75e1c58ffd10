from django.urls import path

from annotation import bulk_views, curation_views, import_views, snapshot_views, views

app_name = "annotation"

urlpatterns = [
    path("", views.home, name="home"),
    path("me/", views.my_stats, name="my_stats"),
    path("projects/<slug:slug>/next/", views.project_next, name="project_next"),
    path("tasks/<int:pk>/", views.task_detail, name="task"),
    path("tasks/<int:pk>/submit/", views.task_submit, name="task_submit"),
    path("tasks/<int:pk>/skip/", views.task_skip, name="task_skip"),
    path("tasks/<int:pk>/heartbeat/", views.task_heartbeat, name="task_heartbeat"),
    path("curate/<slug:slug>/", curation_views.curate, name="curate"),
    path("curate/<slug:slug>/tasks/", bulk_views.tasks_bulk, name="curate_tasks"),
    path(
        "curate/<slug:slug>/task-batches/<int:pk>/",
        bulk_views.task_batch,
        name="curate_task_batch",
    ),
    path("curate/<slug:slug>/snapshots/", snapshot_views.snapshot_list, name="curate_snapshots"),
    path(
        "curate/<slug:slug>/snapshots/<int:pk>/",
        snapshot_views.snapshot_detail,
        name="curate_snapshot",
    ),
    path(
        "curate/<slug:slug>/snapshots/<int:pk>/download/",
        snapshot_views.snapshot_download,
        name="curate_snapshot_download",
    ),
    path("curate/<slug:slug>/imports/", import_views.imports_upload, name="curate_imports"),
    path(
        "curate/<slug:slug>/import-jobs/<int:pk>/",
        import_views.import_job,
        name="curate_import_job",
    ),
    path(
        "curate/<slug:slug>/import-jobs/<int:pk>/rejects/",
        import_views.import_job_rejects,
        name="curate_import_rejects",
    ),
    path(
        "curate/<slug:slug>/annotations/<int:pk>/review/",
        curation_views.review,
        name="curate_review",
    ),
    path(
        "curate/<slug:slug>/annotations/<int:pk>/gold/",
        curation_views.mark_gold,
        name="curate_gold",
    ),
    path(
        "curate/<slug:slug>/consensus/",
        curation_views.consensus_compute,
        name="curate_consensus",
    ),
    path(
        "curate/<slug:slug>/labelers/<int:user_id>/resume/",
        curation_views.resume,
        name="curate_resume",
    ),
]
