"""Answers that say what went wrong for requests that fail before a view could answer.

503 with Retry-After when the database is unreachable, not a bare 500: while PostgreSQL restarts
(or SQLite is locked past its timeout) a request fails with an OperationalError before it could
write anything; the client should retry the same request (with its Idempotency-Key), so say so.
CONN_HEALTH_CHECKS replaces the broken connection next time.

413 naming UPLOAD_MAX_BYTES when a request body is over it, not a bare "Bad Request (400)":
Django refuses such a body (RequestDataTooBig) wherever it is first read, in a view or in the
CSRF check, and hands it to the 400 handler (`handler400` in config/urls.py).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.views import defaults

logger = logging.getLogger(__name__)
RETRY_AFTER_S = 5
MESSAGE = "The database is unavailable for a moment. Nothing was saved; retry in a few seconds."


def _answer(request, message: str, status: int, code: str) -> HttpResponse:
    if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"detail": message, "code": code}, status=status)
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.warning("database unavailable on %s: %s", request.path, exception)
        response = _answer(request, MESSAGE, 503, "database_unavailable")
        response["Retry-After"] = str(RETRY_AFTER_S)
        return response


def bad_request(request, exception):
    """The 400 handler: a body over UPLOAD_MAX_BYTES is a 413 that names the limit."""
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return _answer(
            request,
            f"The request body is over {limit} bytes (UPLOAD_MAX_BYTES). Nothing was saved. "
            "Files go to the import API (POST /api/v1/imports/, up to IMPORT_MAX_BYTES).",
            413,
            "request_too_large",
        )
    return defaults.bad_request(request, exception)
