"""API token authentication that remembers token -> user for a few seconds per process.

DRF's TokenAuthentication reads the token and its user on every request: one statement, and on
the labeling hot paths (a lease and a submit per annotation) the ORM's cost of building it is a
tenth of the whole request. This class remembers the answer for `API_TOKEN_CACHE_SECONDS`
(default 10; 0 turns the cache off).

Revocation: deleting a token, or saving its user (deactivating the account, changing
is_staff / is_superuser), forgets the cached entries at once in the process that made the change;
other web workers keep accepting the old answer for at most `API_TOKEN_CACHE_SECONDS`.
"""

from __future__ import annotations

import copy
from time import monotonic

from django.conf import settings
from rest_framework.authentication import TokenAuthentication

MAX_ENTRIES = 10_000

# key -> (monotonic expiry, user, token). Plain dict operations are atomic under the GIL, which
# is all the thread safety a cache that may be dropped at any moment needs.
_cache: dict[str, tuple[float, object, object]] = {}


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key):
        seconds = settings.API_TOKEN_CACHE_SECONDS
        entry = _cache.get(key)
        now = monotonic()
        if entry is not None and entry[0] > now:
            return _clone(entry[1]), entry[2]
        user, token = super().authenticate_credentials(key)
        if seconds > 0:
            if len(_cache) >= MAX_ENTRIES:
                _cache.clear()
            _cache[key] = (now + seconds, _clone(user), token)
        return user, token


def _clone(user):
    """A copy of a user row for one request: code may set attributes on request.user (cached
    permissions, related objects), which must not leak across requests or threads through the
    cached instance. What pickling a model does (Model.__getstate__), without the pickling."""
    clone = user.__class__.__new__(user.__class__)
    clone.__dict__.update(user.__dict__)
    clone._state = copy.copy(user._state)
    clone._state.fields_cache = {}
    for cached in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        clone.__dict__.pop(cached, None)
    return clone


def forget(*, user_id: int | None = None, key: str | None = None) -> None:
    """Drop cached entries of a token, or of every token of a user."""
    if key is not None:
        _cache.pop(key, None)
    if user_id is not None:
        for cached_key, (_, user, _) in list(_cache.items()):
            if user.pk == user_id:
                _cache.pop(cached_key, None)


def token_deleted(sender, instance, **kwargs) -> None:
    forget(key=instance.key)


def user_changed(sender, instance, **kwargs) -> None:
    forget(user_id=instance.pk)
