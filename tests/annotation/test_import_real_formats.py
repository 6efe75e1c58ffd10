"""The public datasets as their producers write them: a bad record is refused by line (JSONL,
CSV) or index (JSON array) and field, the whole file with it; a well-formed record with nothing
to learn from is imported as what it is, or skipped, and counted in the report's notices."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from annotation import services
from annotation.exports import snapshot_build, snapshot_request
from annotation.imports import import_file
from annotation.models import (
    Annotation,
    ImportBatch,
    ImportRecord,
    Prompt,
    Response,
    Role,
    Task,
)

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytestmark = pytest.mark.django_db

user = lambda c: {"role": "user", "content": c}  # noqa: E731
bot = lambda c: {"role": "assistant", "content": c}  # noqa: E731


@pytest.fixture
def project(settings, tmp_path, make_user):
    settings.DATA_DIR = tmp_path / "data"
    project = services.project_create(name="Real", slug="real")
    services.membership_set(project=project, user=make_user("lab"), role=Role.LABELER)
    return project


def jsonl(tmp_path: Path, rows, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def array(tmp_path: Path, rows, name: str = "in.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")  # all on line 1
    return path


def imported(project, path, fmt="auto"):
    report = import_file(project=project, path=path, format=fmt)
    assert report.ok, report.error_lines()
    assert report.written
    return report


def build(project, kind: str, **filters):
    snap = snapshot_request(
        project=project, kind=kind, filters={"test_size": 0, **filters}, enqueue=False
    )
    return Path(snapshot_build(snapshot=snap).path)


def rows_of(path: Path, name: str = "train.jsonl") -> list[dict]:
    return [json.loads(line) for line in (path / name).read_text("utf-8").splitlines() if line]


def pairs(project, **filters) -> list[tuple]:
    return [
        (r["prompt"], r["chosen"], r["rejected"])
        for r in rows_of(build(project, "preference", **filters))
    ]


def nothing_written() -> bool:
    return not (
        Prompt.objects.exists()
        or Response.objects.exists()
        or Task.objects.exists()
        or Annotation.objects.exists()
        or ImportBatch.objects.exists()
        or ImportRecord.objects.exists()
    )


# --- bad input: refused whole, named ---------------------------------------------------------

GOOD = '{"prompt": "good", "chosen": "a", "rejected": "b"}\n'
GOOD_HH = '{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b"}\n'
GOOD_SHAREGPT = (
    '{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}\n'
)


@pytest.mark.parametrize(
    ("content", "line", "field", "message"),
    [
        ('{"prompt": "p", "chosen": NaN, "rejected": "b"}', 2, "chosen", "NaN is not a JSON"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": Infinity}', 2, "margin",
         "Infinity is not a JSON"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "w": [1, -Infinity]}', 2, "w[1]",
         "-Infinity is not a JSON"),
        ('{"prompt": "p\\ud800", "chosen": "a", "rejected": "b"}', 2, "prompt",
         "a lone surrogate (\\ud800) at character 1"),
        ('{"prompt": "p", "chosen": "a", "rejected": "\\udfff!"}', 2, "rejected",
         "lone surrogate"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "tags": {"\\ud800": 1}}', 2,
         "tags.\\ud800", "a key: a lone surrogate"),
        ('{"prompt": "p", "chosen": "a"}', 2, "rejected", "missing"),
        ('{"prompt": "p", "rejected": "a"}', 2, "chosen", "missing"),
        ('{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a"}', 2, "rejected", "missing"),
        ('{"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", '
         '"value": "a"}}', 2, "rejected", "missing"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_whole_with_line_and_field(
    project, tmp_path, content, line, field, message
):
    """NaN and Infinity are not JSON (RFC 8259) though Python reads them; a lone surrogate
    escape decodes to text no UTF-8 database holds (the import's hashing raised a
    UnicodeEncodeError traceback); a pair without its rejected side was imported as a bare
    prompt, its chosen dropped without a word (or, alone, as nothing at all, exit 0)."""
    fmt = "sharegpt" if "conversations" in content else "hh-rlhf" if "Human" in content else "trl"
    good = {"sharegpt": GOOD_SHAREGPT, "hh-rlhf": GOOD_HH}.get(fmt, GOOD)
    path = tmp_path / "bad.jsonl"
    path.write_text(good + content + "\n", "utf-8")

    report = import_file(project=project, path=path, format=fmt)

    assert not report.ok and not report.written
    (error,) = report.errors
    assert (error["line"], error["field"]) == (line, field)
    assert message in error["message"]
    assert nothing_written()


def test_a_pair_without_rejected_alone_in_a_file_is_refused_not_imported_as_nothing(
    project, tmp_path
):
    report = import_file(
        project=project, path=jsonl(tmp_path, [{"prompt": "p", "chosen": "a"}]), format="auto"
    )

    assert report.error_lines() == [
        "line 1, field 'rejected': missing: a preference row needs both chosen and rejected "
        "(chosen is here)"
    ]
    assert nothing_written()


def test_records_of_a_json_array_are_named_by_index(project, tmp_path):
    """A compact JSON array is all on line 1: its records are named by their index."""
    rows = [
        {"prompt": "a", "chosen": "x", "rejected": "y"},
        {"prompt": "b", "completion": "c"},
        {"prompt": "c", "chosen": 5, "rejected": "y"},
        {"prompt": "d", "chosen": "x"},
    ]

    report = import_file(project=project, path=array(tmp_path, rows), format="trl")

    assert report.errors == [
        {"index": 2, "field": "chosen", "message": "expected text or a list of messages, got int"},
        {"index": 3, "field": "rejected",
         "message": "missing: a preference row needs both chosen and rejected (chosen is here)"},
    ]  # fmt: skip
    assert report.error_lines()[0].startswith("index 2, field 'chosen': ")
    assert nothing_written()


def test_rows_imported_from_a_json_array_keep_their_index_as_provenance(project, tmp_path):
    rows = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "completion": "c"}]

    imported(project, array(tmp_path, rows), "trl")

    demonstration = Annotation.objects.get(kind="demonstration")
    assert demonstration.provenance["index"] == 1 and "line" not in demonstration.provenance
    assert Prompt.objects.get(text="a").metadata["import"] == {
        "file": "in.json", "format": "trl", "index": 0
    }  # fmt: skip
    assert list(ImportRecord.objects.order_by("line").values_list("line", flat=True)) == [0, 1]


def test_nan_in_a_json_array_is_refused_by_index(project, tmp_path):
    path = tmp_path / "in.json"
    path.write_text('[{"text": "ok"}, {"text": "x", "score": NaN}]', encoding="utf-8")

    report = import_file(project=project, path=path, format="trl")

    assert report.errors == [
        {"index": 1, "field": "score",
         "message": "NaN is not a JSON number (RFC 8259); write a number or null"}
    ]  # fmt: skip
    assert nothing_written()


# --- HH-RLHF ---------------------------------------------------------------------------------


def test_hh_rlhf_equal_sides_are_a_tie_not_a_refusal(project, tmp_path):
    """Before: `field 'responses': two responses are identical` and nothing imported."""
    same = "\n\nHuman: Hi\n\nAssistant: Hello."
    path = jsonl(
        tmp_path,
        [
            {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"},
            {"chosen": same, "rejected": same},
        ],
    )  # fmt: skip

    report = imported(project, path)

    assert report.format == "hh-rlhf"
    assert report.notices == {"tie": 1}
    assert report.notice_examples == [
        {"line": 2, "field": "responses", "reason": "tie",
         "message": "both sides are the same reply: a tie with nothing to learn from; imported "
                    "as the prompt and its response, no pair"},
    ]  # fmt: skip
    assert (report.counts["prompts"], report.counts["responses"]) == (2, 3)
    assert (report.counts["judgments"], report.counts["pairs"]) == (1, 1)
    tie = Prompt.objects.get(text="Hi")
    assert list(tie.responses.values_list("text", flat=True)) == ["Hello."]
    assert not Task.objects.filter(prompt=tie).exists()
    assert pairs(project) == [("2+2?", "4", "5")]
    batch = ImportBatch.objects.get()
    assert batch.notices == {"counts": {"tie": 1}, "examples": report.notice_examples}


# --- Label Studio ----------------------------------------------------------------------------


def _pairwise(selected: str, **extra) -> dict:
    result = {"type": "pairwise", "to_name": "answer1,answer2", "value": {"selected": selected}}
    return {"result": [result], **extra}


def test_label_studio_export_of_a_live_project(project, tmp_path):
    """Cancelled, empty and unannotated tasks are counted and skipped (before: the whole file
    was refused); two annotators give two judgments; a ground-truth annotation makes a gold task;
    predictions are kept as metadata, never judgments."""
    data = lambda q: {"prompt": q, "answer1": f"{q} left", "answer2": f"{q} right"}  # noqa: E731
    prediction = {"model_version": "v1", "result": _pairwise("left")["result"]}
    export = [
        {"id": 1, "data": data("Q1"), "annotations": [
            _pairwise("right", id=10, completed_by=5),
            _pairwise("right", id=11, completed_by=6),
            _pairwise("left", id=12, completed_by=7, was_cancelled=True),
        ], "predictions": [prediction]},
        {"id": 2, "data": data("Q2"), "annotations": [], "predictions": [prediction]},
        {"id": 3, "data": data("Q3"), "annotations": [{"id": 13, "result": []}]},
        {"id": 4, "data": data("Q4"), "annotations": [_pairwise("left", id=14, was_cancelled=True)]},
        {"id": 5, "data": data("Q5"), "annotations": [_pairwise("left", id=15, ground_truth=True)]},
    ]  # fmt: skip

    report = imported(project, array(tmp_path, export))

    assert report.format == "label-studio"
    assert report.notices == {
        "model predictions": 2,
        "cancelled annotation": 2,
        "unannotated task": 1,
        "empty annotation": 1,
    }
    assert [(e["reason"], e.get("index"), e["field"]) for e in report.notice_examples] == [
        ("model predictions", 0, "predictions"),
        ("cancelled annotation", 0, "annotations[2]"),
        ("model predictions", 1, "predictions"),
        ("unannotated task", 1, "annotations"),
        ("empty annotation", 2, "annotations[0].result"),
        ("cancelled annotation", 3, "annotations[0]"),
    ]
    assert report.counts["judgments"] == 2 and report.counts["gold_tasks"] == 1
    judged = Annotation.objects.order_by("id")
    assert [(a.provenance["original_id"], a.provenance["completed_by"]) for a in judged] == [
        ("10", 5),
        ("11", 6),
    ]
    assert pairs(project) == [("Q1", "Q1 right", "Q1 left")]
    assert Prompt.objects.get(text="Q1").metadata["label_studio"] == {"predictions": [prediction]}
    gold = Task.objects.get(is_gold=True)
    assert gold.prompt.text == "Q5" and gold.status == Task.Status.OPEN
    assert gold.gold_answer["winner"] == gold.candidates.get(text="Q5 left").pk
    assert not Prompt.objects.filter(text__in=["Q2", "Q3", "Q4"]).exists()


# --- UltraFeedback ---------------------------------------------------------------------------


def _completion(model: str, text: str, overall, help_rating="4", honesty="N/A") -> dict:
    return {
        "model": model,
        "response": text,
        "overall_score": overall,
        "fine-grained_score": 4.25,
        "annotations": {
            "helpfulness": {"Rating": help_rating, "Rationale": "..."},
            "honesty": {"Rating": honesty, "Rationale": "..."},
        },
        "critique": "...",
    }


def test_ultrafeedback_raw_rows_keep_every_completion_and_tie_equal_scores(project, tmp_path):
    """openbmb/UltraFeedback: string ratings, "N/A" aspects, a tie for the top score, and a
    row with a single completion (before: refused)."""
    path = jsonl(
        tmp_path,
        [
            {"source": "evol", "instruction": "Haiku?", "completions": [
                _completion("m1", "h1", 8.5), _completion("m2", "h2", 8.5, "5"),
                _completion("m3", "h3", 3, "2", "3")]},
            {"source": "evol", "instruction": "Alone?", "completions": [
                _completion("m4", "only", 7)]},
            {"source": "evol", "instruction": "Nobody?", "completions": []},
        ],
    )  # fmt: skip

    report = imported(project, path, "ultrafeedback")

    assert report.notices == {"single completion": 1, "no completions": 1}
    assert not Prompt.objects.get(text="Nobody?").responses.exists()
    assert (report.counts["responses"], report.counts["judgments"]) == (4, 1)
    ranking = Annotation.objects.get().payload["ranking"]
    ids = {r.text: r.pk for r in Response.objects.all()}
    assert ranking == [sorted([ids["h1"], ids["h2"]]), [ids["h3"]]]
    assert Response.objects.get(text="h2").metadata == {
        "model": "m2",
        "score": 8.5,
        "fine_grained_score": 4.25,
        "ratings": {"helpfulness": 5, "honesty": None},
    }
    alone = Response.objects.get(text="only")
    assert alone.prompt.text == "Alone?" and alone.metadata["score"] == 7
    assert not Task.objects.filter(prompt=alone.prompt).exists()
    assert sorted(pairs(project)) == [("Haiku?", "h1", "h3"), ("Haiku?", "h2", "h3")]


BINARIZED = [
    {
        "prompt": "Name a colour.",
        "prompt_id": "abc",
        "chosen": [user("Name a colour."), bot("Blue.")],
        "rejected": [user("Name a colour."), bot("Cat.")],
        "messages": [user("Name a colour."), bot("Blue.")],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    },
    {
        "prompt": "Name a colour.",
        "prompt_id": "abc",  # not unique in the dataset
        "chosen": [user("Name a colour."), bot("Red.")],
        "rejected": [user("Name a colour."), bot("Dog.")],
        "messages": [user("Name a colour."), bot("Red.")],
        "score_chosen": 8.0,
        "score_rejected": 1.0,
    },
]


@pytest.mark.parametrize("fmt", ["ultrafeedback", "auto"])
def test_ultrafeedback_binarized_rows(project, tmp_path, fmt):
    """HuggingFaceH4/ultrafeedback_binarized: before, refused by --format ultrafeedback and by
    auto (read as TRL, whose chosen must be one assistant message)."""
    report = imported(project, jsonl(tmp_path, BINARIZED), fmt)

    assert report.format == "ultrafeedback" and report.counts["pairs"] == 2
    assert pairs(project) == [
        ("Name a colour.", "Blue.", "Cat."),
        ("Name a colour.", "Red.", "Dog."),
    ]
    assert Response.objects.get(text="Cat.").metadata == {"score": 2.0}
    assert Prompt.objects.get().metadata["prompt_id"] == "abc"


# --- TRL -------------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city."}},
            "required": ["city"],
        },
    },
}
TOOL_ROW = {
    "messages": [
        user("Weather in Paris?"),
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "name": "get_weather", "content": "22 degrees"},
        bot("It is 22 degrees in Paris."),
    ],
    "tools": [WEATHER_TOOL],
}


def test_trl_tool_calling_rows_are_kept_and_written_back_unchanged(project, tmp_path):
    """TRL's tool calling format (https://huggingface.co/docs/trl/dataset_formats#tool-calling).
    Before: `messages[1].content: expected text, got NoneType`, nothing imported."""
    plain = {"messages": [user("Hi"), bot("Hello")]}

    report = imported(project, jsonl(tmp_path, [TOOL_ROW, plain]))

    assert report.counts["demonstrations"] == 2 and report.notices == {}
    prompt = Prompt.objects.get(text="")
    assert prompt.messages == [
        user("Weather in Paris?"),
        bot('[tool call] {"name": "get_weather", "arguments": {"city": "Paris"}}'),
        user("[tool result from get_weather]\n22 degrees"),
    ]
    assert rows_of(build(project, "sft")) == [TOOL_ROW, plain]
    assert rows_of(build(project, "instruction")) == [TOOL_ROW, plain]


def test_trl_implicit_prompt_follows_extract_prompt(project, tmp_path):
    """The longest common message prefix is the prompt; each side keeps its several messages
    (before: refused when an earlier assistant turn differed too)."""
    row = {
        "chosen": [user("Hi"), bot("Hello!"), user("Joke?"), bot("A pun.")],
        "rejected": [user("Hi"), bot("Go away."), user("Joke?"), bot("No.")],
    }
    plain = {"chosen": [user("2+2?"), bot("4")], "rejected": [user("2+2?"), bot("5")]}

    imported(project, jsonl(tmp_path, [row, plain]), "trl")

    chosen = Response.objects.get(text="Hello!\n\nJoke?\n\nA pun.")
    assert chosen.metadata == {"messages": row["chosen"][1:]}

    snapshot = build(project, "preference")
    rows = rows_of(snapshot)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        ([user("Hi")], row["chosen"][1:], row["rejected"][1:]),
        ([user("2+2?")], [bot("4")], [bot("5")]),
    ]
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert manifest["llamafactory"] == {
        "train": {"path": "train.llamafactory.jsonl", "rows": 1, "left_out": 1}
    }
    # Ordered by a Bradley-Terry consensus, the sides are the same.
    from annotation.quality import consensus_compute

    consensus_compute(project=project)
    ordered = rows_of(build(project, "preference", aggregate="bradley_terry"))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in ordered] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in rows
    ]


def test_an_empty_language_modeling_text_is_skipped_with_a_notice(project, tmp_path):
    """Before: `{"text": ""}` was refused, and with it the whole file."""
    report = imported(project, jsonl(tmp_path, [{"text": "A document."}, {"text": ""}]), "trl")

    assert report.counts["documents"] == 1
    assert report.notices == {"empty text": 1}
    assert report.notice_examples == [
        {"line": 2, "field": "text", "reason": "empty text",
         "message": "an empty text: nothing to learn from; skipped"}
    ]  # fmt: skip
    assert rows_of(build(project, "pretrain")) == [{"text": "A document."}]


# --- OpenAssistant ---------------------------------------------------------------------------


def test_oasst_keeps_review_and_quality_labels_and_skips_deleted_messages(project, tmp_path):
    labels = {"name": ["spam", "quality"], "value": [0.0, 0.75], "count": [3, 3]}
    tree = {
        "message_tree_id": "t1",
        "prompt": {
            "message_id": "p", "role": "prompter", "text": "Why is the sky blue?", "lang": "en",
            "review_count": 3, "review_result": True, "deleted": False, "labels": labels,
            "replies": [
                {"message_id": "a", "role": "assistant", "text": "Rayleigh scattering.",
                 "rank": 0, "review_result": True, "labels": labels},
                {"message_id": "b", "role": "assistant", "text": "Spam!", "rank": 1,
                 "deleted": True, "replies": [
                     {"message_id": "c", "role": "prompter", "text": "What?", "replies": []}]},
                {"message_id": "d", "role": "assistant", "text": "Dust.", "rank": 2},
            ],
        },
    }  # fmt: skip

    report = imported(project, jsonl(tmp_path, [tree]), "oasst")

    assert report.notices == {"deleted message": 1}
    assert report.notice_examples[0]["message"] == (
        "a deleted message and the 1 reply below it; skipped"
    )
    assert report.notice_examples[0]["field"] == "prompt.replies[1]"
    assert pairs(project) == [("Why is the sky blue?", "Rayleigh scattering.", "Dust.")]
    prompt = Prompt.objects.get(text="Why is the sky blue?")
    assert prompt.metadata["oasst"]["prompt"] == {
        "review_count": 3, "review_result": True, "deleted": False, "labels": labels
    }  # fmt: skip
    assert Response.objects.get(text="Rayleigh scattering.").metadata == {
        "oasst": {"review_result": True, "labels": labels}
    }
    assert not Response.objects.filter(text="Spam!").exists()
    assert not Prompt.objects.filter(text__contains="What?").exists()


def test_oasst_flat_messages_skip_a_deleted_reply_and_what_is_below_it(project, tmp_path):
    """oasst2's flat message rows (one message a line, by message_tree_id)."""
    row = lambda mid, parent, role, text, **kw: {  # noqa: E731
        "message_id": mid, "parent_id": parent, "message_tree_id": "t", "role": role,
        "text": text, **kw,
    }  # fmt: skip
    rows = [
        row("p", None, "prompter", "Hello?", review_count=2),
        row("a", "p", "assistant", "Hi!", rank=0),
        row("b", "p", "assistant", "Go away.", rank=1, deleted=True),
        row("c", "b", "prompter", "Rude."),
        row("d", "c", "assistant", "Sorry."),
        row("e", "p", "assistant", "Hey.", rank=2),
    ]

    report = imported(project, jsonl(tmp_path, rows), "oasst")

    assert report.notices == {"deleted message": 3}
    assert [(e["line"], e["field"]) for e in report.notice_examples] == [
        (3, "deleted"), (4, "parent_id"), (5, "parent_id")
    ]  # fmt: skip
    assert pairs(project) == [("Hello?", "Hi!", "Hey.")]
    assert Prompt.objects.get().metadata["oasst"] == {"prompt": {"review_count": 2}}


# --- LLaMA-Factory reads our conversational preference snapshot back -------------------------


def llamafactory_sharegpt_pairs(directory: Path) -> list[tuple]:
    """Every pair LLaMA-Factory reads from a snapshot's `dataset_info.json`, by its own rules,
    written down from hiyouga/LLaMA-Factory, src/llamafactory/data/converter.py,
    `SharegptDatasetConverter.__call__` (and `parser.py`'s `DatasetAttr` defaults, whose
    observation/function tags are "observation"/"function_call"):

    - `messages = example[columns.messages]`; a first message whose role tag is the system tag
      is taken out as the system prompt;
    - the rest must alternate, turn 0 in (user, observation), turn 1 in (assistant, function),
      ...: any other role is "Invalid role tag" and the example is skipped;
    - with `ranking`, the number of messages must be odd (it ends with the user), or "Invalid
      message count" and the example is skipped;
    - it is a pair only when `ranking` and `isinstance(example[chosen], dict)` and
      `isinstance(example[rejected], dict)`, each with a role in (assistant, function); then
      `_prompt` is the messages and `_response` is [chosen, rejected]. Otherwise it is a
      "normal example" (`_response` = the last message), which the pairwise processor drops.
    """
    (entry,) = json.loads((directory / "dataset_info.json").read_text()).values()
    assert entry["formatting"] == "sharegpt" and entry["ranking"] is True
    columns, tags = entry["columns"], entry["tags"]
    user_tag, assistant_tag = tags["user_tag"], tags["assistant_tag"]
    accept = ((user_tag, "observation"), (assistant_tag, "function_call"))
    role, content = tags["role_tag"], tags["content_tag"]
    out = []
    for line in (directory / entry["file_name"]).read_text("utf-8").splitlines():
        example = json.loads(line)
        messages = example[columns["messages"]]
        system = ""
        if messages and messages[0][role] == tags["system_tag"]:
            system, messages = messages[0][content], messages[1:]
        if any(m[role] not in accept[i % 2] for i, m in enumerate(messages)):
            continue
        if len(messages) % 2 == 0:
            continue
        chosen, rejected = example[columns["chosen"]], example[columns["rejected"]]
        if not (isinstance(chosen, dict) and isinstance(rejected, dict)):
            continue
        if chosen[role] not in accept[-1] or rejected[role] not in accept[-1]:
            continue
        prompt = tuple((m[role], m[content]) for m in messages)
        out.append((system, prompt, chosen[content], rejected[content]))
    return out


def test_llamafactory_reads_every_pair_of_a_conversational_preference_snapshot(project, tmp_path):
    """Before: `chosen`/`rejected` were one-message lists, which LLaMA-Factory's converter
    takes as a normal example, not a pair: it dropped every row."""
    hh = [
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: A pun.",
         "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: No."},
        {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"},
    ]  # fmt: skip
    sharegpt = {
        "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Q"}],
        "chosen": {"from": "gpt", "value": "kind"},
        "rejected": {"from": "gpt", "value": "rude"},
    }
    imported(project, jsonl(tmp_path, hh, "hh.jsonl"))
    imported(project, jsonl(tmp_path, [sharegpt], "sg.jsonl"), "sharegpt")

    snapshot = build(project, "preference")

    trl_rows = rows_of(snapshot)
    assert len(trl_rows) == 3
    assert llamafactory_sharegpt_pairs(snapshot) == [
        ("", (("user", "Hi"), ("assistant", "Hello!"), ("user", "Joke?")), "A pun.", "No."),
        ("", (("user", "2+2?"),), "4", "5"),
        ("Be kind.", (("user", "Q"),), "kind", "rude"),
    ]
    # The same pairs as the TRL rows beside them.
    assert [
        (r["prompt"][-1]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"])
        for r in trl_rows
    ] == [("Joke?", "A pun.", "No."), ("2+2?", "4", "5"), ("Q", "kind", "rude")]


# --- a TRL trainer step on the tool calling SFT snapshot --------------------------------------

TOOL_TEMPLATE = (
    "{% if tools %}{{ '<|tools|>\n' }}{% for t in tools %}{{ t['function']['name'] + '\n' }}"
    "{% endfor %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}{% generation %}"
    "{% if message.get('tool_calls') %}{% for c in message['tool_calls'] %}"
    "{{ 'call ' + c['function']['name'] + ' ' + c['function']['arguments']['city'] + '\n' }}"
    "{% endfor %}{% else %}{{ message['content'] }}{% endif %}{{ eos_token }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def test_sft_trainer_takes_a_step_on_a_tool_calling_snapshot(project, tmp_path):
    """SFTTrainer renders the snapshot's `tools` and `tool_calls` through the chat template (a
    tool-aware one, since the tiny tokenizer's default knows no tools) and trains a step."""
    import math

    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from training.engine.tiny import tiny_llama, train_tokenizer

    words = "weather in paris it is degrees get_weather call the a".split()
    corpus = [" ".join(words[(i * 3 + j) % len(words)] for j in range(10)) for i in range(100)]
    train_tokenizer(corpus, tmp_path / "tok", vocab_size=200)
    policy = tiny_llama(tmp_path / "tok", tmp_path / "policy", hidden_size=32, intermediate=64)
    rows = [TOOL_ROW, {"messages": [user("Hi"), bot("Hello")]}]
    imported(project, jsonl(tmp_path, rows))
    snapshot = build(project, "sft")

    ds = load_dataset("json", data_files=str(snapshot / "train.jsonl"))["train"]
    tok = AutoTokenizer.from_pretrained(str(policy))
    tok.chat_template = TOOL_TEMPLATE
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(policy)),
        args=SFTConfig(
            output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=2,
            learning_rate=1e-3, use_cpu=True, bf16=False, report_to=[], save_strategy="no",
            max_length=128,
        ),
        train_dataset=ds,
        processing_class=tok,
    )  # fmt: skip
    text = tok.decode(trainer.train_dataset[0]["input_ids"])
    assert "<|tools|>" in text and "call get_weather Paris" in text
    assert "<|tool|>\n22 degrees" in text

    result = trainer.train()

    assert trainer.state.global_step == 1 and math.isfinite(result.training_loss)


# --- where the notices are read: the command line, the admin's import batch ------------------


def test_notices_are_printed_by_the_command_and_shown_on_the_batch_page(
    project, tmp_path, client, make_user
):
    from io import StringIO

    from django.core.management import call_command

    same = "\n\nHuman: Hi\n\nAssistant: Hello."
    path = jsonl(tmp_path, [{"chosen": same, "rejected": same}], "tie.jsonl")
    out = StringIO()

    call_command("import_data", "real", str(path), "--format", "hh-rlhf", stdout=out)

    text = out.getvalue()
    assert "notice: 1 × tie (e.g. line 1: both sides are the same reply" in text
    curator = make_user("cur")
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    client.force_login(curator)
    batch = ImportBatch.objects.get()
    page = client.get(f"/admin/annotation/importbatch/{batch.pk}/change/").content.decode()
    assert "<div>tie: 1</div>" in page
    assert "e.g. tie at line 1, field responses: both sides are the same reply" in page
