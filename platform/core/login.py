"""One limit on failed log-ins, per username and address and per address alone, for every form.

The limit sits where every password check goes through, `django.contrib.auth.authenticate`:
`LoginLimitBackend`, first in AUTHENTICATION_BACKENDS, refuses a locked username or address
before any password is checked (PermissionDenied stops the other backends), and the
`user_login_failed` / `user_logged_in` signals count and clear. So the site's form, the admin's
form and any log-in added later share the same counters. `LoginLimitMiddleware` answers a
refused attempt with the "too many failed log-ins" page (429), whichever form it came from.
"""

from __future__ import annotations

from django.contrib.auth.backends import BaseBackend, ModelBackend
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

WINDOW_SECONDS = 15 * 60
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 30
_REFUSED = "_login_limit_refused"


def _keys(request: HttpRequest | None, username: str | None) -> tuple[str, str]:
    address = request.META.get("REMOTE_ADDR", "") if request is not None else ""
    name = (username or "").strip().casefold()[:150]
    return f"login-fail:{address}:{name}", f"login-fail:{address}"


def _http_request(request):
    # DRF wraps the HttpRequest; attributes set on the wrapper would not reach the middleware.
    return getattr(request, "_request", request)


def login_locked(request: HttpRequest | None, username: str | None) -> bool:
    user_key, address_key = _keys(request, username)
    return (
        cache.get(user_key, 0) >= MAX_FAILURES_PER_USER
        or cache.get(address_key, 0) >= MAX_FAILURES_PER_ADDRESS
    )


def _record_failure(key: str) -> None:
    # add() starts the window at the first failure; incr() keeps its expiry.
    if not cache.add(key, 1, WINDOW_SECONDS):
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, WINDOW_SECONDS)


class LoginLimitBackend(BaseBackend):
    """Authenticates no one; refuses every backend's check for a locked username or address."""

    # Listed first, it is the backend `login()` records when none is named (force_login, the
    # demo): it must find a session's user as ModelBackend does. It grants no permission.
    get_user = ModelBackend.get_user
    user_can_authenticate = ModelBackend.user_can_authenticate

    def authenticate(self, request, username=None, password=None, **kwargs):
        if login_locked(request, username):
            if request is not None:
                setattr(_http_request(request), _REFUSED, True)
            raise PermissionDenied
        return None


def login_failed(sender, credentials, request=None, **kwargs) -> None:
    if request is None or getattr(_http_request(request), _REFUSED, False):
        return  # a refusal while locked does not extend the lock
    for key in _keys(request, credentials.get("username")):
        _record_failure(key)


def logged_in(sender, request, user, **kwargs) -> None:
    if request is not None:
        cache.delete(_keys(request, user.get_username())[0])


class LoginLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not getattr(request, _REFUSED, False):
            return response
        minutes = WINDOW_SECONDS // 60
        if request.path.startswith("/api/"):
            message = f"Too many failed log-ins; try again in {minutes} minutes."
            return JsonResponse({"detail": message, "code": "login_locked"}, status=429)
        return render(request, "registration/login_locked.html", {"minutes": minutes}, status=429)
