"""Forms of the training pages: launch a run, generate candidates from a model."""

from __future__ import annotations

import json

import yaml
from django import forms

from annotation import selectors as annotation_selectors
from annotation.models import Project, Snapshot
from training import selectors
from training.models import Stage
from training.presets import PRESETS

CONFIG_HELP = (
    "Engine options as YAML (or JSON), e.g. <code>max_steps: 100</code>. Paths to the dataset, "
    "the parent model and the output directory are filled in from the choices above."
)


def parse_config_text(text: str) -> dict:
    """YAML/JSON mapping from the form, or a ValidationError naming the line."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        data = yaml.safe_load(text)
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


class LaunchForm(forms.Form):
    preset = forms.ChoiceField(
        required=False,
        choices=[("", "— none —")] + [(k, v["label"]) for k, v in PRESETS.items()],
    )
    stage = forms.ChoiceField(choices=Stage.choices)
    name = forms.CharField(required=False, max_length=200)
    snapshot = forms.ModelChoiceField(
        queryset=Snapshot.objects.none(),
        required=False,
        help_text="Training data (for PPO: the prompts). Only ready snapshots are listed.",
    )
    parent = forms.ModelChoiceField(
        queryset=None, required=False, help_text="Model to start from (none: from scratch)."
    )
    reward = forms.ModelChoiceField(
        queryset=None, required=False, help_text="PPO only: the reward model."
    )
    config = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 12, "cols": 70}), help_text=CONFIG_HELP
    )
    ignore_memory = forms.BooleanField(
        required=False, label="Launch even if the memory estimate says it will not fit"
    )

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        projects = annotation_selectors.projects_for(user, roles=annotation_selectors.STAFF_ROLES)
        self.fields["snapshot"].queryset = Snapshot.objects.filter(
            project__in=projects, status=Snapshot.Status.READY
        ).select_related("project")
        artifacts = selectors.artifacts_for(user)
        self.fields["parent"].queryset = artifacts
        self.fields["reward"].queryset = artifacts.filter(stage=Stage.REWARD)

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
    seed = forms.IntegerField(initial=0)
    round = forms.IntegerField(min_value=1, initial=2, help_text="Labeling round of the new tasks.")

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = annotation_selectors.projects_for(
            user, roles=annotation_selectors.STAFF_ROLES
        )


def dumps(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
