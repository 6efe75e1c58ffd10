from django.urls import path

from training import views

app_name = "training"

urlpatterns = [
    path("runs/<int:pk>/", views.run_page, name="run"),
    path("runs/<int:pk>/live/", views.run_live, name="run_live"),
    path("runs/<int:pk>/cancel/", views.run_action, {"action": "cancel"}, name="run_cancel"),
    path("runs/<int:pk>/resume/", views.run_action, {"action": "resume"}, name="run_resume"),
    path("runs/<int:pk>/rerun/", views.run_action, {"action": "rerun"}, name="run_rerun"),
    path("workers/", views.workers_page, name="workers"),
    path("artifacts/<int:pk>/generate/", views.generate, name="generate"),
    path("artifacts/<int:pk>/round/", views.round_start, name="round_start"),
]
