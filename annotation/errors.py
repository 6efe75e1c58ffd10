from __future__ import annotations


class LeaseError(Exception):
    """The caller does not hold a usable lease on the task. The message says what to do."""

    code = "lease"


class IdempotencyConflict(Exception):
    """An idempotency key was reused for a different task."""

    code = "idempotency_conflict"
