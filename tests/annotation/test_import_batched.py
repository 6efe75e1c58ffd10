"""The importer's set-wise writer (chunks of records) writes exactly what the per-row path
writes: the same prompts, responses, tasks, judgments, import records and batches, in the same
order, and the same reports, for a file of every format's reader with ties, gold tasks,
demonstrations beside pairs on one prompt, repeated records, a bad row skipped and a re-import.
`CHUNK_ROWS = 1` is the per-row path (one record at a time through the per-row services)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from annotation import services
from annotation.imports import import_file
from annotation.imports import service as importer
from annotation.models import Annotation, ImportBatch, ImportRecord, Prompt, Response, Task


def _jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def _completion(model: str, text: str, overall, rating="4") -> dict:
    aspects = {"helpfulness": {"Rating": rating, "Rationale": "r"},
               "honesty": {"Rating": "N/A", "Rationale": "r"}}  # fmt: skip
    return {"model": model, "response": text, "annotations": aspects, "overall_score": overall,
            "fine-grained_score": 4.0, "critique": "c"}  # fmt: skip


def _pairwise(selected: str, **extra) -> dict:
    result = {"type": "pairwise", "to_name": "answer1,answer2", "value": {"selected": selected}}
    return {"result": [result], **extra}


def files(tmp_path: Path) -> list[tuple[Path, str, dict]]:
    """(file, format, import_file options), imported in this order."""
    trl = [
        {"prompt": "P1", "chosen": "good", "rejected": "bad"},
        {"prompt": "P2", "completion": "demo answer"},  # a demonstration...
        {"prompt": "P2", "chosen": "demo answer", "rejected": "worse"},  # ...that a pair reuses
        {"prompt": "P1", "chosen": "good", "rejected": "other"},  # same prompt, same response
        {"prompt": "P1", "chosen": "good", "rejected": "bad"},  # the same record again
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "gold_answer": {"winner": 1}},
        {"prompt": "P3", "chosen": "x", "rejected": "y"},
        {"prompt": "P2", "completion": "worse"},  # a demonstration after the pair
        {"prompt": "P2", "chosen": "worse", "rejected": "third"},
        {"prompt": [{"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Go away"}]},
        {"text": "A document."},
        {"prompt": "Just a prompt"},
        {"prompt": "P1", "chosen": "bad", "rejected": "good"},  # the other way round
    ] + [{"prompt": f"Q{i % 5}", "chosen": f"a{i % 3}", "rejected": f"b{i % 4}"} for i in range(12)]  # fmt: skip
    hh = [
        {"chosen": "\n\nHuman: Hi?\n\nAssistant: Yes.", "rejected": "\n\nHuman: Hi?\n\nAssistant: No."},
        {"chosen": "\n\nHuman: Tie?\n\nAssistant: Same.", "rejected": "\n\nHuman: Tie?\n\nAssistant: Same."},
        {"chosen": "\n\nHuman: Hi?\n\nAssistant: No.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Yes."},
    ]  # fmt: skip
    uf = [
        {"source": "evol", "instruction": "Haiku?", "completions": [
            _completion("m1", "h1", 8.5), _completion("m2", "h2", 8.5, "5"),
            _completion("m3", "h3", 3, "2")]},
        {"source": "evol", "instruction": "Alone?", "completions": [_completion("m4", "only", 7)]},
        {"source": "evol", "instruction": "Nobody?", "completions": []},
        {"source": "evol", "instruction": "Haiku?", "completions": [
            _completion("m1", "h1", 2), _completion("m5", "h4", 9)]},
        {"prompt": "Gold rank", "completions": [_completion("a", "r1", 1), _completion("b", "r2", 2),
         _completion("c", "r3", 3)], "gold_answer": {"ranking": [[2], [0, 1]]}},
    ]  # fmt: skip
    data = lambda q: {"prompt": q, "answer1": f"{q} left", "answer2": f"{q} right"}  # noqa: E731
    prediction = {"model_version": "v1", "result": _pairwise("left")["result"]}
    label_studio = [
        {"id": 1, "data": data("Q1"), "annotations": [
            _pairwise("right", id=10, completed_by=5), _pairwise("right", id=11, completed_by=6),
            _pairwise("left", id=12, completed_by=7, was_cancelled=True)],
         "predictions": [prediction]},
        {"id": 2, "data": data("Q2"), "annotations": []},
        {"id": 3, "data": data("Q3"), "annotations": [{"id": 13, "result": []}]},
        {"id": 5, "data": data("Q5"), "annotations": [_pairwise("left", id=15, ground_truth=True)]},
    ]  # fmt: skip
    labels = {"name": ["spam", "quality"], "value": [0.0, 0.75], "count": [3, 3]}
    oasst = [{"message_tree_id": "t1", "prompt": {
        "message_id": "p", "role": "prompter", "text": "Why is the sky blue?", "lang": "en",
        "labels": labels, "replies": [
            {"message_id": "a", "role": "assistant", "text": "Rayleigh scattering.", "rank": 0},
            {"message_id": "b", "role": "assistant", "text": "Spam!", "rank": 1, "deleted": True},
            {"message_id": "d", "role": "assistant", "text": "Dust.", "rank": 2}]}}]  # fmt: skip
    alpaca = [
        {"instruction": "Add", "input": "2 and 3", "output": "5", "system": "Be brief."},
        {"instruction": "Pick", "input": "", "chosen": "x", "rejected": "y"},
    ]
    sharegpt = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                           {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Ciao"}]},
        {"conversations": [{"from": "human", "value": "Best?"}],
         "chosen": {"from": "gpt", "value": "me"}, "rejected": {"from": "gpt", "value": "you"}},
    ]  # fmt: skip
    skipped = [
        {"prompt": "S1", "chosen": "a", "rejected": "b"},
        "{not json",
        {"prompt": "S2", "chosen": "a", "rejected": "b"},
        {"prompt": "S1", "chosen": "a", "rejected": "a"},  # a tie
        {"prompt": "S4", "chosen": "a\u0000", "rejected": "b"},  # refused when written: NUL
        {"prompt": "S1", "chosen": "b", "rejected": "e"},
        {"prompt": "S3", "chosen": "c", "rejected": "d"},
    ]
    ten = [_completion(f"m{i}", f"t{i}", i) for i in range(10)]  # a rank task takes 2-9
    uf_skipped = [
        {"source": "evol", "instruction": "U1", "completions": ten[:3]},
        {"source": "evol", "instruction": "U2", "completions": ten},  # refused when written
        {"source": "evol", "instruction": "U1", "completions": ten[2:5]},
    ]
    prompts_csv = tmp_path / "prompts.csv"
    with prompts_csv.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "tags"])
        writer.writerows([["P1", "a"], ["New prompt", "b"], ["New prompt", "c"]])
    (tmp_path / "ls.json").write_text(json.dumps(label_studio), encoding="utf-8")
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca), encoding="utf-8")
    trl_path = _jsonl(tmp_path / "trl.jsonl", trl)
    return [
        (trl_path, "trl", {}),
        (_jsonl(tmp_path / "hh.jsonl", hh), "hh-rlhf", {}),
        (_jsonl(tmp_path / "uf.jsonl", uf), "ultrafeedback", {}),
        (tmp_path / "ls.json", "label-studio", {}),
        (_jsonl(tmp_path / "oasst.jsonl", oasst), "oasst", {}),
        (tmp_path / "alpaca.json", "alpaca", {}),
        (_jsonl(tmp_path / "sharegpt.jsonl", sharegpt), "sharegpt", {}),
        (prompts_csv, "prompts-csv", {}),
        (_jsonl(tmp_path / "skipped.jsonl", skipped), "trl", {"skip_invalid": True}),
        (
            _jsonl(tmp_path / "uf-skipped.jsonl", uf_skipped),
            "ultrafeedback",
            {"skip_invalid": True},
        ),
        (trl_path, "trl", {}),  # a re-import: nothing new
    ]


def dump(project, reports) -> dict:
    """The project's content, ids replaced by positions (the two projects share the tables)."""
    prompts = list(Prompt.objects.filter(project=project).order_by("id"))
    responses = list(Response.objects.filter(prompt__project=project).order_by("id"))
    tasks = list(Task.objects.filter(project=project).order_by("id"))
    annotations = list(Annotation.objects.filter(task__project=project).order_by("id"))
    batches = list(ImportBatch.objects.filter(project=project).order_by("id"))
    at = {
        "prompt": {p.pk: i for i, p in enumerate(prompts)},
        "response": {r.pk: i for i, r in enumerate(responses)},
        "task": {t.pk: i for i, t in enumerate(tasks)},
        "annotation": {a.pk: i for i, a in enumerate(annotations)},
        "batch": {b.pk: i for i, b in enumerate(batches)},
    }

    def ids(value):  # response ids in payloads, answers and orders
        if isinstance(value, list):
            return [ids(v) for v in value]
        return at["response"].get(value, ("?", value)) if isinstance(value, int) else value

    def judged(payload: dict | None) -> dict | None:
        if not payload:
            return payload
        return {k: ids(v) if k in ("winner", "loser", "ranking") else v for k, v in payload.items()}

    def provenance(p: dict) -> dict:
        return {**p, "batch": at["batch"].get(p.get("batch"))}

    def response_metadata(m: dict) -> dict:
        return {**m, "annotation": at["annotation"][m["annotation"]]} if "annotation" in m else m

    return {
        "prompts": [(p.text, p.messages, p.tags, p.language, p.metadata, p.source, p.content_hash)
                    for p in prompts],
        "responses": [(at["prompt"][r.prompt_id], r.text, r.origin, response_metadata(r.metadata))
                      for r in responses],
        "tasks": [(t.kind, at["prompt"].get(t.prompt_id), t.status, t.required, t.done, t.is_gold,
                   judged(t.gold_answer), sorted(at["response"][i] for i in t.candidate_ids()))
                  for t in tasks],
        "annotations": [(at["task"][a.task_id], a.kind, judged(a.payload), ids(a.shown_order),
                         a.source, provenance(a.provenance), a.review_status)
                        for a in annotations],
        "records": [(r.key, r.line, at["batch"][r.batch_id], at["prompt"].get(r.prompt_id))
                    for r in ImportRecord.objects.filter(project=project).order_by("id")],
        "batches": [(b.file_name, b.format, b.counts, b.errors, b.notices, b.status)
                    for b in batches],
        "reports": [{**asdict(r), "batch_id": at["batch"].get(r.batch_id)} for r in reports],
    }  # fmt: skip


def imported(project, tmp_path, chunk_rows: int, monkeypatch) -> dict:
    monkeypatch.setattr(importer, "CHUNK_ROWS", chunk_rows)
    reports = []
    for path, fmt, options in files(tmp_path):
        report = import_file(project=project, path=path, format=fmt, **options)
        assert report.written, report.errors
        reports.append(report)
    monkeypatch.undo()
    return dump(project, reports)


@pytest.mark.django_db
@pytest.mark.parametrize("chunk_rows", [2, 5, importer.CHUNK_ROWS])
def test_the_set_wise_writer_writes_what_the_per_row_path_writes(tmp_path, monkeypatch, chunk_rows):
    one_by_one = services.project_create(name="Rows", slug="rows")
    set_wise = services.project_create(name="Chunks", slug="chunks")

    expected = imported(one_by_one, tmp_path, 1, monkeypatch)
    got = imported(set_wise, tmp_path, chunk_rows, monkeypatch)

    for part in expected:
        assert got[part] == expected[part], part
    # What the file holds is all there: nothing of the comparison is vacuous.
    counts = [r["counts"] for r in expected["reports"]]
    assert counts[0]["already_imported"] == 1 and counts[-1]["already_imported"] == 25
    assert counts[0]["gold_tasks"] == 1 and counts[0]["demonstrations"] == 2
    assert [r["notices"].get("tie") for r in expected["reports"]][:2] == [None, 1]
    assert counts[8]["rejected"] == 2 and counts[8]["records"] == 5
    assert [e.get("line") for e in expected["reports"][8]["errors"]] == [2, 5]
    assert counts[9]["rejected"] == 1 and counts[9]["judgments"] == 2
    assert [(e["line"], e["field"]) for e in expected["reports"][9]["errors"]] == [(2, "responses")]
    assert (len(expected["responses"]), len(expected["annotations"])) == (72, 38)


@pytest.mark.django_db
def test_copy_writes_what_insert_writes(tmp_path, monkeypatch):
    """On PostgreSQL, `sql.insert_many` and `sql.insert_rows` load `COPY_ROWS` rows or more with
    COPY (ids reserved from the sequence first); with `COPY_ROWS = 1` every insert of these files
    goes that way, and the rows are those of the multi-row INSERTs (`COPY_ROWS` above any
    chunk), the same ids order included. On SQLite both runs insert (the test still holds).

    Kills mutations: the reserved ids unsorted or zipped to the wrong rows; a value sent as it
    is where the field's own preparation changes it."""
    from annotation import sql

    by_insert = services.project_create(name="Insert", slug="insert")
    by_copy = services.project_create(name="Copy", slug="copy")

    monkeypatch.setattr(sql, "COPY_ROWS", 10**9)
    expected = imported(by_insert, tmp_path, importer.CHUNK_ROWS, monkeypatch)
    monkeypatch.setattr(sql, "COPY_ROWS", 1)
    got = imported(by_copy, tmp_path, importer.CHUNK_ROWS, monkeypatch)

    for part in expected:
        assert got[part] == expected[part], part
    assert (len(expected["responses"]), len(expected["annotations"])) == (72, 38)
