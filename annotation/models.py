"""The labeling data model: projects, prompts, candidate responses, tasks, leases, annotations.

Annotations are the raw, immutable judgments. A correction is a new annotation that supersedes
the old one; curation decisions (approve/reject) live beside the judgment, never inside it.
"""

from __future__ import annotations

import hashlib
import unicodedata

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from annotation.labels import Labels, labels_of
from annotation.labels import clean as labels_clean
from annotation.labels import default as labels_default
from core.models import Job, JobStatus, one_unfinished_per_request


def content_hash(value: str | list) -> str:
    """A normalized hash for duplicate detection.

    Only the hash is normalized (NFC, case-folded, whitespace collapsed); the stored text stays
    byte for byte as written.
    """
    if isinstance(value, list):
        text = "\x1e".join(f"{m.get('role', '')}\x1f{m.get('content', '')}" for m in value)
    else:
        text = value
    normalized = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


class Role(models.TextChoices):
    LABELER = "labeler", "Labeler"
    CURATOR = "curator", "Curator"
    ENGINEER = "engineer", "Engineer"
    ADMIN = "admin", "Admin"


class TaskKind(models.TextChoices):
    WRITE_PROMPT = "write_prompt", "Write a prompt"
    DEMONSTRATION = "demonstration", "Write a demonstration"
    RANK = "rank", "Rank K responses"
    COMPARE = "compare", "Compare a pair"
    RATE = "rate", "Rate and flag a response"
    ARENA = "arena", "Arena battle"


class Project(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="projects"
    )
    task_kinds = models.JSONField(
        default=list, blank=True, help_text="Enabled task kinds; empty means all."
    )
    k_responses = models.PositiveSmallIntegerField(
        "K responses per ranking task",
        default=4,
        validators=[MinValueValidator(2), MaxValueValidator(9)],
    )
    overlap = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(50)],
        help_text="Distinct labelers per item.",
    )
    lease_seconds = models.PositiveIntegerField(
        default=900, validators=[MinValueValidator(30), MaxValueValidator(24 * 3600)]
    )
    # Gold (annotation.gold): injected into each labeler's stream at this rate, and a labeler
    # whose accuracy over their last `gold_window` gold tasks is below `gold_min_accuracy` is
    # paused until a curator resumes them.
    gold_rate = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of each labeler's leases that are gold tasks (0: none injected).",
    )
    gold_window = models.PositiveSmallIntegerField(
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Gold accuracy is measured over a labeler's last this many gold tasks.",
    )
    gold_min_accuracy = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Pause a labeler whose gold accuracy falls below this (0: never pause).",
    )
    repeats_allowed = models.BooleanField(
        default=False,
        help_text="Whether a labeler may judge the same prompt more than once in a round.",
    )
    # The promotion gate (training.leaderboard): a policy is promoted when the lower end of the
    # 95% interval of its arena lead over its parent reaches this many points.
    arena_margin = models.FloatField(
        "arena promotion margin",
        default=0.0,
        validators=[MinValueValidator(-1000.0), MaxValueValidator(1000.0)],
        help_text="Arena points (Elo scale) by which a new policy must beat its parent, at the "
        "lower end of the 95% interval, to be promoted.",
    )
    playground_labelers = models.BooleanField(
        "labelers may use the playground",
        default=False,
        help_text="Whether labelers may chat with the project's models in the playground "
        "(engineers and admins always may).",
    )
    label_config = models.JSONField(
        "labels",
        default=labels_default,
        blank=True,
        help_text="Rating flags (name, description, whether a flag excludes the response from "
        "datasets), the rating scale with the score from which a response is good, and the "
        "comparison strengths; see annotation/labels.py.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        self.label_config = labels_clean(self.label_config)

    @property
    def labels(self) -> Labels:
        """The project's rating flags, rating scale and comparison strengths."""
        return labels_of(self.label_config)

    def enabled(self, kind: str) -> bool:
        return not self.task_kinds or kind in self.task_kinds

    def current_guideline(self) -> Guideline | None:
        return self.guidelines.order_by("-version").first()

    def role_of(self, user) -> str | None:
        if not user.is_authenticated:
            return None
        membership = self.memberships.filter(user=user).first()
        return membership.role if membership else None


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.LABELER)
    # A paused labeler gets no new lease (annotation.gold: failed gold, or a curator's pause).
    paused = models.BooleanField(default=False)
    paused_reason = models.TextField(blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    # Gold accuracy is measured from here on: a resume starts the window afresh.
    gold_window_from = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} — {self.get_role_display()} of {self.project}"


class Guideline(models.Model):
    """Versioned labeling guidelines (Markdown). Each annotation records the version it saw."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="guidelines")
    version = models.PositiveIntegerField()
    body = models.TextField(help_text="Markdown.")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["project", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["project", "version"], name="one_guideline_version")
        ]

    def __str__(self) -> str:
        return f"{self.project} guidelines v{self.version}"


class Source(models.TextChoices):
    LABELER = "labeler", "Written by a labeler"
    IMPORTED = "imported", "Imported"
    MODEL = "model", "Generated by a model"
    SEED = "seed", "Seed data"


class Prompt(models.Model):
    """A single-turn text, or a conversation whose last turn is the user's."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    text = models.TextField(
        blank=True, help_text="Single-turn prompt; empty when `messages` is set."
    )
    messages = models.JSONField(
        null=True, blank=True, help_text='Multi-turn: [{"role": "user", "content": "..."}, ...]'
    )
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.SEED)
    tags = models.JSONField(default=list, blank=True)
    language = models.CharField(max_length=16, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    content_hash = models.CharField(max_length=64, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "content_hash"], name="no_duplicate_prompt")
        ]

    def __str__(self) -> str:
        return self.display_text[:80]

    @property
    def is_conversation(self) -> bool:
        return bool(self.messages)

    @property
    def display_text(self) -> str:
        if self.messages:
            return self.messages[-1].get("content", "")
        return self.text

    def conversation(self) -> list[dict]:
        return list(self.messages) if self.messages else [{"role": "user", "content": self.text}]

    def clean(self) -> None:
        # The shape of `messages` is a rule of annotation.rules, which every way in applies.
        if not self.messages and not self.text.strip():
            raise ValidationError({"text": "A prompt needs text or messages."})

    def save(self, *args, **kwargs) -> None:
        self.content_hash = content_hash(self.messages or self.text)
        super().save(*args, **kwargs)


class Response(models.Model):
    """A candidate response to a prompt."""

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    text = models.TextField()
    origin = models.CharField(max_length=16, choices=Source.choices)
    model_artifact = models.ForeignKey(
        "training.ModelArtifact",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="generated_responses",
    )
    generation = models.JSONField(
        default=dict, blank=True, help_text="Decoding parameters and seed of a model sample."
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.text[:80]


class Task(models.Model):
    """One unit of labeling work, done by `required` distinct labelers."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETE = "complete", "Complete"
        DISABLED = "disabled", "Disabled"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(max_length=16, choices=TaskKind.choices)
    prompt = models.ForeignKey(
        Prompt, null=True, blank=True, on_delete=models.CASCADE, related_name="tasks"
    )
    candidates = models.ManyToManyField(Response, blank=True, related_name="tasks")
    required = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    done = models.PositiveSmallIntegerField(default=0)
    # Set at the first lease: the few started items are found without scanning fresh ones.
    started = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    priority = models.SmallIntegerField(default=0)
    round = models.PositiveSmallIntegerField(default=1)
    is_gold = models.BooleanField(default=False)
    gold_answer = models.JSONField(null=True, blank=True)
    instructions = models.TextField(blank=True, help_text="Extra instructions for this task.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["project", "status", "priority", "id"]),
            models.Index(fields=["project", "status", "started", "priority", "id"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(done__lte=models.F("required")), name="done_le_required"
            )
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.get_kind_display()}"

    # The candidates as read with the task by a lease (`next_task_for` reads them in the
    # same statement as the task), so rendering the lease costs no query.
    loaded_candidates: list[Response] | None = None

    def candidate_ids(self) -> list[int]:
        return sorted(self.candidates.values_list("id", flat=True))

    def candidate_list(self) -> list[Response]:
        """The candidates: those a lease read with the task, else `candidates.all()` (which a
        `prefetch_related("candidates")` serves)."""
        if self.loaded_candidates is not None:
            return self.loaded_candidates
        return list(self.candidates.all())


class Assignment(models.Model):
    """A lease of a task to one labeler. At most one per (task, labeler), ever."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assignments")
    labeler = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    leased_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    shown_order = models.JSONField(default=list, blank=True)
    skip_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-leased_at"]
        constraints = [
            models.UniqueConstraint(fields=["task", "labeler"], name="one_assignment_per_labeler")
        ]
        indexes = [models.Index(fields=["task", "state", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.task} → {self.labeler} ({self.state})"

    def is_live(self, now=None) -> bool:
        return self.state == self.State.ACTIVE and self.expires_at > (now or timezone.now())


class ReviewStatus(models.TextChoices):
    PENDING = "pending", "Pending review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class Annotation(models.Model):
    """A raw judgment. Immutable: only its review fields change after it is written."""

    REVIEW_FIELDS = frozenset({"review_status", "reviewed_by", "reviewed_at", "review_note"})

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="annotations")
    labeler = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="annotations",
        help_text="Empty for imported judgments.",
    )
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="annotation"
    )
    kind = models.CharField(max_length=16, choices=TaskKind.choices)
    payload = models.JSONField(help_text="The judgment; its shape depends on the kind.")
    rationale = models.TextField(blank=True)
    shown_order = models.JSONField(default=list, blank=True)
    time_spent_ms = models.PositiveIntegerField(default=0)
    guideline_version = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=128, blank=True)
    supersedes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="superseded_by"
    )
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.LABELER)
    provenance = models.JSONField(default=dict, blank=True)
    review_status = models.CharField(
        max_length=16, choices=ReviewStatus.choices, default=ReviewStatus.PENDING
    )
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["labeler", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="one_annotation_per_idempotency_key",
            )
        ]
        indexes = [models.Index(fields=["task", "review_status"])]

    def __str__(self) -> str:
        return f"Annotation #{self.pk} on {self.task}"

    def save(self, *args, **kwargs) -> None:
        update_fields = kwargs.get("update_fields")
        if self.pk is not None and not kwargs.get("force_insert"):
            if update_fields is None or not set(update_fields) <= self.REVIEW_FIELDS:
                raise ValidationError(
                    "Annotations are immutable: submit a correction that supersedes this one."
                )
        super().save(*args, **kwargs)


def not_superseded() -> Q:
    """The filter for annotations no correction supersedes.

    NOT EXISTS, not `superseded_by__isnull=True`: PostgreSQL estimates that LEFT JOIN ... IS
    NULL at one row when nothing is superseded and then nests loops over what it joins next
    (minutes for the judgments of a large project); the anti-join is estimated right."""
    return ~models.Exists(Annotation.objects.filter(supersedes=models.OuterRef("pk")))


class SnapshotKind(models.TextChoices):
    PRETRAIN = "pretrain", "Pretraining text"
    SFT = "sft", "Supervised fine-tuning"
    INSTRUCTION = "instruction", "Instruction tuning"
    PREFERENCE = "preference", "Preference pairs"
    PROMPTS = "prompts", "Prompts (for PPO)"
    KTO = "kto", "Rated responses (KTO)"


class Snapshot(Job):
    """An immutable, content-addressed dataset cut from a project, written to disk.

    The directory holds `manifest.json` and one file per split in TRL's row formats; it is the
    whole contract between the web side and the training engine.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        BUILDING = "building", "Building"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    RUNNING = Status.BUILDING

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="snapshots")
    kind = models.CharField(max_length=16, choices=SnapshotKind.choices)
    format = models.CharField(max_length=16, default="jsonl")
    filters = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    path = models.CharField(max_length=500, blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    row_count = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            one_unfinished_per_request(
                name="one_unfinished_snapshot_per_request", running="building"
            )
        ]

    def __str__(self) -> str:
        short = self.sha256[:10] if self.sha256 else self.status
        return f"{self.project.slug}/{self.kind}@{short}"

    def lost_fields(self, lost: str) -> dict:
        # The build writes to a temporary folder renamed into place at the end: nothing of a
        # lost build is ever read.
        return {
            **super().lost_fields(lost),
            "error": f"{lost} Nothing of this build was kept: build the snapshot again.",
        }


class ImportJob(Job):
    """A file uploaded to import (the API, the curate page), worked by the Celery task
    `annotation.tasks.import_run` (`annotation.imports.jobs`). The upload is kept under
    DATA_DIR/imports/ until the job is done; `stage` and `records_read` (of `records_total`, once
    the file has been checked) are its progress; `report` is what the importer said (counts,
    notices, errors), and `batch` the import batch it wrote, if it wrote one."""

    Status = JobStatus

    class Stage(models.TextChoices):
        CHECKING = "checking", "Checking every record"
        WRITING = "writing", "Writing"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_jobs")
    file_name = models.CharField(max_length=500)
    format = models.CharField(max_length=32, default="auto", help_text="As asked (auto: detected).")
    skip_invalid = models.BooleanField(default=False)
    dry_run = models.BooleanField(default=False)
    upload = models.CharField(
        max_length=500, blank=True, help_text="The stored upload; emptied once it is removed."
    )
    size = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=16, choices=Stage.choices, blank=True)
    records_read = models.PositiveIntegerField(default=0)
    records_total = models.PositiveIntegerField(null=True, blank=True)
    report = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [one_unfinished_per_request(name="one_unfinished_import_per_request")]

    def __str__(self) -> str:
        return f"{self.project.slug}/import #{self.pk} {self.file_name} ({self.status})"

    @property
    def percent(self) -> int | None:
        """How far the write is, once the check counted the records; None when unknown."""
        if self.status == self.Status.DONE:
            return 100
        if self.stage == self.Stage.WRITING and self.records_total:
            return min(100, int(100 * self.records_read / self.records_total))
        return None

    def lost_fields(self, lost: str) -> dict:
        # The write is one transaction: a worker lost before it committed wrote nothing. Lost
        # after (before it could record the outcome), its batch is there, whole.
        batch = ImportBatch.objects.filter(job=self.pk).first()
        if batch is not None:
            return {
                "status": self.Status.DONE,
                "error": f"{lost} The file had been imported whole before (import batch "
                f"#{batch.pk}); only the rest of the report was lost.",
                "report": {**self.report, "written": True, "batch_id": batch.pk,
                           "counts": batch.counts},
            }  # fmt: skip
        return {
            **super().lost_fields(lost),
            "error": f"{lost} Nothing of this file was written (an import is one transaction): "
            "upload it again.",
        }


class ImportBatch(models.Model):
    """One run of the importer over one file: what it read, wrote, skipped and rejected."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_batches")
    file_name = models.CharField(max_length=500)
    format = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    counts = models.JSONField(default=dict, blank=True)
    errors = models.JSONField(default=list, blank=True, help_text="The first bad rows.")
    notices = models.JSONField(
        default=dict,
        blank=True,
        help_text="Records imported as something less or skipped, with nothing to learn: "
        '{"counts": {reason: n}, "examples": [{line|index, field, message, reason}]}.',
    )
    job = models.OneToOneField(
        ImportJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="batch"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.file_name} ({self.format}) → {self.project}"


class ImportRecord(models.Model):
    """A source record already imported into a project, so re-importing never duplicates it."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=64, help_text="sha256 of the format and the raw record.")
    batch = models.ForeignKey(ImportBatch, on_delete=models.CASCADE, related_name="records")
    line = models.PositiveIntegerField()
    # The prompt the record wrote or found: what "the prompts of an import batch" selects.
    prompt = models.ForeignKey(
        Prompt, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "key"], name="one_import_per_record")
        ]

    def __str__(self) -> str:
        return f"{self.key[:12]} (line {self.line})"


class Consensus(models.Model):
    """Aggregated preferences derived from the raw judgments of a project; versioned, never
    edited: recomputing writes a new version."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="consensus")
    version = models.PositiveIntegerField()
    method = models.CharField(max_length=32)
    weighted = models.BooleanField(default=False)
    scores = models.JSONField(
        default=dict, help_text="{prompt id: {response id: score}}, higher is better."
    )
    summary = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "-version"]
        verbose_name = "consensus version"
        constraints = [
            models.UniqueConstraint(fields=["project", "version"], name="one_consensus_version")
        ]

    def __str__(self) -> str:
        return f"{self.project} consensus v{self.version} ({self.method})"


class TaskBatch(Job):
    """A request to create tasks of one kind for a selection of prompts (`annotation.bulk`).

    Idempotent: a task of the same prompt, kind, round and candidates that exists already is
    not created again, so running the same request twice, or resuming one that failed midway,
    creates each task once. `counts` says what it did (selected, created, already there, and
    the prompts skipped for want of responses); `prompts_done` of `prompts_total` is its
    progress while it runs.
    """

    Status = JobStatus

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="task_batches")
    kind = models.CharField(max_length=16, choices=TaskKind.choices)
    selection = models.JSONField(default=dict, help_text="Which prompts (annotation.bulk).")
    required = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    priority = models.SmallIntegerField(default=0)
    round = models.PositiveSmallIntegerField(default=1)
    instructions = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    prompts_total = models.PositiveIntegerField(default=0)
    prompts_done = models.PositiveIntegerField(default=0)
    counts = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "task batches"
        constraints = [one_unfinished_per_request(name="one_unfinished_task_batch_per_request")]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.kind} batch #{self.pk} ({self.status})"

    @property
    def percent(self) -> int:
        if self.status == self.Status.DONE:
            return 100
        return int(100 * self.prompts_done / self.prompts_total) if self.prompts_total else 0

    def lost_fields(self, lost: str) -> dict:
        # Each chunk commits on its own and a request made again skips what exists.
        return {
            **super().lost_fields(lost),
            "error": f"{lost} The tasks of the chunks done are kept: request the same batch "
            "again to create the rest (nothing is created twice).",
        }


class ConsensusJob(Job):
    """A request to compute a new consensus version, worked by the Celery task
    `annotation.tasks.consensus_compute`: the same request (project, weighted) made while one
    is queued or running gets that one, so a double click computes once."""

    Status = JobStatus

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="consensus_jobs")
    weighted = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    consensus = models.ForeignKey(
        Consensus, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [one_unfinished_per_request(name="one_unfinished_consensus_per_request")]

    def __str__(self) -> str:
        return f"{self.project} consensus job #{self.pk} ({self.status})"

    def lost_fields(self, lost: str) -> dict:
        # The version is written in one transaction at the end: a lost job wrote nothing.
        return {
            **super().lost_fields(lost),
            "error": f"{lost} No version was written: compute again.",
        }
