from __future__ import annotations

from django.urls import path

from training.demo import views

app_name = "demo"
urlpatterns = [
    path("report/", views.report_html, name="report"),
    path("report.json", views.report_json, name="report-json"),
]
