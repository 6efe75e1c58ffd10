from django.urls import path

from training import arena_views, playground_views, views

app_name = "training"

urlpatterns = [
    path("runs/<int:pk>/", views.run_page, name="run"),
    path("runs/<int:pk>/live/", views.run_live, name="run_live"),
    path("runs/<int:pk>/cancel/", views.run_action, {"action": "cancel"}, name="run_cancel"),
    path("runs/<int:pk>/resume/", views.run_action, {"action": "resume"}, name="run_resume"),
    path("runs/<int:pk>/rerun/", views.run_action, {"action": "rerun"}, name="run_rerun"),
    path("runs/<int:pk>/tensorboard/", views.run_tensorboard, name="run_tensorboard"),
    path("workers/", views.workers_page, name="workers"),
    path(
        "base-models/fetches/<int:pk>/cancel/",
        views.base_model_fetch_cancel,
        name="base_model_fetch_cancel",
    ),
    path("artifacts/<int:pk>/generate/", views.generate, name="generate"),
    path("artifacts/<int:pk>/arena/", arena_views.artifact_arena, name="artifact_arena"),
    path("artifacts/<int:pk>/promote/", arena_views.artifact_promote, name="artifact_promote"),
    path("arena/<slug:slug>/", arena_views.leaderboard_page, name="leaderboard"),
    path("arena/<slug:slug>/new/", arena_views.battle_set_new, name="battle_set_new"),
    # The playground (training/playground_views.py).
    path("playground/projects/<int:pk>/", playground_views.project_playground, name="playground"),
    path("playground/sessions/<int:pk>/", playground_views.session_page, name="playground_session"),
    path(
        "playground/sessions/<int:pk>/live/", playground_views.session_live, name="playground_live"
    ),
    path(
        "playground/sessions/<int:pk>/send/", playground_views.session_send, name="playground_send"
    ),
    path(
        "playground/sessions/<int:pk>/cancel/",
        playground_views.session_cancel,
        name="playground_cancel",
    ),
    path(
        "playground/sessions/<int:pk>/save-prompt/",
        playground_views.session_save,
        {"what": "prompt"},
        name="playground_save_prompt",
    ),
    path(
        "playground/sessions/<int:pk>/save-demonstration/",
        playground_views.session_save,
        {"what": "demonstration"},
        name="playground_save_demonstration",
    ),
    path("artifacts/<int:pk>/round/", views.round_start, name="round_start"),
]
