"""Forms of the training pages: launch a run, generate candidates from a model."""

from __future__ import annotations

import dataclasses
import json

import yaml
from django import forms

from annotation.access import projects_at_least
from annotation.models import Project, Role, Snapshot
from training.arena import promoted_policy
from training.engine import STAGES
from training.models import ModelArtifact, Stage
from training.presets import PRESETS
from training.rounds import round_next_number

CONFIG_HELP = (
    "Engine options as YAML (or JSON), e.g. <code>max_steps: 100</code>. Paths to the dataset, "
    "the parent model and the output directory are filled in from the choices above."
)


# A launch config is a few dozen lines; anything near this is a mistake or an attack.
CONFIG_MAX_BYTES = 64 * 1024


class _PlainLoader(yaml.SafeLoader):
    """safe_load without anchors and aliases (`&a`, `*a`, `<<: *a`): a config never needs them,
    and nested aliases expand a few hundred bytes into megabytes of stored config."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.MarkedYAMLError(
                problem="anchors and aliases (& and *) are not accepted; write the values out",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)


def parse_config_text(text: str) -> dict:
    """YAML/JSON mapping from the form, or a ValidationError naming the line."""
    text = (text or "").strip()
    if not text:
        return {}
    size = len(text.encode("utf-8"))
    if size > CONFIG_MAX_BYTES:
        raise forms.ValidationError(
            f"config: {size:,} bytes is more than the {CONFIG_MAX_BYTES // 1024} KB a config "
            "may have"
        )
    try:
        data = yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise forms.ValidationError(
            f"config: {where}invalid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if not isinstance(data, dict):
        raise forms.ValidationError("config: expected a mapping of option: value lines")
    return data


def config_text(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False).strip()


def snapshot_label(snapshot: Snapshot) -> str:
    """A snapshot as a launch form lists it: what tells two of them apart (their id, kind, rows
    and date; `str()` alone repeats for two snapshots of the same data)."""
    return (
        f"#{snapshot.pk} {snapshot} · {snapshot.get_kind_display()} · {snapshot.row_count:,} "
        f"rows · {snapshot.created_at:%Y-%m-%d %H:%M}"
    )


def artifact_label(artifact: ModelArtifact) -> str:
    """A model as a launch form lists it: a base model says so; every label has its id."""
    kind = "base model" if artifact.is_base else artifact.get_stage_display()
    project = artifact.project.slug if artifact.project_id else "no project"
    return f"#{artifact.pk} {artifact.name} · {kind} · {project} · {artifact.created_at:%Y-%m-%d}"


class SnapshotChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj) -> str:
        return snapshot_label(obj)


class ArtifactChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj) -> str:
        return artifact_label(obj)


PARENT_HELP = (
    "Model to start from: a base model registered in the project (Model artifacts › Register a "
    "base model) or a model trained here. Only pretraining may leave it empty (it then trains "
    "from scratch); SFT, instruction tuning, reward models, DPO and PPO start from a model."
)


def _kinds_text(kinds: tuple[str, ...]) -> str:
    return " or ".join(kinds)


def _stage_name(stage: str) -> str:
    return {"sft": "SFT", "ppo": "PPO", "dpo": "DPO", "kto": "KTO", "grpo": "GRPO",
            "rloo": "RLOO"}.get(stage, Stage(stage).label)  # fmt: skip


class LaunchForm(forms.Form):
    preset = forms.ChoiceField(
        required=False,
        choices=[("", "— none —")] + [(k, v["label"]) for k, v in PRESETS.items()],
    )
    stage = forms.ChoiceField(choices=Stage.choices)
    name = forms.CharField(required=False, max_length=200)
    project = forms.ModelChoiceField(
        queryset=Project.objects.none(),
        required=False,
        help_text="The run's project (empty: the snapshot's). Its snapshots and models only.",
    )
    snapshot = SnapshotChoiceField(
        queryset=Snapshot.objects.none(),
        required=False,
        help_text="Training data: pretraining text, SFT or instruction demonstrations, "
        "preference pairs (reward model, DPO), rated responses (KTO) or prompts (PPO, GRPO, "
        "RLOO). Only ready snapshots are listed.",
    )
    parent = ArtifactChoiceField(
        queryset=ModelArtifact.objects.none(), required=False, help_text=PARENT_HELP
    )
    reward = ArtifactChoiceField(
        queryset=ModelArtifact.objects.none(),
        required=False,
        help_text="PPO, GRPO and RLOO: the reward model.",
    )
    config = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 12, "cols": 70}), help_text=CONFIG_HELP
    )
    num_processes = forms.IntegerField(
        required=False,
        min_value=1,
        initial=1,
        label="Processes",
        help_text="More than 1: the worker trains the run under accelerate launch, one process "
        "per GPU (a worker without GPUs: CPU processes over gloo). At most what a live "
        "training worker has.",
    )
    ignore_memory = forms.BooleanField(
        required=False, label="Launch even if the memory estimate says it will not fit"
    )

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only what an engineer (or admin) of a project may train on and from.
        projects = projects_at_least(user, Role.ENGINEER)
        self.fields["project"].queryset = projects
        self.fields["snapshot"].queryset = Snapshot.objects.filter(
            project__in=projects, status=Snapshot.Status.READY
        ).select_related("project")
        artifacts = ModelArtifact.objects.filter(project__in=projects)
        if user.is_superuser:  # models of no project (from before models had one) too
            artifacts = ModelArtifact.objects.all()
        artifacts = artifacts.select_related("project")
        self.fields["parent"].queryset = artifacts
        # The promoted policy (training.arena) is the parent the next round starts from.
        promoted = promoted_policy(artifacts)
        self.fields["parent"].initial = promoted.pk if promoted else None
        self.fields["reward"].queryset = artifacts.filter(stage=Stage.REWARD)

    def clean_num_processes(self) -> int:
        return self.cleaned_data.get("num_processes") or 1

    def clean_config(self) -> dict:
        return parse_config_text(self.cleaned_data.get("config", ""))

    def clean(self):
        data = super().clean()
        config = data.get("config") or {}
        if isinstance(config, dict) and "stage" in config and data.get("stage"):
            if config["stage"] != data["stage"]:
                self.add_error(
                    "config",
                    f"stage: the config says {config['stage']!r} but the form says {data['stage']!r}",
                )
        if data.get("stage") in STAGES and isinstance(config, dict):
            self._stage_inputs_check(data, config)
        snapshot = data.get("snapshot")
        project = data.get("project") or (snapshot.project if snapshot else None)
        data["project"] = project
        if project is None:
            return data
        if snapshot is not None and snapshot.project_id != project.pk:
            self.add_error(
                "snapshot", f"{snapshot} is a snapshot of {snapshot.project}, not of {project}"
            )
        for key in ("parent", "reward"):
            artifact = data.get(key)
            if artifact is not None and artifact.project_id not in (project.pk, None):
                self.add_error(key, f"{artifact} is a model of another project, not of {project}")
        return data

    def _stage_inputs_check(self, data: dict, config: dict) -> None:
        """What the stage needs, said under the field it concerns, before an estimate or a
        launch reaches the engine (whose messages name config keys, not form fields)."""
        stage = data["stage"]
        cls, name = STAGES[stage], _stage_name(stage)
        kinds = _kinds_text(cls.snapshot_kinds)
        snapshot = data.get("snapshot")
        if snapshot is not None and snapshot.kind not in cls.snapshot_kinds:
            self.add_error(
                "snapshot",
                f"{name} trains on a {kinds} snapshot; #{snapshot.pk} {snapshot} is a "
                f"{snapshot.kind} snapshot",
            )
        elif snapshot is None and cls.snapshot_field in cls.required:
            # (a typed path is refused by the launch, with its own words)
            if not config.get(cls.snapshot_field):
                self.add_error("snapshot", f"{name} trains on a {kinds} snapshot: choose one")
        if "model" in cls.required and data.get("parent") is None and not config.get("model"):
            self.add_error(
                "parent",
                f"{name} starts from a model: choose a base model of the project (register one "
                "under Model artifacts) or a trained model; only pretraining starts from scratch",
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        if "reward_model" in cls.required and data.get("reward") is None:
            if not config.get("reward_model"):
                self.add_error("reward", f"{name} trains against a reward model: choose one")
        elif "reward_model" not in fields and data.get("reward") is not None:
            self.add_error("reward", f"only PPO, GRPO and RLOO use a reward model; {name} does not")
        preset = data.get("preset")
        if preset and PRESETS[preset]["stage"] != stage:
            self.add_error(
                "preset",
                f"{PRESETS[preset]['label']!r} is a preset of {_stage_name(PRESETS[preset]['stage'])}"
                f", not of {name}: choose a preset of {name} or none",
            )
        unknown = [key for key in config if key != "stage" and key not in fields]
        ignored = [key for key in config if key in cls.ignored]
        if unknown:
            self.add_error(
                "config",
                f"{stage}: {', '.join(unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'} "
                f"of {name} (left from another stage's preset?): remove "
                f"{'it' if len(unknown) == 1 else 'them'}",
            )
        for key in ignored:
            self.add_error(
                "config", f"{stage}.{key}: ignored by {name} ({cls.ignored[key]}); remove it"
            )


class BaseModelForm(forms.Form):
    """Register a base model in a project: a folder under the models directory, or a hub name
    that a worker fetches (one of the two)."""

    project = forms.ModelChoiceField(
        queryset=Project.objects.none(), help_text="Projects where you are an engineer."
    )
    name = forms.CharField(
        required=False, max_length=200, help_text="Empty: the folder's or the hub's name."
    )
    folder = forms.CharField(
        required=False,
        max_length=500,
        help_text="A model folder (config.json, weights, tokenizer) under the models directory, "
        "e.g. <code>qwen2.5-0.5b</code>.",
    )
    hub_name = forms.CharField(
        required=False,
        max_length=200,
        label="Hub name",
        help_text="Or a model of the Hugging Face hub, e.g. <code>Qwen/Qwen2.5-0.5B</code>: a "
        "worker fetches it into the models directory, then registers it.",
    )

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects_at_least(user, Role.ENGINEER)

    def clean(self):
        data = super().clean()
        folder, hub = (data.get("folder") or "").strip(), (data.get("hub_name") or "").strip()
        if bool(folder) == bool(hub):
            self.add_error(
                "folder" if folder else None,
                "Give a folder under the models directory or a hub name, one of the two.",
            )
        return data


class GenerateForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.none())
    tag = forms.CharField(
        required=False, help_text="Only prompts with this tag (empty: all prompts)."
    )
    limit = forms.IntegerField(
        min_value=1, max_value=1000, initial=20, help_text="Prompts at most."
    )
    k = forms.IntegerField(min_value=2, max_value=9, initial=4, label="Responses per prompt (K)")
    temperature = forms.FloatField(min_value=0.01, initial=1.0)
    top_p = forms.FloatField(min_value=0.01, max_value=1.0, initial=0.95)
    max_new_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=64)
    seed = forms.IntegerField(required=False, help_text="Empty: a fresh one.")
    round = forms.IntegerField(
        min_value=1,
        required=False,
        help_text="Labeling round of the new tasks (empty: the project's next round).",
    )

    def __init__(self, *args, user, artifact: ModelArtifact, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A model generates into its own project, for an engineer of it (one of no project:
        # into any project of a superuser's choosing).
        projects = projects_at_least(user, Role.ENGINEER)
        if artifact.project_id is not None:
            projects = projects.filter(pk=artifact.project_id)
            self.fields["round"].initial = round_next_number(artifact.project)
        self.fields["project"].queryset = projects


class RoundStartForm(forms.Form):
    """ "Start next round" from a policy: the labeling budget first, then where prompts come
    from, the other models sharing the tasks and the optional active selection."""

    budget = forms.IntegerField(min_value=1, max_value=10_000, help_text="Prompts to ask at most.")
    tag = forms.CharField(required=False, help_text="Only prompts with this tag.")
    batch = forms.IntegerField(required=False, help_text="Only the prompts of this import batch.")
    snapshot = forms.IntegerField(required=False, help_text="Only the prompts of this snapshot.")
    generators = forms.ModelMultipleChoiceField(
        queryset=ModelArtifact.objects.none(), required=False,
        help_text="Other models whose samples share each task (e.g. SFT, last round's best).",
    )  # fmt: skip
    active = forms.BooleanField(required=False, help_text="Ask where the reward models disagree.")
    reward_models = forms.ModelMultipleChoiceField(
        queryset=ModelArtifact.objects.none(), required=False
    )
    k = forms.IntegerField(
        min_value=2, max_value=9, required=False, help_text="Default: the project's."
    )
    temperature = forms.FloatField(min_value=0.01, initial=1.0)
    top_p = forms.FloatField(min_value=0.01, max_value=1.0, initial=0.95)
    max_new_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=64)
    seed = forms.IntegerField(required=False, help_text="Empty: a fresh one.")

    def __init__(self, *args, artifact: ModelArtifact, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        same = ModelArtifact.objects.filter(project_id=artifact.project_id)
        self.fields["generators"].queryset = same.exclude(pk=artifact.pk).exclude(stage="reward")
        self.fields["reward_models"].queryset = same.filter(stage="reward")

    def source(self) -> dict:
        data = self.cleaned_data
        found = {"tags": [data["tag"]] if data["tag"] else [], "batch": data["batch"],
                 "snapshot": data["snapshot"]}  # fmt: skip
        return {k: v for k, v in found.items() if v not in (None, [])}


def dumps(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


class BattleSetForm(forms.Form):
    """An arena battle set (training.arena): the project's models to battle, which prompts,
    and the decoding settings every model answers with."""

    name = forms.CharField(required=False, max_length=200)
    artifacts = forms.ModelMultipleChoiceField(
        queryset=ModelArtifact.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        label="Models",
        help_text="Two or more; every pair battles on every prompt.",
    )
    tag = forms.CharField(required=False, help_text="Only prompts with this tag (empty: all).")
    limit = forms.IntegerField(
        min_value=1, max_value=1000, initial=20, help_text="Prompts at most."
    )
    temperature = forms.FloatField(min_value=0.01, initial=0.7)
    top_p = forms.FloatField(min_value=0.01, max_value=1.0, initial=0.95)
    max_new_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=64)
    seed = forms.IntegerField(initial=0)
    required = forms.IntegerField(min_value=1, max_value=50, initial=1, label="Labelers per battle")

    def __init__(self, *args, project, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Reward models score answers and write none: nothing to battle with.
        self.fields["artifacts"].queryset = ModelArtifact.objects.filter(project=project).exclude(
            stage=Stage.REWARD
        )
