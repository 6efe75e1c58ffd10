"""Imports: one small file of every format gives exactly the expected rows; bad input names the
line and field and changes nothing; text round-trips byte for byte."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation import rules, services
from annotation.exports import snapshot_build, snapshot_request
from annotation.imports import import_file
from annotation.models import (
    Annotation,
    ImportBatch,
    ImportRecord,
    Prompt,
    Response,
    Source,
    Task,
)


@pytest.fixture
def project(db):
    return services.project_create(name="Imp", slug="imp")


def jsonl(tmp_path: Path, name: str, rows) -> Path:
    path = tmp_path / name
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def snapshot_rows(project, kind: str) -> list[dict]:
    snap = snapshot_build(
        snapshot=snapshot_request(
            project=project, kind=kind, filters={"test_size": 0}, enqueue=False
        )
    )
    text = (Path(snap.path) / "train.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


def pair(prompt, chosen, rejected) -> dict:
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "margin": 1.0,
        "agreement": 1.0,
    }


def imported(project, path, fmt="auto", **kw):
    report = import_file(project=project, path=path, format=fmt, **kw)
    assert report.ok, report.error_lines()
    return report


# --- every format ----------------------------------------------------------------------------


def test_it_imports_prompts_from_jsonl_csv_and_parquet(project, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    imported(
        project, jsonl(tmp_path, "p.jsonl", [{"prompt": "One", "tags": ["a"]}]), "prompts-jsonl"
    )
    path = tmp_path / "p.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "tags", "language"])
        writer.writerow(["Two,\nlines ", "b,c", "en"])
    imported(project, path)
    pq.write_table(pa.Table.from_pylist([{"prompt": "Three"}]), tmp_path / "p.parquet")
    imported(project, tmp_path / "p.parquet")

    prompts = list(Prompt.objects.values_list("text", "tags", "language", "source"))
    assert prompts == [
        ("One", ["a"], "", Source.IMPORTED),
        ("Two,\nlines ", ["b", "c"], "en", Source.IMPORTED),
        ("Three", [], "", Source.IMPORTED),
    ]
    assert snapshot_rows(project, "prompts") == [
        {"prompt": "One"},
        {"prompt": "Two,\nlines "},
        {"prompt": "Three"},
    ]


def test_it_imports_every_trl_format(project, tmp_path):
    user = lambda c: {"role": "user", "content": c}  # noqa: E731
    bot = lambda c: {"role": "assistant", "content": c}  # noqa: E731
    path = jsonl(
        tmp_path,
        "trl.jsonl",
        [
            {"text": "A document."},
            {"prompt": "P1", "completion": " C1"},
            {"prompt": [user("P2")], "completion": [bot("C2")]},
            {"messages": [user("P3"), bot("C3")]},
            {"prompt": "P4", "chosen": " good", "rejected": " bad"},
            {"prompt": [user("P5")], "chosen": [bot("yes")], "rejected": [bot("no")]},
            {"chosen": "P6 is great", "rejected": "P6 is bad"},
            {"chosen": [user("P7"), bot("A")], "rejected": [user("P7"), bot("B")]},
        ],
    )

    report = imported(project, path)

    assert report.format == "trl"
    assert report.counts["documents"] == 1
    assert report.counts["demonstrations"] == 3
    assert report.counts["judgments"] == 3 + 4
    assert report.counts["pairs"] == 4
    assert snapshot_rows(project, "sft") == [
        {"prompt": "P1", "completion": " C1"},
        {"prompt": "P2", "completion": "C2"},
        {"prompt": "P3", "completion": "C3"},
    ]
    assert snapshot_rows(project, "preference") == [
        pair("P4", " good", " bad"),
        pair("P5", "yes", "no"),
        pair("P6 is", " great", " bad"),
        pair("P7", "A", "B"),
    ]
    assert snapshot_rows(project, "pretrain")[0] == {"text": "A document."}
    annotation = Annotation.objects.filter(kind="compare").first()
    assert annotation.source == Source.IMPORTED and annotation.labeler is None
    assert annotation.provenance["file"] == "trl.jsonl"
    assert annotation.provenance["format"] == "trl"
    assert annotation.provenance["line"] == 5
    assert annotation.review_status == "pending"
    assert not Task.objects.filter(status=Task.Status.OPEN).exists()  # never served to labelers


def test_it_imports_alpaca_and_sharegpt_as_llama_factory_reads_them(project, tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(
        json.dumps(
            [
                {"instruction": "Add", "input": "2 and 3", "output": "5", "system": "Be brief."},
                {"instruction": "Pick", "input": "", "chosen": "x", "rejected": "y"},
            ]
        ),
        encoding="utf-8",
    )
    sharegpt = jsonl(
        tmp_path,
        "sharegpt.jsonl",
        [
            {
                "conversations": [
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello"},
                    {"from": "human", "value": "Bye"},
                    {"from": "gpt", "value": "Ciao"},
                ]
            },
            {
                "conversations": [{"from": "human", "value": "Best?"}],
                "chosen": {"from": "gpt", "value": "me"},
                "rejected": {"from": "gpt", "value": "you"},
            },
        ],
    )

    assert imported(project, alpaca).format == "alpaca"
    assert imported(project, sharegpt).format == "sharegpt"

    assert snapshot_rows(project, "instruction") == [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Add\n2 and 3"},
                {"role": "assistant", "content": "5"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Ciao"},
            ]
        },
    ]
    prefs = snapshot_rows(project, "preference")
    # Only single-turn prompts have preferences, so the rows are standard, not conversational.
    assert prefs == [pair("Pick", "x", "y"), pair("Best?", "me", "you")]


def test_it_splits_hh_rlhf_transcripts_into_prefix_and_replies(project, tmp_path):
    path = jsonl(
        tmp_path,
        "hh.jsonl",
        [
            {
                "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell a joke\n\nAssistant: A pun.",
                "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell a joke\n\nAssistant: No.",
            },
            {
                "chosen": "\n\nHuman: 2+2?\n\nAssistant: 4",
                "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5",
            },
        ],
    )

    assert imported(project, path).format == "hh-rlhf"

    rows = snapshot_rows(project, "preference")
    assert rows[0]["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell a joke"},
    ]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "A pun."}]
    assert rows[1]["prompt"] == [{"role": "user", "content": "2+2?"}]
    assert rows[1]["rejected"] == [{"role": "assistant", "content": "5"}]


def test_it_turns_oasst_sibling_ranks_into_a_ranking(project, tmp_path):
    tree = {
        "message_tree_id": "t1",
        "prompt": {
            "message_id": "m0",
            "role": "prompter",
            "text": "Why is the sky blue?",
            "lang": "en",
            "replies": [
                {"message_id": "m2", "role": "assistant", "text": "Magic.", "rank": 2},
                {
                    "message_id": "m1",
                    "role": "assistant",
                    "text": "Rayleigh scattering.",
                    "rank": 0,
                },
                {"message_id": "m3", "role": "assistant", "text": "Dust.", "rank": 1},
            ],
        },
    }
    flat = [
        {
            "message_id": "a",
            "parent_id": None,
            "message_tree_id": "t2",
            "role": "prompter",
            "text": "Hello?",
        },
        {
            "message_id": "b",
            "parent_id": "a",
            "message_tree_id": "t2",
            "role": "assistant",
            "text": "Hi!",
            "rank": 0,
        },
    ]

    imported(project, jsonl(tmp_path, "trees.jsonl", [tree]), "oasst")
    imported(project, jsonl(tmp_path, "flat.jsonl", flat), "oasst")

    rows = snapshot_rows(project, "preference")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        ("Rayleigh scattering.", "Dust."),
        ("Rayleigh scattering.", "Magic."),
        ("Dust.", "Magic."),
    ]
    assert Prompt.objects.get(text="Why is the sky blue?").language == "en"
    assert snapshot_rows(project, "sft") == [{"prompt": "Hello?", "completion": "Hi!"}]


def test_it_imports_label_studio_pairwise_and_ranking_exports(project, tmp_path):
    export = [
        {
            "id": 11,
            "data": {"prompt": "Q1", "answer1": "left answer", "answer2": "right answer"},
            "annotations": [
                {
                    "id": 1,
                    "completed_by": 5,
                    "result": [
                        {
                            "type": "pairwise",
                            "to_name": "answer1,answer2",
                            "value": {"selected": "right"},
                        }
                    ],
                },
                {
                    "id": 2,
                    "completed_by": 6,
                    "result": [
                        {
                            "type": "pairwise",
                            "to_name": "answer1,answer2",
                            "value": {"selected": "right"},
                        }
                    ],
                },
            ],
        },
        {
            "id": 12,
            "data": {
                "prompt": "Q2",
                "items": [
                    {"id": "x", "text": "ex"},
                    {"id": "y", "text": "why"},
                    {"id": "z", "text": "zed"},
                ],
            },
            "annotations": [
                {
                    "id": 3,
                    "result": [{"type": "ranker", "value": {"ranker": {"_": ["y", "z", "x"]}}}],
                }
            ],
        },
    ]
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(export), encoding="utf-8")

    report = imported(project, path)

    assert report.format == "label-studio"
    assert report.counts["judgments"] == 3 and report.counts["pairs"] == 2 + 3
    rows = snapshot_rows(project, "preference")
    assert rows[0] == pair("Q1", "right answer", "left answer")
    assert [(r["chosen"], r["rejected"]) for r in rows[1:]] == [
        ("why", "zed"),
        ("why", "ex"),
        ("zed", "ex"),
    ]
    provenance = Annotation.objects.order_by("id").first().provenance
    assert provenance["original_id"] == "1" and provenance["completed_by"] == 5


def test_it_ranks_ultrafeedback_completions_by_score(project, tmp_path):
    path = jsonl(
        tmp_path,
        "uf.jsonl",
        [
            {
                "instruction": "Write a haiku",
                "completions": [
                    {"model": "m1", "response": "ok haiku", "overall_score": 6.5},
                    {"model": "m2", "response": "great haiku", "overall_score": 9},
                    {"model": "m3", "response": "same as ok", "overall_score": 6.5},
                ],
            }
        ],
    )

    assert imported(project, path).format == "ultrafeedback"

    rows = snapshot_rows(project, "preference")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        ("great haiku", "ok haiku"),
        ("great haiku", "same as ok"),
    ]  # the tie between the two 6.5s is dropped
    assert Response.objects.get(text="great haiku").metadata == {"model": "m2", "score": 9}


# --- re-import, dry run, byte for byte -------------------------------------------------------


def test_it_never_duplicates_on_reimport(project, tmp_path):
    path = jsonl(tmp_path, "p.jsonl", [{"prompt": "P", "chosen": "a", "rejected": "b"}])
    imported(project, path)

    second = imported(project, path)

    assert second.counts["already_imported"] == 1 and second.counts["judgments"] == 0
    assert Annotation.objects.count() == 1 and Response.objects.count() == 2


def test_it_adds_only_the_new_record_when_a_file_comes_back_reordered(project, tmp_path):
    """The re-import key is a record's content, not its place in the file: the same records in
    another order, with a new one on top, add the new one and nothing twice.

    Kills: imports/service.py _Writer.key keeps the line number in the key; _Writer.prompt
    ignores an existing prompt; _Writer.response ignores an existing response."""
    records = [
        {"prompt": "P1", "chosen": "a", "rejected": "b"},
        {"prompt": "P2", "completion": "C2"},
        {"text": "A document."},
        {"prompt": "P3", "chosen": "x", "rejected": "y"},
    ]
    imported(project, jsonl(tmp_path, "v1.jsonl", records))
    new = {"prompt": "P1", "chosen": "a", "rejected": "c"}  # a known prompt and reply, a new one

    second = imported(project, jsonl(tmp_path, "v2.jsonl", [new, *reversed(records)]))

    assert second.counts["records"] == 5 and second.counts["already_imported"] == 4
    assert (second.counts["prompts"], second.counts["responses"]) == (0, 1)
    assert (second.counts["judgments"], second.counts["pairs"]) == (1, 1)
    assert second.counts["documents"] == second.counts["demonstrations"] == 0
    assert ImportRecord.objects.count() == 5
    assert sorted(Prompt.objects.values_list("text", flat=True)) == [
        "A document.", "P1", "P2", "P3",
    ]  # fmt: skip
    assert sorted(Response.objects.values_list("text", flat=True)) == [
        "C2", "a", "b", "c", "x", "y",
    ]  # fmt: skip
    assert Annotation.objects.count() == 4  # P1 twice, P2's demonstration, P3
    assert snapshot_rows(project, "preference") == [
        pair("P1", "a", "b"),
        pair("P1", "a", "c"),
        pair("P3", "x", "y"),
    ]
    assert snapshot_rows(project, "sft") == [{"prompt": "P2", "completion": "C2"}]
    assert snapshot_rows(project, "pretrain") == [{"text": "A document."}, {"text": "P2\n\nC2"}]


def test_it_writes_nothing_on_a_dry_run(project, tmp_path):
    path = jsonl(tmp_path, "p.jsonl", [{"prompt": "P", "chosen": "a", "rejected": "b"}])

    report = imported(project, path, dry_run=True)

    assert report.counts["judgments"] == 1 and not report.written
    assert not Prompt.objects.exists() and not ImportBatch.objects.exists()


def test_it_keeps_text_byte_for_byte(project, tmp_path):
    long = "x" * 20_000
    texts = [
        "{{ 7*7 }}",
        "emoji 😀👍🏽",
        "עברית RTL \u202e",
        " padded \t",
        "line\u2028sep\u0085",
        "<b>&amp;</b>",
        "e\u0301",
    ]
    rows = [{"prompt": t, "chosen": t + long, "rejected": t + "!"} for t in texts]

    imported(project, jsonl(tmp_path, "t.jsonl", rows))

    out = snapshot_rows(project, "preference")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [
        (t, t + long, t + "!") for t in texts
    ]


# --- bad input -------------------------------------------------------------------------------


# Valid rows that come before the bad one: they must not be written either.
VALID_TRL = (
    '{"prompt": "good", "chosen": "a", "rejected": "b"}\n'
    '{"prompt": "fine", "completion": "ok"}\n'
    '{"text": "A document."}\n'
)
VALID_HH = (
    '{"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: yes",'
    ' "rejected": "\\n\\nHuman: Hi\\n\\nAssistant: no"}\n'
)


@pytest.mark.parametrize(
    ("valid", "content", "fmt", "line", "field", "message"),
    [
        (
            VALID_TRL,
            '{"prompt": "ok", "completion": "fine"}\n{"prompt": "trunc',
            "trl",
            5,
            "",
            "not valid JSON",
        ),
        (
            VALID_TRL,
            '{"prompt": "ok", "completion": "fine"}\n[1, 2]\n',
            "trl",
            5,
            "",
            "expected a JSON object",
        ),
        (
            VALID_TRL,
            '{"prompt": "a", "chosen": 5, "rejected": "b"}\n',
            "trl",
            4,
            "chosen",
            "expected text",
        ),
        (
            VALID_TRL,
            '{"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}\n',
            "trl",
            4,
            "messages[1].role",
            "unknown role 'robot'",
        ),
        ("", "", "trl", 1, "", "no records"),  # an empty file has no valid rows before
        ("", "", "auto", 1, "", "empty"),
        (
            VALID_HH,
            '{"instruction": "x", "output": "y"}\n',
            "hh-rlhf",
            2,
            "chosen",
            "missing",
        ),
        (VALID_TRL, "text,tags\nhello,a\n", "trl", 4, "", "not valid JSON"),
    ],
)
def test_it_names_line_and_field_of_bad_rows_and_changes_nothing(
    project, tmp_path, valid, content, fmt, line, field, message
):
    """All or nothing: the valid rows before the bad one (the first error is on its line) are
    not written either."""
    path = tmp_path / "bad.jsonl"
    path.write_text(valid + content, encoding="utf-8")

    report = import_file(project=project, path=path, format=fmt)

    assert not report.ok and not report.written
    first = report.errors[0]
    assert (first["line"], first["field"]) == (line, field)
    assert message in first["message"]
    assert not Prompt.objects.exists() and not Response.objects.exists()
    assert not Annotation.objects.exists() and not Task.objects.exists()
    assert not ImportBatch.objects.exists() and not ImportRecord.objects.exists()


def test_imported_rows_are_written_through_the_services_and_checked_as_they_check(
    project, tmp_path
):
    """The importer writes prompts, responses, tasks and judgments through the annotation
    services, so an imported row meets the rules every other write meets: an empty reply is
    refused as a labeler's empty demonstration is, a ranking of more responses than a task takes
    as task_create refuses it, tags are cleaned as the prompt service cleans them, and a
    comparison is stored in the shape a labeler's submission has. Before, the importer wrote the
    rows itself and took all of these as they came."""
    many = [{"response": f"r{i}", "overall_score": i} for i in range(10)]
    rows = [
        {"prompt": "P1", "completion": ""},
        {"instruction": "P2", "completions": many},
        {"prompt": "P3", "chosen": "a", "rejected": "b", "tags": [" x ", "y"]},
    ]
    path = jsonl(tmp_path, "rows.jsonl", rows[:1])
    report = import_file(project=project, path=path, format="trl", skip_invalid=True)
    assert [(e["line"], e["field"]) for e in report.errors] == [(1, "responses[0]")]
    assert "must not be empty" in report.errors[0]["message"]
    path = jsonl(tmp_path, "uf.jsonl", [rows[1], {**rows[1], "instruction": "P4"}])
    report = import_file(project=project, path=path, format="ultrafeedback", skip_invalid=True)
    assert [(e["line"], e["field"]) for e in report.errors] == [(1, "responses"), (2, "responses")]
    assert "a rank task takes 2–9 responses, got 10" in report.errors[0]["message"]
    assert not Task.objects.exists() and not Response.objects.exists()
    assert {name: n for name, n in report.counts.items() if n} == {"rejected": 2}

    imported(project, jsonl(tmp_path, "pair.jsonl", rows[2:]), "trl")

    assert Prompt.objects.get(text="P3").tags == ["x", "y"]
    task = Task.objects.get()
    labeler_shape = rules.validate_payload(task, {"winner": task.candidate_ids()[0]})
    assert Annotation.objects.get().payload == labeler_shape


def test_it_imports_where_a_bulk_insert_returns_no_ids(project, tmp_path, monkeypatch):
    """SQLite before 3.35 returns no ids from a bulk insert; the services then insert row by row
    and every imported row still points at the rows it belongs to."""
    from django.db import connection

    features = type(connection.features)
    monkeypatch.setattr(features, "can_return_rows_from_bulk_insert", False)
    rows = [{"prompt": "P", "chosen": "a", "rejected": "b"}, {"prompt": "Q", "completion": "C"}]

    imported(project, jsonl(tmp_path, "rows.jsonl", rows))

    assert snapshot_rows(project, "preference") == [pair("P", "a", "b")]
    demonstration = Annotation.objects.get(kind="demonstration")
    assert Response.objects.get(text="C").metadata == {"annotation": demonstration.pk}


def test_it_imports_good_rows_and_writes_rejects_when_asked(project, tmp_path):
    path = jsonl(
        tmp_path,
        "mixed.jsonl",
        [{"prompt": "P1", "completion": "C1"}, "{oops", {"prompt": "P2", "completion": 3}],
    )

    report = import_file(
        project=project, path=path, skip_invalid=True, reject_path=tmp_path / "rejects.jsonl"
    )

    assert report.counts["demonstrations"] == 1 and report.counts["rejected"] == 2
    rejects = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().split("\n") if x]
    assert [(r["line"], r["field"]) for r in rejects] == [(2, ""), (3, "completion")]


def test_the_command_reports_counts_and_fails_on_rejected_rows(project, tmp_path, capsys):
    good = jsonl(tmp_path, "good.jsonl", [{"prompt": "P", "chosen": "a", "rejected": "b"}])
    call_command("import_data", "new-proj", str(good), "--create-project")
    out = capsys.readouterr().out
    assert "1 prompts, 2 responses, 1 judgments, 1 pairs" in out

    bad = jsonl(tmp_path, "bad.jsonl", [{"prompt": "P", "chosen": 1, "rejected": "b"}])
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_data", "imp", str(bad))
    assert "bad.jsonl: line 1, field 'chosen': expected text" in capsys.readouterr().err
    with pytest.raises(CommandError, match="--create-project"):
        call_command("import_data", "missing", str(good))


def test_the_command_dry_run_reports_counts_and_writes_nothing(project, data_dir, capsys):
    """`import_data --dry-run` says what it would import and writes nothing, not even the
    records that make a later import skip rows as already imported.

    Kills: imports/service.py import_file never raises _DryRun (a dry run writes);
    import_data passes dry_run=False."""
    data_dir.mkdir(parents=True)
    rows = [
        {"prompt": "P1", "chosen": "a", "rejected": "b"},
        {"prompt": "P2", "completion": "C2"},
        {"text": "A document."},
    ]
    path = jsonl(data_dir, "p.jsonl", rows)

    call_command("import_data", "imp", str(path), "--dry-run")

    assert capsys.readouterr().out == (
        "would import into imp (trl): 3 prompts, 3 responses, 2 judgments, 1 pairs, "
        "1 documents, 1 demonstrations; 0 records already imported, 0 rejected\n"
    )
    for model in (Prompt, Response, Task, Annotation, ImportBatch, ImportRecord):
        assert not model.objects.exists(), model.__name__
    assert sorted(p.name for p in data_dir.iterdir()) == ["p.jsonl"]

    call_command("import_data", "imp", str(path))

    assert capsys.readouterr().out.startswith(
        "imported into imp (trl): 3 prompts, 3 responses, 2 judgments, 1 pairs"
    )
    assert ImportRecord.objects.count() == 3 and Annotation.objects.count() == 2


def test_the_command_skip_invalid_imports_good_rows_and_writes_rejects_beside_the_file(
    project, data_dir, capsys
):
    """`import_data --skip-invalid` imports the good rows, writes each bad one (line, field,
    message) to FILE.rejects.jsonl beside the file, and fails naming how many it rejected.

    Kills: import_data passes skip_invalid=False or no reject_path; imports/service.py
    _write_all writes no reject line."""
    folder = data_dir / "imports"
    folder.mkdir(parents=True)
    path = jsonl(
        folder,
        "mixed.jsonl",
        [
            {"prompt": "P1", "chosen": "a", "rejected": "b"},
            "{oops",
            {"prompt": "P3", "chosen": 1, "rejected": "b"},
            {"prompt": "P4", "completion": "C4"},
        ],
    )

    with pytest.raises(CommandError, match="2 rows were rejected"):
        call_command("import_data", "imp", str(path), "--skip-invalid")

    rejects = folder / "mixed.jsonl.rejects.jsonl"
    out, err = capsys.readouterr()
    assert "2 prompts, 3 responses, 2 judgments, 1 pairs" in out and "2 rejected" in out
    assert f"bad rows written to {rejects}" in out
    assert f"{path}: line 3, field 'chosen': expected text" in err
    assert sorted(p.name for p in folder.iterdir()) == ["mixed.jsonl", rejects.name]
    lines = rejects.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    assert [(r["line"], r["field"]) for r in map(json.loads, lines[:-1])] == [
        (2, ""),
        (3, "chosen"),
    ]
    assert sorted(Prompt.objects.values_list("text", flat=True)) == ["P1", "P4"]
    assert snapshot_rows(project, "preference") == [pair("P1", "a", "b")]
    assert snapshot_rows(project, "sft") == [{"prompt": "P4", "completion": "C4"}]


def test_a_dry_run_that_skips_invalid_rows_writes_no_reject_file(project, data_dir, capsys):
    """`import_data --dry-run --skip-invalid` counts the rows it would reject and writes
    nothing at all: no rows, and no FILE.rejects.jsonl beside the file (it used to)."""
    folder = data_dir / "imports"
    folder.mkdir(parents=True)
    path = jsonl(
        folder,
        "mixed.jsonl",
        [{"prompt": "P1", "chosen": "a", "rejected": "b"}, "{oops"],
    )

    with pytest.raises(CommandError, match="1 rows would be rejected; nothing was written"):
        call_command("import_data", "imp", str(path), "--dry-run", "--skip-invalid")

    out = capsys.readouterr().out
    assert out.startswith("would import into imp (trl): 1 prompts") and "1 rejected" in out
    assert "written to" not in out
    assert sorted(p.name for p in folder.iterdir()) == ["mixed.jsonl"]
    assert not Prompt.objects.exists() and not ImportRecord.objects.exists()
