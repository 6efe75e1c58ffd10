"""Training runs and the model artifacts they produce (the Django side of training).

The engine (`training.engine`) never imports this module: a run hands it a config and snapshot
directories, and reads back its status, metrics and output directory.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from core.models import Job, JobStatus, one_unfinished_per_request


class Stage(models.TextChoices):
    PRETRAIN = "pretrain", "Base pretraining"
    SFT = "sft", "Supervised fine-tuning"
    INSTRUCTION = "instruction", "Instruction tuning"
    REWARD = "reward", "Reward model"
    PPO = "ppo", "PPO"
    DPO = "dpo", "DPO"
    GRPO = "grpo", "GRPO"
    RLOO = "rloo", "RLOO"
    KTO = "kto", "KTO"


class TrainingRun(Job):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    project = models.ForeignKey(
        "annotation.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    name = models.CharField(max_length=200, blank=True)
    stage = models.CharField(max_length=16, choices=Stage.choices)
    config = models.JSONField(default=dict)
    snapshots = models.ManyToManyField("annotation.Snapshot", blank=True, related_name="runs")
    parent_artifact = models.ForeignKey(
        "ModelArtifact", null=True, blank=True, on_delete=models.PROTECT, related_name="child_runs"
    )
    reward_artifact = models.ForeignKey(
        "ModelArtifact",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reward_for_runs",
        help_text="PPO, GRPO and RLOO: the reward model.",
    )
    resume_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="resumed_by"
    )
    preset = models.CharField(max_length=40, blank=True, help_text="Launch preset it started from.")
    num_processes = models.PositiveSmallIntegerField(
        default=1,
        help_text="Processes that train it (more than 1: under `accelerate launch`, one per GPU, "
        "or CPU processes over gloo).",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    checkpoint_step = models.PositiveIntegerField(
        default=0, help_text="Step of the last complete checkpoint (what a resume continues from)."
    )
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    eta_seconds = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="Latest and final metrics.")
    log_tail = models.TextField(blank=True)
    output_dir = models.CharField(max_length=500, blank=True)
    device = models.CharField(max_length=200, blank=True)
    advice = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [one_unfinished_per_request(name="one_unfinished_run_per_request")]

    def __str__(self) -> str:
        return self.name or f"{self.get_stage_display()} run #{self.pk}"

    def lost_fields(self, lost: str) -> dict:
        if self.cancel_requested:  # it was stopping anyway: what was asked for happened
            return {"status": self.Status.CANCELLED, "error": "", "advice": ""}
        return {
            **super().lost_fields(lost),
            "advice": "Resume to continue from the last complete checkpoint"
            + (
                f" (step {self.checkpoint_step})."
                if self.checkpoint_step
                else "; none was written yet, so the run starts over."
            ),
        }

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class MetricPoint(models.Model):
    """One progress event of a run (loss, reward, KL...), for the live charts."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="points")
    step = models.PositiveIntegerField()
    values = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step", "id"]
        indexes = [models.Index(fields=["run", "step"])]

    def __str__(self) -> str:
        return f"{self.run_id}@{self.step}"


class ModelArtifact(models.Model):
    """A trained model directory with its lineage: base → SFT → RM → PPO.

    It belongs to a project: a run's artifact to the run's project, a registered base model to
    the project its engineer registered it in. Only that project's runs train from it and only
    its staff see it (one with no project, from before artifacts had one: superusers only)."""

    project = models.ForeignKey(
        "annotation.Project",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="artifacts",
    )
    name = models.CharField(max_length=200)
    stage = models.CharField(max_length=16, choices=Stage.choices)
    path = models.CharField(max_length=500, help_text="Local directory or hub name.")
    run = models.OneToOneField(
        TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="artifact"
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    snapshots = models.ManyToManyField("annotation.Snapshot", blank=True, related_name="artifacts")
    metrics = models.JSONField(default=dict, blank=True)
    model_card = models.TextField(blank=True)
    info = models.JSONField(
        default=dict,
        blank=True,
        help_text="What its config.json says (parameters, dtype, context length), read when a "
        "base model is registered.",
    )
    # Set when it passed the promotion gate (training.leaderboard): the promoted policy is the
    # default parent of the next run.
    promoted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_stage_display()})"

    @property
    def is_base(self) -> bool:
        """A base model: registered (not trained here) to start pretraining-free stages from."""
        return self.stage == Stage.PRETRAIN and self.run_id is None

    @property
    def generates(self) -> bool:
        """Whether it writes text (a policy) rather than scores it (a reward model): what
        "Generate candidates", rounds, arenas and the playground need."""
        return self.stage != Stage.REWARD

    def lineage(self) -> list[ModelArtifact]:
        """This artifact and its ancestors, oldest first."""
        chain, node, seen = [], self, set()
        while node is not None and node.pk not in seen:
            seen.add(node.pk)
            chain.append(node)
            node = node.parent
        return list(reversed(chain))


class BaseModelFetch(Job):
    """A base model fetched from the Hugging Face hub by a worker (training.base_models): its
    files land in MODELS_DIR/hub/<org>--<name>, then it is registered as a base model of the
    project (`artifact`). Progress is counted in bytes of the files fetched."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Fetching"
        SUCCEEDED = "succeeded", "Registered"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    project = models.ForeignKey(
        "annotation.Project", on_delete=models.CASCADE, related_name="base_model_fetches"
    )
    hub_name = models.CharField(max_length=200, help_text="The model on the hub: org/name.")
    name = models.CharField(max_length=200, help_text="The base model's name in the project.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    files_done = models.PositiveIntegerField(default=0)
    files_total = models.PositiveIntegerField(default=0)
    # Read by the worker between two files (training.base_models).
    cancel_requested = models.BooleanField(default=False)
    artifact = models.OneToOneField(
        ModelArtifact, null=True, blank=True, on_delete=models.SET_NULL, related_name="fetch"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [one_unfinished_per_request(name="one_unfinished_fetch_per_request")]

    def __str__(self) -> str:
        return f"{self.hub_name} → {self.project}"

    def lost_fields(self, lost: str) -> dict:
        if self.cancel_requested:  # it was stopping anyway: what was asked for happened
            return {"status": self.Status.CANCELLED, "error": ""}
        return {
            **super().lost_fields(lost),
            "error": f"{lost} The files fetched so far are kept: fetch it again to finish.",
        }

    @property
    def progress(self) -> float:
        return min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else 0.0


class WorkerHeartbeat(models.Model):
    """A Celery worker and its devices, written at worker start and refreshed periodically.
    `stopped_at` is set the moment it shuts down; a killed worker only goes stale."""

    hostname = models.CharField(max_length=200, unique=True)
    pid = models.PositiveIntegerField(default=0)
    queues = models.JSONField(default=list, blank=True)
    devices = models.JSONField(
        default=list, blank=True, help_text="GPUs: name, memory total/free (bytes)."
    )
    cpu = models.JSONField(default=dict, blank=True, help_text="Cores, memory total/available.")
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname


class GenerationJob(Job):
    """Sample K responses per prompt from a model and turn them into ranking tasks."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(
        "annotation.Project", on_delete=models.CASCADE, related_name="generation_jobs"
    )
    artifact = models.ForeignKey(
        ModelArtifact, on_delete=models.PROTECT, related_name="generation_jobs"
    )
    prompts = models.ManyToManyField("annotation.Prompt", related_name="generation_jobs")
    k = models.PositiveSmallIntegerField(default=4)
    temperature = models.FloatField(default=1.0)
    top_p = models.FloatField(default=0.95)
    max_new_tokens = models.PositiveIntegerField(default=64)
    seed = models.IntegerField(default=0)
    round = models.PositiveIntegerField(default=2, help_text="Labeling round of the new tasks.")
    # A job of an arena battle set samples one response per prompt and creates no ranking
    # task: the set pairs the responses of its models into battles (training.arena).
    battle_set = models.ForeignKey(
        "ArenaBattleSet",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="generation_jobs",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    responses_created = models.PositiveIntegerField(default=0)
    tasks_created = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [one_unfinished_per_request(name="one_unfinished_generation_per_request")]

    def __str__(self) -> str:
        return f"Generation #{self.pk} from {self.artifact}"

    def lost_fields(self, lost: str) -> dict:
        return {
            **super().lost_fields(lost),
            "error": f"{lost} Nothing was written (responses and tasks are saved together at "
            "the end): generate again.",
        }


class ArenaBattleSet(models.Model):
    """Blind battles between models of a project (training.arena): each model answers each
    chosen prompt once (a generation job per model), then every pair of models gets one arena
    task per prompt, judged by `required` labelers who never learn which model wrote what."""

    # Running while its models generate; done once its battles exist (training.arena).
    Status = JobStatus

    project = models.ForeignKey(
        "annotation.Project", on_delete=models.CASCADE, related_name="battle_sets"
    )
    name = models.CharField(max_length=200, blank=True)
    artifacts = models.ManyToManyField(ModelArtifact, related_name="battle_sets")
    prompts = models.ManyToManyField("annotation.Prompt", related_name="battle_sets")
    temperature = models.FloatField(default=0.7)
    top_p = models.FloatField(default=0.95)
    max_new_tokens = models.PositiveIntegerField(default=64)
    seed = models.IntegerField(default=0)
    required = models.PositiveSmallIntegerField(default=1, help_text="Labelers per battle.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    # The labeling round of its battles (an arena round): apart from the rounds of rank and
    # compare tasks, so a labeler who ranked a prompt may still judge its battles.
    # (A set whose round was deleted before its battles were made fails, saying so.)
    round = models.OneToOneField(
        "Round", null=True, blank=True, on_delete=models.SET_NULL, related_name="battle_set"
    )
    battles_created = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name or f"Battle set #{self.pk}"


class PlaygroundSession(models.Model):
    """One person's conversation with a model of the project (training.playground).

    The reply being generated grows in `reply`, written by the worker every few tokens; the
    page polls the row. `turn` numbers the requests, so a stale or repeated message to the
    worker finds its turn gone and does nothing."""

    class Status(models.TextChoices):
        IDLE = "idle", "Ready"
        QUEUED = "queued", "Waiting for a free slot"
        GENERATING = "generating", "Generating"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(
        "annotation.Project", on_delete=models.CASCADE, related_name="playground_sessions"
    )
    artifact = models.ForeignKey(
        ModelArtifact, on_delete=models.CASCADE, related_name="playground_sessions"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="playground_sessions"
    )
    messages = models.JSONField(default=list, blank=True)
    temperature = models.FloatField(default=0.7)
    top_p = models.FloatField(default=0.95)
    max_new_tokens = models.PositiveIntegerField(default=128)
    seed = models.IntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IDLE)
    turn = models.PositiveIntegerField(default=0)
    reply = models.TextField(blank=True, help_text="The reply being generated.")
    cancel_requested = models.BooleanField(default=False)
    notice = models.CharField(max_length=300, blank=True)
    error = models.TextField(blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["status", "queued_at"])]

    def __str__(self) -> str:
        return f"Playground #{self.pk} with {self.artifact}"

    @property
    def active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.GENERATING)


class Round(Job):
    """One labeling round of a project, started from a policy in one action (`training.rounds`):
    it selects prompts, samples K distinct candidates per prompt from its models and creates the
    tasks. Its tasks are the project's tasks of round `number`; its generation jobs record each
    model's sampling; the snapshots cut after it and the runs trained on them hang off it."""

    Status = JobStatus

    class Kind(models.TextChoices):
        RANK = "rank", "Rank"
        COMPARE = "compare", "Compare"
        # A battle set's round (training.arena): made done, its tasks come from the set.
        ARENA = "arena", "Arena"

    project = models.ForeignKey(
        "annotation.Project", on_delete=models.CASCADE, related_name="rounds"
    )
    number = models.PositiveIntegerField(help_text="Assigned: one more than the project's last.")
    policy = models.ForeignKey(ModelArtifact, on_delete=models.PROTECT, related_name="rounds")
    generators = models.ManyToManyField(
        ModelArtifact, related_name="+", help_text="Models whose samples share each task."
    )
    reward_models = models.ManyToManyField(
        ModelArtifact, blank=True, related_name="+", help_text="Ensemble for active selection."
    )
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.RANK)
    budget = models.PositiveIntegerField(help_text="Tasks (prompts asked) at most.")
    source = models.JSONField(
        default=dict, blank=True, help_text='{"snapshot": id} | {"batch": id} | {"tag": "..."}'
    )
    active = models.BooleanField(default=False, help_text="Uncertainty sampling by the ensemble.")
    k = models.PositiveSmallIntegerField(default=4)
    temperature = models.FloatField(default=1.0)
    top_p = models.FloatField(default=0.95)
    max_new_tokens = models.PositiveIntegerField(default=64)
    seed = models.BigIntegerField()
    retries = models.PositiveSmallIntegerField(default=2)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    selection = models.JSONField(
        default=dict, blank=True, help_text="What was selected, from what, how and why."
    )
    counts = models.JSONField(default=dict, blank=True)
    generation_jobs = models.ManyToManyField(GenerationJob, blank=True, related_name="rounds")
    snapshots = models.ManyToManyField("annotation.Snapshot", blank=True, related_name="rounds")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["project", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="one_round_number"),
            one_unfinished_per_request(name="one_unfinished_round_per_request"),
        ]

    def __str__(self) -> str:
        return f"{self.project} round {self.number}"

    def lost_fields(self, lost: str) -> dict:
        return {
            **super().lost_fields(lost),
            "error": f"{lost} Its tasks are written together at the end: start the round again.",
        }

    def runs(self):
        """The runs trained on a snapshot cut from this round."""
        return TrainingRun.objects.filter(snapshots__rounds=self).distinct()
