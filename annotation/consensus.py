"""Consensus as a job: a curator asks for a new Bradley-Terry version (from the curate page or
the API), a Celery worker computes it (`quality.consensus_compute`), and preference snapshots
aggregated by it (`aggregate=bradley_terry`) read the version they were given, or the newest.

The request is a `ConsensusJob` row made first, the task gets only its id (house style: Sentry's
data export): asking again while one is queued or running answers with that one.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotation import quality
from annotation.models import Consensus, ConsensusJob, Project
from core.jobs import JobNotQueued, job_claim, job_fingerprint, job_get_or_create, job_heartbeat
from core.queue import enqueue_on_commit

TASK = "annotation.tasks.consensus_compute"


@transaction.atomic
def consensus_request(
    *, project: Project, weighted: bool = False, user=None, enqueue: bool = True
) -> ConsensusJob:
    """Record a consensus computation and queue it on commit; the same request (project,
    weighted) made while one is unfinished gets that one, marked `reused`, and queues nothing."""
    if not isinstance(weighted, bool):
        raise ValidationError({"weighted": "expected true or false."})
    job, created = job_get_or_create(
        ConsensusJob,
        fingerprint=job_fingerprint(project=project.pk, weighted=weighted, what="consensus"),
        defaults={"project": project, "weighted": weighted, "created_by": user},
    )
    if created and enqueue:
        enqueue_on_commit(TASK, job.pk)
    return job


def consensus_job_run(*, job: ConsensusJob, worker: str = "local") -> ConsensusJob:
    """Claim a queued job, compute the version and record it on the row (queued → running →
    done|failed). A job that is not queued (a twin message, a retry, finished) raises
    JobNotQueued and computes nothing."""
    if not job_claim(ConsensusJob, job.pk, worker=worker):
        job.refresh_from_db()
        raise JobNotQueued(
            f"consensus job #{job.pk} is {job.get_status_display().lower()}, not queued: "
            "another worker has it (or had it); wait for it or ask again."
        )
    with job_heartbeat(ConsensusJob, job.pk, worker=worker):
        try:
            consensus = quality.consensus_compute(project=job.project, weighted=job.weighted)
        except Exception as error:
            _finish(
                job,
                status=ConsensusJob.Status.FAILED,
                error=f"{type(error).__name__}: {error}. Fix the cause and compute again.",
            )
            raise
    _finish(job, status=ConsensusJob.Status.DONE, consensus=consensus)
    return job


def _finish(job: ConsensusJob, **fields) -> None:
    fields["finished_at"] = timezone.now()
    ConsensusJob.objects.filter(pk=job.pk).update(**fields)
    for name, value in fields.items():
        setattr(job, name, value)


def consensus_for(project: Project, version: int = 0) -> Consensus:
    """The version a snapshot aggregates by: `version`, or the newest when 0; a ValidationError
    naming the filter, and saying how to compute one, when there is none."""
    versions = Consensus.objects.filter(project=project)
    found = (
        versions.filter(version=version).first()
        if version
        else versions.order_by("-version").first()
    )
    if found is not None:
        return found
    how = (
        'compute one from the curate page ("Compute consensus") or with POST /api/v1/consensus/ '
        f'{{"project": {project.pk}}}, then request the snapshot again'
    )
    if version:
        raise ValidationError(
            {
                "filters.consensus_version": f"{project.slug} has no consensus version {version}; {how}."
            }
        )
    raise ValidationError(
        {
            "filters.aggregate": f"bradley_terry aggregates by a consensus version, and "
            f"{project.slug} has none computed yet; {how}."
        }
    )


def consensus_described(consensus: Consensus) -> dict:
    """What a snapshot manifest records of the version it aggregated by."""
    return {
        "version": consensus.version,
        "method": consensus.method,
        "weighted": consensus.weighted,
        "computed_at": consensus.created_at.isoformat(),
        "annotation_max_id": consensus.summary.get("annotation_max_id"),
    }
