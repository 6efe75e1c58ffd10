from django.urls import path

from annotation import views

app_name = "annotation"

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/<slug:slug>/next/", views.project_next, name="project_next"),
    path("tasks/<int:pk>/", views.task_detail, name="task"),
]
