"""Curator pages of imports: upload a file, then follow its job to its report. Curators (and
above) of the project only, as every curate page."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from annotation.curation_views import _curated_project
from annotation.imports import FORMATS
from annotation.imports.jobs import import_request, reject_file, upload_check
from annotation.imports.limits import EXTENSIONS, UploadRejected, check_size, human, max_bytes
from annotation.models import ImportJob


def _job(request: HttpRequest, slug: str, pk: int) -> tuple:
    project = _curated_project(request, slug)
    return project, get_object_or_404(ImportJob, pk=pk, project=project)


@login_required
def imports_upload(request: HttpRequest, slug: str) -> HttpResponse:
    """GET: the upload form and the project's latest import jobs. POST: store the file and
    queue its import, then the job's page."""
    project = _curated_project(request, slug)
    values = {
        "format": request.POST.get("format", "auto"),
        "skip_invalid": bool(request.POST.get("skip_invalid")),
        "dry_run": bool(request.POST.get("dry_run")),
    }
    errors: dict[str, list[str]] = {}
    status = 200
    if request.method == "POST":
        try:
            length = request.META.get("CONTENT_LENGTH")
            check_size("The upload", int(length) if length and length.isdigit() else None)
            upload = request.FILES.get("file")
            if upload is None:
                raise ValidationError({"file": "choose a file to import."})
            upload_check(upload)
            job = import_request(project=project, upload=upload, user=request.user, **values)
        except UploadRejected as error:
            errors, status = {"file": [error.message]}, error.status
        except ValidationError as error:
            errors, status = error.message_dict, 400
        else:
            return redirect("annotation:curate_import_job", slug=project.slug, pk=job.pk)
    context = {
        "project": project,
        "values": values,
        "errors": errors,
        "formats": FORMATS,
        "extensions": ", ".join(EXTENSIONS),
        "limit": human(max_bytes()),
        "jobs": project.import_jobs.order_by("-id")[:20],
    }
    return render(request, "curation/imports.html", context, status=status)


@login_required
def import_job(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """A job's progress, then its report; the htmx partial polls itself while it is
    unfinished."""
    project, job = _job(request, slug, pk)
    report = job.report or {}
    context = {
        "project": project,
        "job": job,
        "report": report,
        "more_errors": max(0, report.get("error_count", 0) - len(report.get("errors") or [])),
        "rejects": reject_file(job) is not None,
        "polling": job.status in ImportJob.unfinished(),
    }
    template = "curation/_import_job.html" if request.htmx else "curation/import_job.html"
    return render(request, template, context)


@login_required
def import_job_rejects(request: HttpRequest, slug: str, pk: int) -> FileResponse:
    """The job's reject file (skip-invalid): one bad row a line, its line, field and message."""
    _, job = _job(request, slug, pk)
    path = reject_file(job)
    if path is None:
        raise Http404("This import wrote no reject file.")
    return FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=f"import-{job.pk}.rejects.jsonl",
        content_type="application/x-ndjson",
    )
