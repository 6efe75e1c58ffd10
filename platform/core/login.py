"""Log-in with a limit on failed attempts, per username and address and per address alone."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

WINDOW_SECONDS = 15 * 60
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 30


def _keys(request: HttpRequest) -> tuple[str, str]:
    address = request.META.get("REMOTE_ADDR", "")
    username = (request.POST.get("username") or "").strip().casefold()[:150]
    return f"login-fail:{address}:{username}", f"login-fail:{address}"


def _failures(key: str) -> int:
    return cache.get(key, 0)


def _record_failure(key: str) -> None:
    # add() starts the window at the first failure; incr() keeps its expiry.
    if not cache.add(key, 1, WINDOW_SECONDS):
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, WINDOW_SECONDS)


class LoginView(auth_views.LoginView):
    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        user_key, address_key = _keys(request)
        if (
            _failures(user_key) >= MAX_FAILURES_PER_USER
            or _failures(address_key) >= MAX_FAILURES_PER_ADDRESS
        ):
            return render(
                request,
                "registration/login_locked.html",
                {"minutes": WINDOW_SECONDS // 60},
                status=429,
            )
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        for key in _keys(self.request):
            _record_failure(key)
        return super().form_invalid(form)

    def form_valid(self, form):
        cache.delete(_keys(self.request)[0])
        return super().form_valid(form)
