"""Dataset snapshots: TRL's exact rows, content addressing, splits by prompt, the command and
the Celery task."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from snapshot_testutils import demonstrate, judge, prompt_with

from annotation import services, tasks
from annotation.exports import snapshot_build, snapshot_request
from annotation.exports.kinds import SNAPSHOT_KINDS
from annotation.imports import import_file
from annotation.models import (
    Annotation,
    ReviewStatus,
    Snapshot,
    SnapshotKind,
    TaskKind,
    content_hash,
)


@pytest.fixture
def people(make_user):
    return make_user("owner"), make_user("ann"), make_user("bob"), make_user("cat")


@pytest.fixture
def project(people):
    return services.project_create(name="Prefs", slug="prefs", owner=people[0], overlap=2)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def build(project, kind, **filters):
    filters.setdefault("test_size", 0)
    snapshot = snapshot_request(project=project, kind=kind, filters=filters, enqueue=False)
    return snapshot_build(snapshot=snapshot)


def test_it_expands_rankings_into_pairs_aggregated_over_labelers(project, people):
    _, ann, bob, _ = people
    _, (a, b, c), task = prompt_with(project, "Name a colour", ["red", "blue", "green"])
    judge(task, ann, {"ranking": [[a.pk], [b.pk], [c.pk]]})
    judge(task, bob, {"ranking": [[a.pk], [c.pk], [b.pk]]})

    snapshot = build(project, "preference")

    assert snapshot.status == Snapshot.Status.READY
    rows = rows_of(Path(snapshot.path) / "train.jsonl")
    by_pair = {(r["chosen"], r["rejected"]): r for r in rows}
    # a beats b and c unanimously; b-vs-c split 1:1 is a tie and is dropped.
    assert set(by_pair) == {("red", "blue"), ("red", "green")}
    assert by_pair[("red", "blue")] == {
        "prompt": "Name a colour",
        "chosen": "red",
        "rejected": "blue",
        "margin": 1.0,
        "agreement": 1.0,
    }
    assert snapshot.manifest["ties_dropped"] == 1
    assert snapshot.manifest["judgments"] == 2
    assert snapshot.row_count == 2


def test_it_weighs_comparison_strength_and_records_agreement(project, people):
    _, ann, bob, cat = people
    _, (x, y), task = prompt_with(project, "2+2?", ["4", "5"], kind=TaskKind.COMPARE, required=3)
    judge(task, ann, {"winner": x.pk, "strength": 3})
    judge(task, bob, {"winner": x.pk, "strength": 1})
    judge(task, cat, {"winner": y.pk, "strength": 1})

    (row,) = rows_of(Path(build(project, "preference").path) / "train.jsonl")

    assert (row["chosen"], row["rejected"]) == ("4", "5")
    assert row["agreement"] == pytest.approx(2 / 3, abs=1e-6)
    assert row["margin"] == pytest.approx((3 + 1 - 1) / 3, abs=1e-6)


def test_it_can_emit_one_pair_per_judgment(project, people):
    _, ann, bob, _ = people
    _, (x, y), task = prompt_with(project, "Q", ["good", "bad"], kind=TaskKind.COMPARE)
    judge(task, ann, {"winner": x.pk, "strength": 2})
    judge(task, bob, {"winner": y.pk, "strength": 1})

    rows = rows_of(Path(build(project, "preference", pairs="per_annotation").path) / "train.jsonl")

    assert [(r["chosen"], r["margin"]) for r in rows] == [("good", 2.0), ("bad", 1.0)]


def test_it_never_exports_rejected_superseded_or_all_unacceptable_work(project, people):
    owner, ann, bob, _ = people
    _, (a, b), task = prompt_with(project, "P1", ["a1", "b1"], kind=TaskKind.COMPARE)
    rejected = judge(task, ann, {"winner": a.pk})
    services.annotation_review(annotation=rejected, reviewer=owner, decision=ReviewStatus.REJECTED)
    judge(task, bob, {"winner": b.pk})
    _, (c, d), task2 = prompt_with(project, "P2", ["c2", "d2"])
    judge(task2, ann, {"ranking": [[c.pk], [d.pk]], "all_unacceptable": True})
    _, (e, f), task3 = prompt_with(project, "P3", ["e3", "f3"])
    first = judge(task3, ann, {"ranking": [[e.pk], [f.pk]]})
    services.annotation_correct(original=first, labeler=ann, payload={"ranking": [[f.pk], [e.pk]]})

    rows = rows_of(Path(build(project, "preference").path) / "train.jsonl")

    assert [(r["prompt"], r["chosen"]) for r in rows] == [("P1", "b1"), ("P3", "f3")]


def test_it_gives_the_same_hash_and_directory_when_built_twice(project, people, data_dir):
    _, ann, _, _ = people
    for i in range(6):
        _, (a, b), task = prompt_with(project, f"P{i}", [f"a{i}", f"b{i}"], kind=TaskKind.COMPARE)
        judge(task, ann, {"winner": a.pk})

    first = build(project, "preference", test_size=0.3)
    second = build(project, "preference", test_size=0.3)

    assert first.sha256 == second.sha256 and len(first.sha256) == 64
    assert first.path == second.path == str(data_dir / "snapshots" / first.sha256)
    assert sorted(p.name for p in (data_dir / "snapshots").iterdir()) == [first.sha256]
    manifest = json.loads((Path(first.path) / "manifest.json").read_text())
    assert manifest["sha256"] == first.sha256
    assert manifest["kind"] == "preference"
    assert manifest["annotation_ids"]["min"] is not None
    assert manifest["guideline_versions"] == []
    assert manifest["code_version"]


def test_it_holds_out_whole_prompts_never_single_pairs(project, people):
    _, ann, _, _ = people
    for i in range(20):
        _, (a, b, c), task = prompt_with(project, f"Prompt {i}", [f"a{i}", f"b{i}", f"c{i}"])
        judge(task, ann, {"ranking": [[a.pk], [b.pk], [c.pk]]})

    snapshot = build(project, "preference", test_size=0.2)

    train = rows_of(Path(snapshot.path) / "train.jsonl")
    test = rows_of(Path(snapshot.path) / "test.jsonl")
    train_prompts = {r["prompt"] for r in train}
    test_prompts = {r["prompt"] for r in test}
    # Each prompt is held out by its own hash (below test_size * 16**16): 6 of these 20.
    assert len(test_prompts) == 6 and len(train_prompts) == 14
    assert not train_prompts & test_prompts
    assert len(train) == 14 * 3 and len(test) == 6 * 3
    assert snapshot.manifest["splits"]["test"] == {
        "path": "test.jsonl",
        "rows": 18,
        "sha256": snapshot.manifest["splits"]["test"]["sha256"],
    }
    # Another seed picks other prompts.
    other = build(project, "preference", test_size=0.2, seed="7")
    assert {r["prompt"] for r in rows_of(Path(other.path) / "test.jsonl")} != test_prompts


def test_it_writes_sft_instruction_prompt_and_pretrain_rows_in_trl_formats(project, people):
    _, ann, _, _ = people
    demonstrate(project, {"text": "Say hi"}, "Hi!", ann)
    demonstrate(
        project,
        {"text": "Translate: chat", "metadata": {"system": "You translate."}},
        "cat",
        ann,
    )

    sft = rows_of(Path(build(project, "sft").path) / "train.jsonl")
    instruction = rows_of(Path(build(project, "instruction").path) / "train.jsonl")
    prompts = rows_of(Path(build(project, "prompts").path) / "train.jsonl")
    pretrain = rows_of(Path(build(project, "pretrain").path) / "train.jsonl")

    assert sft == [
        {"prompt": "Say hi", "completion": "Hi!"},
        {"prompt": "Translate: chat", "completion": "cat"},
    ]
    assert instruction[1] == {
        "messages": [
            {"role": "system", "content": "You translate."},
            {"role": "user", "content": "Translate: chat"},
            {"role": "assistant", "content": "cat"},
        ]
    }
    assert prompts == [{"prompt": "Say hi"}, {"prompt": "Translate: chat"}]
    assert pretrain == [{"text": "Say hi\n\nHi!"}, {"text": "Translate: chat\n\ncat"}]


def test_every_snapshot_kind_has_one_registration():
    assert list(SNAPSHOT_KINDS) == SnapshotKind.values


SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"}  # fmt: skip


def test_dataset_info_describes_each_kind_for_llamafactory(project, people):
    """Kills mutations: a kind's LLaMA-Factory entry given to another kind, or the text one
    used for conversations (and the other way round), or its keys reordered."""
    _, ann, bob, _ = people
    demonstrate(project, {"text": "Say hi"}, "Hi!", ann)
    services.prompts_create(
        project=project, items=[{"text": "Doc.", "metadata": {"document": True}}]
    )
    _, (a, b), task = prompt_with(project, "P", ["yes", "no"], kind=TaskKind.COMPARE)
    judge(task, bob, {"winner": a.pk})

    def info(kind, **filters):
        (entry,) = json.loads((Path(build(project, kind, **filters).path) / "dataset_info.json")
                              .read_text()).items()  # fmt: skip
        assert entry[0] == f"prefs_{kind}_train"
        # LLaMA-Factory takes a conversational pair only with one message object on each side
        # (test_import_real_formats.py reads it back by its rules): a file of its own.
        paired = kind == "preference" and filters.get("conversational")
        assert entry[1].pop("file_name") == (
            "train.llamafactory.jsonl" if paired else "train.jsonl"
        )
        return list(entry[1].items())

    messages = [("formatting", "sharegpt"), ("columns", {"messages": "messages"}),
                ("tags", SHAREGPT_TAGS)]  # fmt: skip
    assert (
        info("pretrain")
        == info("pretrain", conversational=True)
        == [("columns", {"prompt": "text"})]
    )
    assert info("sft") == [("columns", {"prompt": "prompt", "response": "completion"})]
    assert info("sft", conversational=True) == messages
    assert info("instruction") == info("instruction", conversational=True) == messages
    assert info("prompts") == [("columns", {"prompt": "prompt"})]
    assert info("prompts", conversational=True) == [
        ("formatting", "sharegpt"), ("columns", {"messages": "prompt"}), ("tags", SHAREGPT_TAGS)
    ]  # fmt: skip
    assert info("preference") == [
        ("ranking", True),
        ("columns", {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}),
    ]
    assert info("preference", conversational=True) == [
        ("formatting", "sharegpt"),
        ("ranking", True),
        ("columns", {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}),
        ("tags", SHAREGPT_TAGS),
    ]


def test_it_writes_conversational_rows_when_a_prompt_is_a_conversation(project, people):
    _, ann, _, _ = people
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye?"},
    ]
    demonstrate(project, {"messages": messages}, "Bye!", ann)
    demonstrate(project, {"text": "Plain"}, "Reply", ann)

    sft = rows_of(Path(build(project, "sft").path) / "train.jsonl")

    assert sft[0] == {"messages": messages + [{"role": "assistant", "content": "Bye!"}]}
    assert sft[1] == {
        "messages": [
            {"role": "user", "content": "Plain"},
            {"role": "assistant", "content": "Reply"},
        ]
    }


def test_it_keeps_text_byte_for_byte(project, people):
    _, ann, _, _ = people
    tricky = "  {{ 7*7 }} <b>&amp;</b>\u2028line\u0085sep é\u0301 שלום 😀\n"
    demonstrate(project, {"text": tricky}, tricky + "x" * 20_000, ann)

    path = Path(build(project, "sft").path) / "train.jsonl"

    (row,) = rows_of(path)
    assert row == {"prompt": tricky, "completion": tricky + "x" * 20_000}
    assert len(path.read_text(encoding="utf-8").split("\n")) == 2  # one row, one newline


def test_preference_lines_are_canonical_json(project, people):
    from annotation.exports.snapshots import _encoder

    _, ann, _, _ = people
    tricky = 'q"\\ {{ 7*7 }} \u2028 😀 \t'
    _, (x, y), task = prompt_with(project, tricky, [tricky + "a", "b\n"], kind=TaskKind.COMPARE)
    judge(task, ann, {"winner": x.pk, "strength": 3})

    line = (Path(build(project, "preference").path) / "train.jsonl").read_text(encoding="utf-8")

    row = json.loads(line)
    assert line == _encoder.encode(row) + "\n"
    assert row["prompt"] == tricky and row["chosen"] == tricky + "a" and row["margin"] == 3.0


def test_it_writes_parquet_and_hf_datasets_that_load(project, people):
    from datasets import load_dataset, load_from_disk

    _, ann, _, _ = people
    for i in range(3):
        _, (a, b), task = prompt_with(project, f"P{i}", [f"a{i}", f"b{i}"], kind=TaskKind.COMPARE)
        judge(task, ann, {"winner": a.pk})

    parquet = Snapshot.objects.get(
        pk=snapshot_build(
            snapshot=snapshot_request(
                project=project, kind="preference", format="parquet", enqueue=False
            )
        ).pk
    )
    hf = snapshot_build(
        snapshot=snapshot_request(project=project, kind="preference", format="hf", enqueue=False)
    )
    jsonl = build(project, "preference", test_size=0.1)

    assert parquet.sha256 == hf.sha256 == jsonl.sha256
    assert parquet.path.endswith("-parquet") and hf.path.endswith("-hf")
    ds = load_dataset("parquet", data_files=str(Path(parquet.path) / "train.parquet"))["train"]
    assert sorted(ds.column_names) == ["agreement", "chosen", "margin", "prompt", "rejected"]
    assert sorted(ds["chosen"]) == ["a0", "a1", "a2"]
    assert load_from_disk(str(Path(hf.path) / "hf"))["train"].num_rows == 3
    js = load_dataset("json", data_files=str(Path(jsonl.path) / "train.jsonl"))["train"]
    assert js.num_rows == 3
    info = json.loads((Path(jsonl.path) / "dataset_info.json").read_text())
    assert info["prefs_preference_train"] == {
        "file_name": "train.jsonl",
        "ranking": True,
        "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    }


def test_it_is_read_by_the_training_engine(project, people):
    from training.engine.snapshots import check_columns, load_split, read_snapshot

    _, ann, _, _ = people
    _, (a, b), task = prompt_with(project, "P", ["yes", "no"], kind=TaskKind.COMPARE)
    judge(task, ann, {"winner": a.pk})

    snap = read_snapshot(build(project, "preference").path)

    assert snap.kind == "preference" and len(snap.sha256) == 64
    assert check_columns(snap, "dpo") == ("prompt", "chosen", "rejected")
    assert load_split(snap, "train", ("prompt", "chosen", "rejected"))[0] == {
        "prompt": "P",
        "chosen": "yes",
        "rejected": "no",
    }


def test_it_fails_with_a_clear_error_when_there_is_nothing_to_export(project):
    snapshot = snapshot_request(project=project, kind="preference", enqueue=False)
    with pytest.raises(Exception, match="no training rows"):
        snapshot_build(snapshot=snapshot)
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.FAILED
    assert "Import or label data" in snapshot.error


def test_it_rejects_unknown_or_bad_filters(project):
    with pytest.raises(ValidationError) as error:
        snapshot_request(project=project, kind="preference", filters={"colour": 1, "test_size": 2})
    assert set(error.value.message_dict) == {"filters.colour", "filters.test_size"}
    assert not Snapshot.objects.exists()


def test_it_builds_from_the_command_line_into_out(project, people, tmp_path, capsys):
    _, ann, _, _ = people
    _, (a, b), task = prompt_with(project, "P", ["yes", "no"], kind=TaskKind.COMPARE)
    judge(task, ann, {"winner": a.pk})
    out = tmp_path / "out"

    call_command(
        "snapshot", "prefs", "--kind", "preference", "--filter", "test_size=0", "--out", str(out)
    )

    printed = capsys.readouterr().out
    snapshot = Snapshot.objects.get()
    assert snapshot.sha256 in printed and "rows: 1" in printed
    assert rows_of(out / "train.jsonl")[0]["chosen"] == "yes"
    assert json.loads((out / "manifest.json").read_text())["sha256"] == snapshot.sha256


def test_it_names_the_problem_on_the_command_line(project):
    with pytest.raises(CommandError, match="No project"):
        call_command("snapshot", "nope", "--kind", "sft")
    with pytest.raises(CommandError, match="filters.review"):
        call_command("snapshot", "prefs", "--kind", "sft", "--filter", "review=maybe")
    with pytest.raises(CommandError, match="no training rows"):
        call_command("snapshot", "prefs", "--kind", "sft")


def test_it_builds_in_the_celery_task_once(project, people, django_capture_on_commit_callbacks):
    _, ann, _, _ = people
    _, (a, b), task = prompt_with(project, "P", ["yes", "no"], kind=TaskKind.COMPARE)
    judge(task, ann, {"winner": a.pk})
    with django_capture_on_commit_callbacks() as callbacks:
        snapshot = snapshot_request(project=project, kind="preference")
    assert len(callbacks) == 1  # queued on commit, not before

    assert tasks.snapshot_build(snapshot.pk).startswith("ready")
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.READY and snapshot.row_count == 1
    assert tasks.snapshot_build(snapshot.pk) == "skipped: not queued"


def test_it_filters_by_tag_and_language(project, people):
    _, ann, _, _ = people
    for text, tags, language in [
        ("A", ["math"], "en"),
        ("B", ["poetry"], "en"),
        ("C", ["math"], "de"),
    ]:
        _, (x, y), task = prompt_with(
            project,
            text,
            [f"{text}1", f"{text}2"],
            kind=TaskKind.COMPARE,
            tags=tags,
            language=language,
        )
        judge(task, ann, {"winner": x.pk})

    everything = build(project, "preference")
    assert everything.manifest["diversity"] == {
        "prompts": 3,
        "tags": {"math": 2, "poetry": 1},
        "languages": {"de": 1, "en": 2},
        "warnings": ["tag 'math' covers 67% of prompts (over 50%)"],
    }
    rows = rows_of(Path(build(project, "preference", tags=["math"]).path) / "train.jsonl")
    assert [r["prompt"] for r in rows] == ["A", "C"]
    rows = rows_of(
        Path(build(project, "preference", tags=["math"], language="de").path) / "train.jsonl"
    )
    assert [r["prompt"] for r in rows] == ["C"]


# --- held-out split as the project grows -----------------------------------------------------


def _held_out_by_rule(texts, test_size: float, seed: str = "0") -> set[str]:
    """The documented rule: a prompt is held out when the first 16 hex digits of
    sha256("<seed>:<content hash>") are below test_size * 16**16."""
    bound = test_size * 16**16
    return {
        t
        for t in texts
        if int(hashlib.sha256(f"{seed}:{content_hash(t)}".encode()).hexdigest()[:16], 16) < bound
    }


def _sides(snapshot) -> tuple[set[str], set[str]]:
    path = Path(snapshot.path)
    test = path / "test.jsonl"
    return (
        {r["prompt"] for r in rows_of(path / "train.jsonl")},
        {r["prompt"] for r in rows_of(test)} if test.exists() else set(),
    )


@pytest.mark.parametrize("test_size", [0.1, 0.3])
def test_a_prompt_never_changes_side_as_the_project_grows(project, tmp_path, test_size):
    """Growing a project 20 -> 40 -> 80 prompts, with a snapshot at each step: no prompt that
    was ever held out moves to train (nor back), and the held-out share stays near test_size.

    Kills: snapshots.py held out = the round(n * test_size) smallest keys (the old rule, which
    moved a held-out prompt into train when 20 prompts grew to 40); held_out_bound
    share * 16**16 -> share * 16**15."""
    ever_train: set[str] = set()
    ever_test: set[str] = set()
    texts: list[str] = []
    for size in (20, 40, 80):
        new = [f"Question {i}" for i in range(len(texts), size)]
        texts += new
        rows = [{"prompt": t, "chosen": "good", "rejected": "bad"} for t in new]
        path = tmp_path / f"grow-{size}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        assert import_file(project=project, path=path).ok

        train, test = _sides(build(project, "preference", test_size=test_size))

        assert train | test == set(texts) and not train & test
        assert not ever_test & train, f"held-out prompts moved to train at {size} prompts"
        assert not ever_train & test, f"training prompts moved to test at {size} prompts"
        assert test == _held_out_by_rule(texts, test_size)
        ever_train |= train
        ever_test |= test
        # Binomial(size, test_size): within three standard deviations of its mean.
        spread = 3 * math.sqrt(size * test_size * (1 - test_size))
        assert abs(len(test) - size * test_size) <= spread, (size, len(test))
    assert ever_test, "some prompt was held out"


def test_a_tiny_project_may_hold_out_no_prompt_or_every_prompt(project, people):
    """A prompt's side does not depend on how many prompts there are, so a tiny project can
    have no test split (the snapshot then has only train), or every prompt held out: the build
    then fails and says what to do."""
    _, ann, _, _ = people
    assert _held_out_by_rule(["Only prompt 16"], 0.1) == {"Only prompt 16"}
    assert _held_out_by_rule(["Only prompt 1"], 0.1) == set()
    _, (a, b), task = prompt_with(project, "Only prompt 16", ["a", "b"], kind=TaskKind.COMPARE)
    judge(task, ann, {"winner": a.pk})

    with pytest.raises(ValidationError, match="every prompt with rows fell in the held-out"):
        build(project, "preference", test_size=0.1)
    assert Snapshot.objects.order_by("-id").first().status == Snapshot.Status.FAILED
    assert build(project, "preference", test_size=0).row_count == 1

    other = services.project_create(name="Other", slug="other")
    _, (c, d), task = prompt_with(other, "Only prompt 1", ["c", "d"], kind=TaskKind.COMPARE)
    judge(task, ann, {"winner": c.pk})
    snapshot = build(other, "preference", test_size=0.1)
    assert list(snapshot.manifest["splits"]) == ["train"]
    assert snapshot.manifest["prompts"] == {"train": 1, "test": 0}


# --- which judgments enter: the review, source and guideline filters ------------------------


@pytest.fixture
def reviewed(project, people, tmp_path):
    """Labeler judgments under guidelines v1 and v2 and imported ones (no guideline version),
    each approved, pending or rejected; one prompt per judgment, so a row names its judgment."""
    owner, ann, bob, _ = people

    def review(annotation, decision):
        services.annotation_review(annotation=annotation, reviewer=owner, decision=decision)

    services.guideline_publish(project=project, body="v1", author=owner)
    _, (a, b), task = prompt_with(
        project, "labeler approved v1", ["a1", "b1"], kind=TaskKind.COMPARE
    )
    review(judge(task, ann, {"winner": a.pk}), ReviewStatus.APPROVED)
    # A rejected opposite vote on the same pair: counted, it would make the pair a tie.
    review(judge(task, bob, {"winner": b.pk}), ReviewStatus.REJECTED)
    services.guideline_publish(project=project, body="v2", author=owner)
    _, (a, _b), task = prompt_with(
        project, "labeler pending v2", ["a2", "b2"], kind=TaskKind.COMPARE
    )
    judge(task, ann, {"winner": a.pk})
    _, (a, _b), task = prompt_with(
        project, "labeler rejected v2", ["a3", "b3"], kind=TaskKind.COMPARE
    )
    review(judge(task, bob, {"winner": a.pk}), ReviewStatus.REJECTED)
    path = tmp_path / "imported.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"imported {status}", "chosen": "yes", "rejected": "no"}) + "\n"
            for status in ("pending", "approved", "rejected")
        ),
        encoding="utf-8",
    )
    assert import_file(project=project, path=path).ok
    for status in ("approved", "rejected"):
        annotation = Annotation.objects.get(task__prompt__text=f"imported {status}")
        review(annotation, status)
    return project


def snapshot_prompts(tmp_path, *filters: str) -> tuple[list[tuple], dict]:
    """Build a preference snapshot with the command and these `--filter`s; its rows as
    (prompt, chosen, agreement) and its manifest."""
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
    args = ["--filter", "test_size=0"]
    for name_value in filters:
        args += ["--filter", name_value]
    call_command("snapshot", "prefs", "--kind", "preference", *args, "--out", str(out))
    rows = rows_of(out / "train.jsonl")
    manifest = json.loads((out / "manifest.json").read_text())
    return [(r["prompt"], r["chosen"], r["agreement"]) for r in rows], manifest


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (
            (),
            [
                ("labeler approved v1", "a1", 1.0),
                ("labeler pending v2", "a2", 1.0),
                ("imported pending", "yes", 1.0),
                ("imported approved", "yes", 1.0),
            ],
        ),
        (("review=not_rejected",), "same as the default"),
        (
            ("review=approved",),
            [("labeler approved v1", "a1", 1.0), ("imported approved", "yes", 1.0)],
        ),
        (
            ("source=labeler",),
            [("labeler approved v1", "a1", 1.0), ("labeler pending v2", "a2", 1.0)],
        ),
        (
            ("source=imported",),
            [("imported pending", "yes", 1.0), ("imported approved", "yes", 1.0)],
        ),
        (("review=approved", "source=imported"), [("imported approved", "yes", 1.0)]),
        # Imported judgments were made under no guideline of the project: any minimum leaves
        # them out.
        (
            ("guideline_version_min=1",),
            [("labeler approved v1", "a1", 1.0), ("labeler pending v2", "a2", 1.0)],
        ),
        (("guideline_version_min=2",), [("labeler pending v2", "a2", 1.0)]),
    ],
    ids=[
        "default",
        "not_rejected",
        "approved",
        "labeler",
        "imported",
        "approved_imported",
        "guideline_1",
        "guideline_2",
    ],
)
def test_the_review_source_and_guideline_filters_pick_exactly_their_judgments(
    reviewed, tmp_path, filters, expected
):
    """Exactly the judgments a filter names enter the snapshot, and a rejected one never does.

    Kills: rows.py _judgments ignores review=approved; ignores source; ignores
    guideline_version_min; guideline_version__gte -> __gt; keeps rejected judgments;
    snapshots.py prompts_with_rows counts prompts of unfiltered judgments (manifest)."""
    if expected == "same as the default":
        expected = snapshot_prompts(tmp_path)[0]

    rows, manifest = snapshot_prompts(tmp_path, *filters)

    assert rows == expected
    assert not any("rejected" in prompt for prompt, _, _ in rows)
    assert manifest["judgments"] == len(expected)
    assert manifest["diversity"]["prompts"] == manifest["prompts"]["train"] == len(expected)
    for name_value in filters:
        name, _, value = name_value.partition("=")
        assert str(manifest["filters"][name]) == value


def test_min_agreement_keeps_a_pair_whose_agreement_equals_it(project, people):
    """Two votes, 3 for x and 1 for y: x is chosen with agreement exactly 0.5 (margin 1.0).

    Kills: rows.py _Shape._consensus agreeing / count < min_agreement -> <=."""
    _, ann, bob, _ = people
    _, (x, y), task = prompt_with(project, "Q", ["x", "y"], kind=TaskKind.COMPARE)
    judge(task, ann, {"winner": x.pk, "strength": 3})
    judge(task, bob, {"winner": y.pk, "strength": 1})

    kept = build(project, "preference", min_agreement=0.5)
    (row,) = rows_of(Path(kept.path) / "train.jsonl")
    assert (row["chosen"], row["agreement"], row["margin"]) == ("x", 0.5, 1.0)
    assert kept.manifest["below_min_agreement"] == 0
    with pytest.raises(ValidationError, match="no training rows"):
        build(project, "preference", min_agreement=0.51)
    assert Snapshot.objects.order_by("-id").first().error.startswith("rows: the preference")


def test_the_command_writes_parquet_and_hf_with_the_rows_of_jsonl(project, people, tmp_path):
    """`snapshot --format parquet` and `--format hf`: the files are there, pyarrow and datasets
    read them, and they hold the JSONL snapshot's rows, split for split, under the same hash."""
    import pyarrow.parquet as pq
    from datasets import load_from_disk

    _, ann, bob, _ = people
    for i in range(12):
        _, (a, b, c), task = prompt_with(project, f"P{i}", [f"a{i}", f"b{i}", f"c{i}"])
        judge(task, ann, {"ranking": [[a.pk], [b.pk], [c.pk]]})
        if i % 3 == 0:
            judge(task, bob, {"ranking": [[b.pk], [a.pk, c.pk]]})
    built = {}
    for fmt in ("jsonl", "parquet", "hf"):
        out = tmp_path / fmt
        call_command(
            "snapshot", "prefs", "--kind", "preference", "--format", fmt,
            "--filter", "test_size=0.3", "--out", str(out),
        )  # fmt: skip
        built[fmt] = (Snapshot.objects.order_by("-id").first(), out)

    jsonl, jsonl_out = built["jsonl"]
    splits = {name: rows_of(jsonl_out / split["path"]) for name, split in jsonl.manifest["splits"].items()}  # fmt: skip
    assert set(splits) == {"train", "test"} and all(splits.values())
    parquet, parquet_out = built["parquet"]
    hf, hf_out = built["hf"]
    assert parquet.sha256 == hf.sha256 == jsonl.sha256
    assert Path(parquet.path).name == f"{jsonl.sha256}-parquet"
    assert Path(hf.path).name == f"{jsonl.sha256}-hf"
    assert sorted(p.name for p in parquet_out.iterdir()) == [
        "dataset_info.json", "manifest.json", "test.parquet", "train.parquet",
    ]  # fmt: skip
    dataset = load_from_disk(str(hf_out / "hf"))
    assert set(dataset) == set(splits)
    for name, rows in splits.items():
        assert pq.read_table(parquet_out / f"{name}.parquet").to_pylist() == rows
        assert dataset[name].to_list() == rows
        assert (hf_out / f"{name}.jsonl").read_text(encoding="utf-8") == (
            jsonl_out / f"{name}.jsonl"
        ).read_text(encoding="utf-8")


def test_a_prompts_snapshot_counts_its_prompts_and_holds_out_a_test_split(project):
    """The population of a prompts snapshot leaves out imported documents only: a prompt with
    no `document` key in its metadata was dropped too (the key's NULL made the exclude drop
    it), so the manifest counted 0 prompts and no prompt could be held out for the test split."""
    services.prompts_create(
        project=project,
        items=[{"text": f"Question {i}", "tags": ["q"]} for i in range(10)]
        + [{"text": "A whole document", "metadata": {"document": True}}],
    )

    snapshot = build(project, "prompts", test_size=0.3)

    assert snapshot.manifest["diversity"]["prompts"] == 10
    assert snapshot.manifest["diversity"]["tags"] == {"q": 10}
    split = Path(snapshot.path)
    held_out = rows_of(split / "test.jsonl")
    assert 1 <= len(held_out) and len(held_out) + len(rows_of(split / "train.jsonl")) == 10
