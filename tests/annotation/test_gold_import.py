"""Gold tasks imported with their answer: a row of an import file that carries `gold_answer`
becomes an open gold task (rate for one response, compare for two, rank for more) whose answer
names the row's responses by index, checked by the gold rules of its kind; a bad answer is a
bad row named by line and field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotation import leasing, services
from annotation.imports import import_file
from annotation.models import Annotation, ImportRecord, Role, Task, TaskKind

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(make_user):
    project = services.project_create(name="Gold import", slug="gold-import")
    for name in ("lab1", "lab2"):
        services.membership_set(project=project, user=make_user(name), role=Role.LABELER)
    return project


def _file(tmp_path: Path, rows) -> Path:
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5", "gold_answer": {"winner": 1}},
    {"prompt": "Rate this", "completion": "A fine answer.", "gold_answer": {"score": 6}},
    {"instruction": "Order these", "completions": [
        {"response": "a", "overall_score": 1}, {"response": "b", "overall_score": 2},
        {"response": "c", "overall_score": 3}],
     "gold_answer": {"ranking": [[2], [0, 1]]}},
]  # fmt: skip


def test_it_imports_gold_tasks_of_each_kind_with_their_answer(project, tmp_path):
    """A TRL pair, a TRL prompt/completion and an UltraFeedback row, each with `gold_answer`:
    three open gold tasks (compare, rate, rank) whose answers name the responses' ids in the
    order the row lists them; no judgment is imported. Before: the field was ignored and the
    rows became judged pairs and a demonstration."""
    report = None
    for fmt, row in zip(("trl", "trl", "ultrafeedback"), ROWS, strict=True):
        report = import_file(project=project, path=_file(tmp_path, [row]), format=fmt)
        assert report.ok, report.errors
        assert report.counts["gold_tasks"] == 1 and report.counts["judgments"] == 0
    tasks = {t.kind: t for t in Task.objects.filter(project=project)}
    assert set(tasks) == {TaskKind.COMPARE, TaskKind.RATE, TaskKind.RANK}
    assert all(t.is_gold and t.status == Task.Status.OPEN for t in tasks.values())
    compare = {r.text: r.pk for r in tasks[TaskKind.COMPARE].candidates.all()}
    assert tasks[TaskKind.COMPARE].gold_answer["winner"] == compare["5"]
    rank = {r.text: r.pk for r in tasks[TaskKind.RANK].candidates.all()}
    assert tasks[TaskKind.RANK].gold_answer["ranking"] == [[rank["c"]], [rank["a"], rank["b"]]]
    assert tasks[TaskKind.RATE].gold_answer["score"] == 6
    assert not Annotation.objects.filter(task__project=project).exists()


def test_an_imported_gold_task_goes_to_every_labeler_and_scores_them(project, tmp_path):
    """Served to both labelers whatever the overlap (as a curator's gold task is), and the
    judgment is scored against the imported answer."""
    services.project_update(project=project, gold_rate=1.0)
    assert import_file(project=project, path=_file(tmp_path, ROWS[:1]), format="trl").ok
    task = Task.objects.get(project=project)
    for labeler in get_user_model().objects.filter(memberships__project=project):
        lease = leasing.next_task_for(project=project, labeler=labeler)
        assert lease is not None and lease.task_id == task.pk
        services.annotation_submit(
            task=lease.task, labeler=lease.labeler, payload={"winner": task.gold_answer["winner"]}
        )
    assert Annotation.objects.filter(task=task).count() == 2


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"prompt": "p", "chosen": "a", "rejected": "b", "gold_answer": {"winner": 2}},
         "gold_answer.winner", "index of one of the row's 2 responses"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "gold_answer": {"winner": 0,
          "strength": 9}}, "gold_answer", "not a valid compare answer (payload.strength"),
        ({"prompt": "p", "completion": "a", "gold_answer": {"score": 99}},
         "gold_answer", "not a valid rate answer (payload.score"),
        ({"prompt": "p", "completion": "a", "gold_answer": "first"},
         "gold_answer", "expected an object"),
        ({"prompt": "just a prompt", "gold_answer": {"score": 3}},
         "gold_answer", "a gold task needs responses to judge; this row is a prompt"),
    ],
)  # fmt: skip
def test_a_bad_gold_answer_is_a_bad_row_named_by_line_and_field(
    project, tmp_path, row, field, message
):
    """The answer is checked as a curator's is (`gold_answer_check`, with the project's scale
    and strengths) and nothing is written: the report names line 2 and the field."""
    good = {"prompt": "fine", "chosen": "x", "rejected": "y"}
    report = import_file(project=project, path=_file(tmp_path, [good, row]), format="trl")
    assert not report.ok and not report.written
    (error,) = report.errors
    assert (error["line"], error["field"]) == (2, field)
    assert message in error["message"]
    assert not Task.objects.filter(project=project).exists()


def test_reimporting_gold_rows_adds_nothing_and_keys_of_other_rows_are_unchanged(
    project, tmp_path, capsys
):
    """The same file twice creates each gold task once; a row without `gold_answer` keeps
    the record key it had before gold could be imported (so old files still re-import as
    already imported)."""
    path = _file(tmp_path, ROWS[:2])
    call_command("import_data", project.slug, str(path), "--format", "trl")
    assert "2 gold tasks, with their answers" in capsys.readouterr().out
    second = import_file(project=project, path=path, format="trl")
    assert second.counts["already_imported"] == 2 and second.counts["gold_tasks"] == 0
    assert Task.objects.filter(project=project, is_gold=True).count() == 2
    plain = import_file(
        project=project, path=_file(tmp_path, [{"prompt": "k", "completion": "v"}]), format="trl"
    )
    key = ImportRecord.objects.get(batch_id=plain.batch_id).key
    before = {"kind": "demonstration", "prompt": "k", "responses": ["v"], "judgments": [],
              "tags": [], "language": "", "metadata": {}, "response_metadata": [],
              "response_origin": "imported", "original_id": ""}  # fmt: skip
    blob = json.dumps(["trl", before], ensure_ascii=False, sort_keys=True)
    assert key == hashlib.sha256(blob.encode("utf-8")).hexdigest()
