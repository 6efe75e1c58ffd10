"""An unreachable database is a 503 with Retry-After (retry), not a 500. The outage itself is
exercised for real against PostgreSQL in test_load_faults.py; here the answer's shape."""

from __future__ import annotations

import json

from django.db import OperationalError
from django.test import RequestFactory

from core.middleware import DatabaseUnavailableMiddleware


def _answer(path: str, exception: Exception, **headers):
    middleware = DatabaseUnavailableMiddleware(lambda request: None)
    return middleware.process_exception(RequestFactory().get(path, headers=headers), exception)


def test_it_tells_an_api_client_to_retry():
    response = _answer("/api/v1/projects/", OperationalError("server closed the connection"))
    assert response.status_code == 503 and response["Retry-After"] == "5"
    body = json.loads(response.content)
    assert body["code"] == "database_unavailable" and "Nothing was saved" in body["detail"]


def test_it_answers_a_page_in_plain_text():
    response = _answer("/projects/", OperationalError("the database system is shutting down"))
    assert response.status_code == 503 and b"retry in a few seconds" in response.content


def test_other_errors_are_left_alone():
    assert _answer("/api/v1/projects/", ValueError("bug")) is None
