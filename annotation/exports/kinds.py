"""Snapshot kinds: one registration each, where the builder reads everything that differs by kind.

A new kind of snapshot is its name in `annotation.models.SnapshotKind` (the model's choices, the
one list of names), its row builder in `annotation.exports.rows` and one `SNAPSHOT_KINDS` entry
below; nothing else. A training stage that should read it lists it in its config's
`snapshot_kinds` (`training/engine/config.py`); the admin's "Train on the selected snapshot"
pre-fills the preset of the first stage whose own (first) kind it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from annotation import rules
from annotation.exports import rows as R
from annotation.exports.consensus_rows import bradley_terry_rows
from annotation.models import SnapshotKind, TaskKind


@dataclass(frozen=True)
class SnapshotKindRules:
    """What the snapshot builder needs to know about one kind of snapshot."""

    # (project, filters, stats) -> (prompt id, that prompt's rows) in prompt order.
    rows: Callable[..., Iterator[tuple[int, object]]]
    # What the rows are made of, in the message of a snapshot that would have none.
    built_from: str
    # The judgments that give a prompt rows; none: every prompt that is not a document does.
    judgment_kinds: tuple[str, ...]
    # Imported documents (`metadata.document`) give rows of their own.
    documents: bool
    # LLaMA-Factory's `dataset_info.json` entry beside `file_name`, for rows of plain text and
    # for conversations (`manifest["conversational"]`).
    llamafactory_text: dict
    llamafactory_conversational: dict
    # Whether the `pairs` filter shapes the rows (the manifest records it, or None).
    pairs: bool = False
    # For conversational rows LLaMA-Factory cannot read as TRL has them: a row in the shape
    # it reads (or None, a row it cannot take), written to `<split>.llamafactory.jsonl`, the
    # file `dataset_info.json` names.
    llamafactory_row: Callable[[dict], dict | None] | None = None


_SHAREGPT_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def _sharegpt(columns: dict, **extra) -> dict:
    return {"formatting": "sharegpt", **extra, "columns": columns, "tags": _SHAREGPT_TAGS}


def _preference_rows(project, filters: dict, stats: R.BuildStats):
    """Pairs by summed votes (`aggregate=votes`, the default) or in the order of a consensus
    version (`aggregate=bradley_terry`)."""
    if filters.get("aggregate") == "bradley_terry":
        return bradley_terry_rows(project, filters, stats)
    return R.preference_rows(project, filters, stats)


_DEMONSTRATIONS = (TaskKind.DEMONSTRATION,)
_MESSAGES = _sharegpt({"messages": "messages"})
_PAIR_COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}

SNAPSHOT_KINDS: dict[str, SnapshotKindRules] = {
    SnapshotKind.PRETRAIN: SnapshotKindRules(
        rows=R.pretrain_rows,
        built_from="imported documents or demonstrations",
        judgment_kinds=_DEMONSTRATIONS,
        documents=True,
        llamafactory_text={"columns": {"prompt": "text"}},
        llamafactory_conversational={"columns": {"prompt": "text"}},
    ),
    SnapshotKind.SFT: SnapshotKindRules(
        rows=R.sft_rows,
        built_from="demonstrations",
        judgment_kinds=_DEMONSTRATIONS,
        documents=False,
        llamafactory_text={"columns": {"prompt": "prompt", "response": "completion"}},
        llamafactory_conversational=_MESSAGES,
    ),
    SnapshotKind.INSTRUCTION: SnapshotKindRules(
        rows=R.instruction_rows,
        built_from="demonstrations",
        judgment_kinds=_DEMONSTRATIONS,
        documents=False,
        # Its rows are always messages.
        llamafactory_text=_MESSAGES,
        llamafactory_conversational=_MESSAGES,
    ),
    SnapshotKind.PREFERENCE: SnapshotKindRules(
        rows=_preference_rows,
        built_from="rank or compare judgments (pending or approved)",
        judgment_kinds=tuple(rules.VOTING_KINDS),
        documents=False,
        llamafactory_text={"ranking": True, "columns": _PAIR_COLUMNS},
        llamafactory_conversational=_sharegpt(
            {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}, ranking=True
        ),
        pairs=True,
        llamafactory_row=R.llamafactory_pair,
    ),
    SnapshotKind.PROMPTS: SnapshotKindRules(
        rows=R.prompt_rows,
        built_from="prompts",
        judgment_kinds=(),
        documents=False,
        llamafactory_text={"columns": {"prompt": "prompt"}},
        llamafactory_conversational=_sharegpt({"messages": "prompt"}),
    ),
    SnapshotKind.KTO: SnapshotKindRules(
        rows=R.kto_rows,
        built_from="rate judgments (pending or approved)",
        judgment_kinds=(TaskKind.RATE,),
        documents=False,
        llamafactory_text={
            "columns": {"prompt": "prompt", "response": "completion", "kto_tag": "label"}
        },
        # LLaMA-Factory reads a conversation with its reply as one `messages` list; TRL's
        # unpaired format keeps them apart, so these columns name what a reader must join.
        llamafactory_conversational=_sharegpt(
            {"messages": "prompt", "response": "completion", "kto_tag": "label"}
        ),
    ),
}
