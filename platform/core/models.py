"""The one job lifecycle's fields: every kind of background work (a snapshot build, a training
run, a generation job) is a row that a worker claims, keeps alive with heartbeats and finishes.

The rules that move a job through its states live in `core.jobs`; this is only their storage.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class JobStatus(models.TextChoices):
    """The states of a kind of job that has no names of its own (a snapshot is "building" where
    these are "running", and declares its own)."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class Job(models.Model):
    """What every job row holds. A kind declares its own `Status` choices (their stored values
    never change) and, where its running state has another name (a snapshot is "building"),
    says so in `RUNNING`; the lifecycle reads the three names below and nothing else."""

    QUEUED = "queued"
    RUNNING = "running"
    FAILED = "failed"

    # A kind redeclares it with its own choices.
    status = models.CharField(max_length=16, default=QUEUED)
    fingerprint = models.CharField(
        max_length=64,
        blank=True,
        editable=False,
        help_text="sha256 of the request's canonical inputs: a request made again while this "
        "job is unfinished gets this job (empty: never deduplicated).",
    )
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Refreshed while the worker works; a running job whose heartbeat is older than the stale
    # bound lost its worker (`core.jobs.jobs_reap_stale`).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    # Set on a row `core.jobs.job_get_or_create` found rather than made (not stored): the
    # caller answers "already there" (HTTP 200) instead of "accepted" (202).
    reused = False

    class Meta:
        abstract = True

    @classmethod
    def unfinished(cls) -> tuple[str, str]:
        return (cls.QUEUED, cls.RUNNING)

    def lost_fields(self, lost: str) -> dict:
        """The fields that end this job when its worker is lost; `lost` says whose heartbeat
        stopped and since when. A kind adds what to do next."""
        return {"status": self.FAILED, "error": lost}


def one_unfinished_per_request(*, name: str, running: str = Job.RUNNING) -> models.UniqueConstraint:
    """The constraint that makes a request made twice (a double POST, two racing requests) one
    job: at most one queued or running row per fingerprint. Finished rows never block a new
    identical request."""
    return models.UniqueConstraint(
        fields=["fingerprint"],
        condition=Q(status__in=[Job.QUEUED, running]) & ~Q(fingerprint=""),
        name=name,
    )
