from __future__ import annotations


class LeaseError(Exception):
    """The caller does not hold a usable lease on the task. The message says what to do."""

    code = "lease"


class IdempotencyConflict(Exception):
    """An idempotency key was reused for a different task."""

    code = "idempotency_conflict"


class LabelerPaused(LeaseError):
    """The labeler is paused in this project (failed gold, or a curator's pause): no new lease
    until a curator resumes them. The message says why."""

    code = "paused"
