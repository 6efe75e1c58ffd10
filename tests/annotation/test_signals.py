"""Every signal reaches a dataset: per-project labels, KTO rows, flags and ratings in the other
snapshots, and "all unacceptable" rankings as data.

CI runs these on SQLite and on PostgreSQL: the pinned KTO bytes and hash are the same on both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from snapshot_testutils import judge, prompt_with

from annotation import labels, quality, services
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import Response, Role, Source, TaskKind


def build(project, kind: str, **filters):
    filters.setdefault("test_size", 0)
    snapshot = snapshot_request(project=project, kind=kind, filters=filters, enqueue=False)
    snapshot = snapshot_build(snapshot=snapshot)
    return snapshot, Path(snapshot.path)


def lines(path: Path, split: str = "train") -> list[dict]:
    text = (path / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n")[:-1]]


def rate(project, response, raters, ratings: list[dict]):
    """One rate task on `response`, judged by `raters` with `ratings` (score and flags)."""
    task = services.task_create(
        project=project,
        kind=TaskKind.RATE,
        prompt=response.prompt,
        candidates=[response],
        required=len(ratings),
    )
    return [judge(task, rater, payload) for rater, payload in zip(raters, ratings, strict=False)]


def written_response(demonstration):
    """The response a demonstration judgment wrote."""
    return Response.objects.get(metadata__annotation=demonstration.pk)


def demonstrate_for(project, prompt, text: str, labeler):
    task = services.task_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt)
    return judge(task, labeler, {"text": text})


# A project's own labels: one flag that excludes, one that only informs; a 1–5 scale that is good
# from 4; two strengths.
LABELS = {
    "flags": [
        {"name": "unsafe", "description": "Unsafe advice", "excludes": True},
        {"name": "too_long", "description": "Longer than it needs to be", "excludes": False},
    ],
    "rating": {"min": 1, "max": 5, "threshold": 4},
    "strengths": [{"value": 1, "label": "a bit better"}, {"value": 2, "label": "far better"}],
}


@pytest.fixture
def raters(make_user):
    return [make_user(name) for name in ("ann", "bob", "cat")]


@pytest.fixture
def owner(make_user):
    return make_user("owner")


# --- per-project labels ----------------------------------------------------------------------


def test_a_new_project_has_todays_labels(owner):
    project = services.project_create(name="P", slug="p", owner=owner)

    assert project.label_config == labels.DEFAULT
    assert list(project.labels.flags) == [
        "fails_instruction",
        "made_up_facts",
        "harmful",
        "inappropriate",
        "personal_data",
    ]
    assert (project.labels.low, project.labels.high) == (1, 7)
    assert project.labels.strengths == {1: "slightly better", 2: "clearly better", 3: "much better"}


@pytest.mark.parametrize(
    "config, named",
    [
        ({"flags": [{"name": "Bad Name"}]}, "flags[0].name"),
        ({"flags": [{"name": "x", "excludes": "yes"}]}, "flags[0].excludes"),
        ({"flags": [{"name": "x"}, {"name": "x"}]}, "flags[1].name"),
        ({"rating": {"min": 5, "max": 3}}, "rating.max"),
        ({"rating": {"min": 1, "max": 5, "threshold": 9}}, "rating.threshold"),
        ({"strengths": []}, "strengths"),
        ({"strengths": [{"value": 0, "label": "none"}]}, "strengths[0].value"),
        ({"colour": "red"}, "unknown keys ['colour']"),
    ],
)
def test_a_bad_label_config_is_refused_naming_the_entry(owner, config, named):
    project = services.project_create(name="P", slug="p", owner=owner)

    with pytest.raises(ValidationError) as refused:
        services.project_update(project=project, label_config=config)

    assert named in refused.value.message_dict["label_config"][0]
    project.refresh_from_db()
    assert project.label_config == labels.DEFAULT


def test_the_api_sets_a_projects_labels_and_refuses_a_bad_one(owner):
    project = services.project_create(name="P", slug="p", owner=owner)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=owner).key}")

    bad = client.patch(
        f"/api/v1/projects/{project.pk}/",
        {"label_config": {"rating": {"min": 1, "max": 5, "threshold": 6}}},
        format="json",
    )
    good = client.patch(f"/api/v1/projects/{project.pk}/", {"label_config": LABELS}, format="json")

    assert bad.status_code == 400
    assert "rating.threshold" in json.dumps(bad.json())
    assert good.status_code == 200, good.content
    assert good.json()["label_config"] == LABELS
    project.refresh_from_db()
    assert project.labels.flags == {
        "unsafe": "Unsafe advice",
        "too_long": "Longer than it needs to be",
    }


def test_submissions_are_checked_against_the_projects_own_labels(owner, raters):
    project = services.project_create(name="P", slug="p", owner=owner, label_config=LABELS)
    _, (response,), task = prompt_with(project, "Q", ["A"], kind=TaskKind.RATE, required=3)
    ann, bob, cat = raters

    with pytest.raises(ValidationError) as global_flag:
        judge(task, ann, {"score": 4, "flags": ["harmful"]})  # today's global flag: not here
    with pytest.raises(ValidationError) as off_scale:
        judge(task, ann, {"score": 6, "flags": []})  # 6 is on the global 1–7 scale, not on 1–5
    kept = judge(task, bob, {"score": 5, "flags": ["too_long", "unsafe", "unsafe"]})

    assert "unsafe, too_long" in global_flag.value.message_dict["payload.flags"][0]
    assert "from 1 to 5" in off_scale.value.message_dict["payload.score"][0]
    assert kept.payload == {"score": 5, "flags": ["too_long", "unsafe"]}

    _, (x, y), compare = prompt_with(project, "Pick", ["x", "y"], kind=TaskKind.COMPARE)
    with pytest.raises(ValidationError) as strength:
        judge(compare, cat, {"winner": x.pk, "strength": 3})  # global 3 "much better": not here
    assert "[1, 2]" in strength.value.message_dict["payload.strength"][0]


def test_the_workspace_shows_the_projects_flags_and_scale(client, owner, raters):
    project = services.project_create(
        name="P", slug="p", owner=owner, task_kinds=[TaskKind.RATE], label_config=LABELS
    )
    ann = raters[0]
    services.membership_set(project=project, user=ann, role=Role.LABELER)
    prompt_with(project, "Q", ["A"], kind=TaskKind.RATE)
    client.force_login(ann)

    page = client.post(f"/projects/{project.slug}/next/", follow=True).content.decode()

    assert "Unsafe advice" in page and "Longer than it needs to be" in page
    assert "Makes up facts" not in page
    assert 'name="score" value="5"' in page and 'name="score" value="6"' not in page
    # The legend names the project's ends, not the global 1–7.
    assert "(1 = very bad, 5 = excellent)" in page and "7 = excellent" not in page


# --- kto ---------------------------------------------------------------------------------------


@pytest.fixture
def rated(owner, raters):
    """Four responses to two prompts, rated on the project's 1–5 scale (good from 4)."""
    project = services.project_create(name="Rated", slug="rated", owner=owner, label_config=LABELS)
    ann, bob, cat = raters
    _, (good, flagged, low), _ = prompt_with(project, 'Say "hi"\n', ["hi 😀", "hi!", "meh"])
    # Median 4 of (3, 4, 5): good; a flag that only informs keeps it good.
    rate(project, good, raters, [{"score": 3}, {"score": 4}, {"score": 5, "flags": ["too_long"]}])
    # Scores of 5, but one rater says unsafe: any excluding flag makes it bad.
    rate(project, flagged, raters, [{"score": 5}, {"score": 5, "flags": ["unsafe"]}])
    # Median 3.5 of (3, 4): below 4.
    rate(project, low, raters, [{"score": 3}, {"score": 4}])
    # A single rating exactly at the threshold; the other response of the prompt is not rated.
    _, (at, _unrated), _ = prompt_with(project, "Count to two", ["one two", "1 2"])
    rate(project, at, raters, [{"score": 4}])
    return project


KTO = "".join(
    (
        '{"completion":"hi 😀","label":true,"prompt":"Say \\"hi\\"\\n"}\n',
        '{"completion":"hi!","label":false,"prompt":"Say \\"hi\\"\\n"}\n',
        '{"completion":"meh","label":false,"prompt":"Say \\"hi\\"\\n"}\n',
        '{"completion":"one two","label":true,"prompt":"Count to two"}\n',
    )
)
KTO_SHA256 = "efc7287d143e27cd480c381810fa5b139ad79f49d1a049801fd70250d36b6f10"


def test_kto_rows_are_pinned(rated):
    snapshot, path = build(rated, "kto")

    assert (path / "train.jsonl").read_text(encoding="utf-8") == KTO
    assert snapshot.sha256 == KTO_SHA256
    assert snapshot.manifest["judgments"] == 8
    assert snapshot.manifest["columns"] == ["completion", "label", "prompt"]
    info = json.loads((path / "dataset_info.json").read_text())
    assert info["rated_kto_train"]["columns"]["kto_tag"] == "label"


def test_kto_rows_of_a_conversation_are_messages(owner, raters):
    project = services.project_create(name="C", slug="c", owner=owner)
    messages = [{"role": "user", "content": "Hello"}]
    _, (reply,), _ = prompt_with(project, "", ["Hi there"], kind=TaskKind.RATE, messages=messages)
    rate(project, reply, raters, [{"score": 6}, {"score": 2, "flags": ["harmful"]}])

    snapshot, path = build(project, "kto")

    assert lines(path) == [
        {
            "prompt": [{"role": "user", "content": "Hello"}],
            "completion": [{"role": "assistant", "content": "Hi there"}],
            "label": False,
        }
    ]
    assert snapshot.manifest["conversational"] is True


def test_kto_reads_only_the_ratings_that_count(owner, raters):
    """A rejected rating is not a signal; a rating no one judged gives no row."""
    project = services.project_create(name="R", slug="r", owner=owner)
    _, (a, b), _ = prompt_with(project, "Q", ["a", "b"])
    (bad,) = rate(project, a, raters, [{"score": 1}])
    rate(project, a, raters[1:], [{"score": 7}])
    services.annotation_review(annotation=bad, reviewer=owner, decision="rejected")

    _, path = build(project, "kto")

    assert lines(path) == [{"prompt": "Q", "completion": "a", "label": True}]


# --- flags in preference pairs -------------------------------------------------------------------


def test_a_flagged_response_is_never_chosen(owner, raters):
    project = services.project_create(name="F", slug="f", owner=owner, label_config=LABELS)
    ann, bob, cat = raters
    _, (best, middle, worst), task = prompt_with(project, "Q", ["best", "middle", "worst"])
    judge(task, ann, {"ranking": [[best.pk], [middle.pk], [worst.pk]]})
    # Rated highly, but unsafe: it loses every pair it would have won.
    rate(project, best, raters, [{"score": 5}, {"score": 5, "flags": ["unsafe"]}])
    # A flag that does not exclude changes nothing.
    rate(project, middle, raters, [{"score": 2, "flags": ["too_long"]}])

    snapshot, path = build(project, "preference")

    assert [(row["chosen"], row["rejected"]) for row in lines(path)] == [("middle", "worst")]
    assert snapshot.manifest["flagged_not_chosen"] == 2
    # As the rejected side a flagged response is good data: flag the worst one too.
    rate(project, worst, raters, [{"score": 1, "flags": ["unsafe"]}])
    _, path = build(project, "preference", seed="1")
    assert [(row["chosen"], row["rejected"]) for row in lines(path)] == [("middle", "worst")]


def test_a_flagged_response_is_never_chosen_by_the_consensus_either(owner, raters):
    """With `aggregate=bradley_terry` the pairs are ordered by the consensus scores, not the
    votes: a flagged response the consensus ranks first still never becomes `chosen`."""
    project = services.project_create(name="F", slug="f", owner=owner, label_config=LABELS)
    ann, bob, cat = raters
    _, (best, middle, worst), task = prompt_with(project, "Q", ["best", "middle", "worst"])
    judge(task, ann, {"ranking": [[best.pk], [middle.pk], [worst.pk]]})
    rate(project, best, raters, [{"score": 5, "flags": ["unsafe"]}])
    quality.consensus_compute(project=project)

    snapshot, path = build(project, "preference", aggregate="bradley_terry")

    assert [(row["chosen"], row["rejected"]) for row in lines(path)] == [("middle", "worst")]
    assert snapshot.manifest["flagged_not_chosen"] == 2
    with pytest.raises(ValidationError) as refused:
        build(project, "preference", aggregate="bradley_terry", unacceptable="vs_demonstration")
    assert "filters.unacceptable" in refused.value.message_dict


def test_a_flagged_response_is_never_chosen_in_conversations_or_per_annotation(owner, raters):
    project = services.project_create(name="F", slug="f", owner=owner)
    ann, bob, _ = raters
    messages = [{"role": "user", "content": "Q"}]
    _, (a, b), task = prompt_with(project, "", ["a", "b"], messages=messages, required=2)
    judge(task, ann, {"ranking": [[a.pk], [b.pk]]})
    judge(task, bob, {"ranking": [[b.pk], [a.pk]]})
    rate(project, a, raters, [{"score": 7, "flags": ["personal_data"]}])

    _, path = build(project, "preference", pairs="per_annotation")

    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in lines(path)] == [
        ("b", "a")
    ]


# --- rating filters of demonstrations -------------------------------------------------------------


@pytest.fixture
def demonstrations(owner, raters):
    """Four demonstrations: rated 6.5 (median of 6, 7), rated 6 but flagged, rated 3, unrated."""
    project = services.project_create(name="D", slug="d", owner=owner)
    ann, bob, cat = raters
    out = {}
    for name, ratings in [
        ("fine", [{"score": 6}, {"score": 7}]),
        ("flagged", [{"score": 6, "flags": ["made_up_facts"]}]),
        ("weak", [{"score": 3}]),
        ("unrated", None),
    ]:
        (prompt,), _ = services.prompts_create(project=project, items=[{"text": f"Ask {name}"}])
        demonstration = demonstrate_for(project, prompt, f"Answer {name}", cat)
        if ratings:
            rate(project, written_response(demonstration), [ann, bob], ratings)
        out[name] = demonstration
    return project


def _completions(path: Path) -> list[str]:
    return sorted(row["completion"] for row in lines(path))


@pytest.mark.parametrize(
    "filters, kept",
    [
        ({}, ["Answer fine", "Answer flagged", "Answer unrated", "Answer weak"]),
        ({"min_rating": 6}, ["Answer fine", "Answer flagged"]),
        ({"exclude_flagged": True}, ["Answer fine", "Answer unrated", "Answer weak"]),
        ({"min_rating": 6, "exclude_flagged": True}, ["Answer fine"]),
        ({"min_rating": 6.5}, ["Answer fine"]),
    ],
)
def test_sft_rows_are_filtered_by_the_ratings_of_the_demonstration(demonstrations, filters, kept):
    snapshot, path = build(demonstrations, "sft", **filters)

    assert _completions(path) == kept
    if filters:
        counts = snapshot.manifest["rating_filter"]
        assert counts["kept"] == len(kept)
        assert sum(counts.values()) == 4
    else:
        assert "rating_filter" not in snapshot.manifest


def test_instruction_rows_take_the_same_filters(demonstrations):
    _, path = build(demonstrations, "instruction", min_rating=6, exclude_flagged=True)

    assert [row["messages"][-1]["content"] for row in lines(path)] == ["Answer fine"]


def test_a_corrected_demonstration_is_unrated(demonstrations, raters):
    """The ratings judged the text its correction replaced."""
    from annotation.models import Annotation

    fine = Annotation.objects.get(payload__text="Answer fine")
    services.annotation_correct(original=fine, labeler=raters[2], payload={"text": "Better"})

    _, path = build(demonstrations, "sft", min_rating=6)

    assert _completions(path) == ["Answer flagged"]


def test_the_rating_filters_are_checked(demonstrations):
    with pytest.raises(ValidationError) as refused:
        snapshot_request(
            project=demonstrations,
            kind="sft",
            filters={"min_rating": "high", "exclude_flagged": "maybe", "unacceptable": "keep"},
            enqueue=False,
        )

    assert set(refused.value.message_dict) == {
        "filters.min_rating",
        "filters.exclude_flagged",
        "filters.unacceptable",
    }


# --- "all unacceptable" ---------------------------------------------------------------------


@pytest.fixture
def unacceptable(owner, raters):
    """One prompt whose responses were all unacceptable and which has a written demonstration;
    one without a demonstration; one ordinary ranking."""
    project = services.project_create(name="U", slug="u", owner=owner, overlap=2)
    ann, bob, cat = raters
    prompt, (a, b), task = prompt_with(project, "Hard", ["a", "b"])
    judge(task, ann, {"ranking": [[a.pk], [b.pk]], "all_unacceptable": True})
    judge(task, bob, {"ranking": [[b.pk], [a.pk]], "all_unacceptable": True})
    demonstrate_for(project, prompt, "written", cat)
    _, (c, d), task = prompt_with(project, "Harder", ["c", "d"])
    judge(task, ann, {"ranking": [[c.pk], [d.pk]], "all_unacceptable": True})
    _, (e, f), task = prompt_with(project, "Easy", ["e", "f"])
    judge(task, ann, {"ranking": [[e.pk], [f.pk]]})
    return project


def test_unacceptable_rankings_are_counted_and_dropped_by_default(unacceptable):
    snapshot, path = build(unacceptable, "preference")

    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in lines(path)] == [("Easy", "e", "f")]
    assert snapshot.manifest["unacceptable"] == {
        "rankings": 3,
        "comparisons": 0,
        "against_demonstration": 0,
        "without_demonstration": 1,
    }


def test_unacceptable_responses_are_exported_as_rejected_against_a_demonstration(unacceptable):
    snapshot, path = build(unacceptable, "preference", unacceptable="vs_demonstration")

    assert [
        (r["prompt"], r["chosen"], r["rejected"], r["agreement"], r["margin"]) for r in lines(path)
    ] == [
        ("Hard", "written", "a", 1.0, 1.0),
        ("Hard", "written", "b", 1.0, 1.0),
        ("Easy", "e", "f", 1.0, 1.0),
    ]
    assert snapshot.manifest["unacceptable"] == {
        "rankings": 3,
        "comparisons": 0,
        "against_demonstration": 2,
        "without_demonstration": 1,
    }


def test_a_flagged_demonstration_is_not_chosen_against_unacceptable_ones(unacceptable, raters):
    from annotation.models import Annotation

    written = written_response(Annotation.objects.get(kind=TaskKind.DEMONSTRATION))
    rate(unacceptable, written, raters, [{"score": 2, "flags": ["harmful"]}])

    snapshot, path = build(unacceptable, "preference", unacceptable="vs_demonstration")

    assert [r["prompt"] for r in lines(path)] == ["Easy"]
    assert snapshot.manifest["flagged_not_chosen"] == 2


def test_an_imported_demonstration_counts_as_written(owner, raters):
    project = services.project_create(name="I", slug="i", owner=owner)
    prompt, (a, b), task = prompt_with(project, "Hard", ["a", "b"])
    judge(task, raters[0], {"ranking": [[a.pk], [b.pk]], "all_unacceptable": True})
    services.task_import(
        project=project,
        kind=TaskKind.DEMONSTRATION,
        prompt=prompt,
        judgments=[{"payload": {"text": "imported"}}],
    )
    assert Response.objects.filter(prompt=prompt, origin=Source.IMPORTED).count() == 1

    _, path = build(project, "preference", unacceptable="vs_demonstration")

    assert [(r["chosen"], r["rejected"]) for r in lines(path)] == [
        ("imported", "a"),
        ("imported", "b"),
    ]


def test_the_admin_sets_a_projects_labels_through_the_service(make_user):
    from django.test import Client

    from annotation.models import Project

    root = Client()
    root.force_login(make_user("root", is_staff=True, is_superuser=True))
    form = {"name": "Gamma", "slug": "gamma", "description": "", "task_kinds": "[]",
            "k_responses": 4, "overlap": 1, "lease_seconds": 900,
            "gold_rate": 0, "gold_window": 10, "gold_min_accuracy": 0, "arena_margin": 0,
            "memberships-TOTAL_FORMS": 0, "memberships-INITIAL_FORMS": 0,
            "guidelines-TOTAL_FORMS": 0, "guidelines-INITIAL_FORMS": 0}  # fmt: skip
    assert root.post("/admin/annotation/project/add/", form).status_code == 302
    project = Project.objects.get(slug="gamma")
    assert project.label_config == labels.DEFAULT
    url = f"/admin/annotation/project/{project.pk}/change/"

    bad = root.post(url, {**form, "label_config": json.dumps({"flags": [{"name": "No!"}]})})
    good = root.post(url, {**form, "label_config": json.dumps(LABELS)})

    assert bad.status_code == 200
    assert "flags[0].name" in str(bad.context["adminform"].form.errors["label_config"])
    assert good.status_code == 302
    project.refresh_from_db()
    assert project.label_config == LABELS
