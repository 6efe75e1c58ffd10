"""Input that must be refused with a clear answer, never a 500 or a way around a limit: the
log-in rate limit on every log-in form, and bad query parameters of every list endpoint."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from annotation.api import AllowListFilterMixin
from annotation.models import Role
from config.urls import router


@pytest.fixture(autouse=True)
def _fresh_counters():
    cache.clear()
    yield
    cache.clear()


# --- One log-in limit for every form ------------------------------------------------------


def logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def test_an_account_locked_on_the_site_login_cannot_log_in_through_the_admin(client, make_user):
    """Five wrong passwords on /accounts/login/ lock alice; the right password on the admin's
    log-in form is then refused too (429, the lock page), and she is not logged in."""
    make_user("alice", is_staff=True)
    for _ in range(5):
        client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    response = client.post(
        "/admin/login/?next=/admin/", {"username": "alice", "password": "pw-alice"}
    )
    assert response.status_code == 429
    assert b"Too many failed log-ins" in response.content
    assert not logged_in(client)
    assert client.get("/admin/").status_code == 302  # still sent to the log-in page


def test_hammering_the_admin_login_locks_the_account_everywhere(client, make_user):
    """Failures on /admin/login/ count: after five, neither form lets alice in."""
    make_user("alice", is_staff=True)
    for _ in range(5):
        response = client.post("/admin/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == 200
    for url in ("/admin/login/", "/accounts/login/"):
        response = client.post(url, {"username": "Alice ", "password": "pw-alice"})
        assert response.status_code == 429, url
        assert b"Too many failed log-ins" in response.content
        assert not logged_in(client)


def test_an_address_that_fails_too_often_is_locked_out_of_every_form(client, make_user):
    """Thirty failures from one address over many usernames lock the address: bob, who never
    failed, cannot log in from it through either form."""
    make_user("bob", is_staff=True)
    for i in range(30):
        client.post("/admin/login/", {"username": f"guess{i}", "password": "wrong"})
    for url in ("/admin/login/", "/accounts/login/"):
        assert client.post(url, {"username": "bob", "password": "pw-bob"}).status_code == 429
        assert not logged_in(client)


def test_a_success_before_the_lock_clears_the_count(client, make_user):
    """Four failures, then the right password on the admin form: the count starts again, so
    four more failures do not lock the account."""
    make_user("alice", is_staff=True)
    for _ in range(4):
        client.post("/admin/login/", {"username": "alice", "password": "wrong"})
    assert (
        client.post("/admin/login/", {"username": "alice", "password": "pw-alice"}).status_code
        == 302
    )
    client.logout()
    for _ in range(4):
        client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert (
        client.post("/accounts/login/", {"username": "alice", "password": "pw-alice"}).status_code
        == 302
    )


# --- Bad query parameters are 400s naming the parameter ------------------------------------


@pytest.fixture
def api(make_user, project_factory):
    alice = make_user("alice")
    project_factory("alpha", prompts=1, members=[(alice, Role.CURATOR)])
    client = APIClient()
    client.force_authenticate(alice)
    return client


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/api/v1/tasks/?project=abc", "project"),
        ("/api/v1/annotations/?task=1e9", "task"),
        ("/api/v1/tasks/?project=12345678901234567890123", "project"),
        ("/api/v1/prompts/?project=-9223372036854775809", "project"),
        ("/api/v1/tasks/?status=bogus", "status"),
        ("/api/v1/projects/?slug=a%00b", "slug"),
        ("/api/v1/tasks/?offset=99999999999999999999999", "offset"),
        ("/api/v1/tasks/?limit=ten", "limit"),
    ],
)
def test_a_bad_query_parameter_is_a_400_naming_it(api, url, param):
    response = api.get(url)
    assert response.status_code == 400, response.content
    assert list(response.json()) == [param]


def test_an_id_at_the_edge_of_the_64_bit_range_is_an_empty_page_not_an_error(api):
    for value in ("9223372036854775807", "-9223372036854775808", "0"):
        response = api.get(f"/api/v1/tasks/?project={value}")
        assert response.status_code == 200 and response.json()["results"] == []


BAD_VALUES = ["abc", "1e9", "1.5", "12345678901234567890123", "-12345678901234567890123", "\x00"]


def _filter_params():
    """Every filter parameter of every registered list endpoint: a new one is covered here."""
    for prefix, viewset, _ in router.registry:
        if issubclass(viewset, AllowListFilterMixin):
            for param in viewset.filter_fields:
                yield f"/api/v1/{prefix}/", param


@pytest.mark.parametrize(("url", "param"), list(_filter_params()))
def test_no_bad_value_of_any_filter_parameter_is_a_server_error(api, url, param):
    """Each bad value is either a 400 naming the parameter or (where it is a valid value of
    the field, such as "abc" for a slug) an answer; NUL is refused everywhere."""
    for value in BAD_VALUES:
        response = api.get(url, {param: value})
        assert response.status_code in (200, 400), (param, value, response.status_code)
        if response.status_code == 400:
            assert list(response.json()) == [param], response.json()
    assert api.get(url, {param: "\x00"}).status_code == 400
