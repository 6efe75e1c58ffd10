"""NUL characters: PostgreSQL cannot store them, so they are refused by name, never a 500."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from annotation import services
from annotation.imports import import_file
from annotation.models import Prompt, Role, Source


def test_a_prompt_with_nul_is_refused_naming_the_field(project_factory):
    project = project_factory(prompts=0)
    with pytest.raises(ValidationError) as error:
        services.prompts_create(project=project, items=[{"text": "fine"}, {"text": "bad\x00text"}])
    assert "items[1].text" in error.value.message_dict
    assert "NUL" in error.value.message_dict["items[1].text"][0]
    with pytest.raises(ValidationError, match="NUL"):
        services.prompts_create(
            project=project, items=[{"messages": [{"role": "user", "content": "a\x00"}]}]
        )
    assert not Prompt.objects.exists()


def test_a_model_sample_with_nul_is_kept_with_a_replacement_character(project_factory):
    project = project_factory(prompts=1)
    prompt = project.prompts.get()
    response = services.response_create(prompt=prompt, text="ok\x00then", origin=Source.MODEL)
    response.refresh_from_db()
    assert response.text == "ok\ufffdthen"


def test_a_labeler_demonstration_with_nul_is_refused(make_user, project_factory):
    from annotation.models import TaskKind

    alice = make_user("alice")
    project = project_factory(
        prompts=1, kinds=(TaskKind.DEMONSTRATION,), members=[(alice, Role.LABELER)]
    )
    lease = services.next_task_for(project=project, labeler=alice)
    with pytest.raises(ValidationError, match="NUL"):
        services.annotation_submit(task=lease.task, labeler=alice, payload={"text": "x\x00"})


def test_an_import_row_with_nul_names_line_and_field(project_factory, tmp_path):
    project = project_factory(prompts=0)
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "fine"}, {"prompt": "bad\x00one"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    report = import_file(project=project, path=path, format="auto")
    assert report.error_count == 1
    error = report.errors[0]
    assert "2" in str(error) and "prompt" in str(error) and "NUL" in str(error)
    assert not Prompt.objects.exists()
