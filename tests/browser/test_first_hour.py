"""A team's first hour in real headless Chromium, from an empty platform to a trained model and
its first preference data: every step a click or a key, from the home page or the admin index
(no shell, no API call, no admin URL typed by hand). Every background job (the import, the task
batch, the snapshots, the SFT run, the generation) runs on one real `manage.py worker`.

The README's "First hour" section is written from this test: change one, change the other.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from annotation.models import Annotation, Project, Role, Snapshot, TaskKind
from tests.browser.test_judgments_reach_data import as_user, start_labeling, submit
from tests.training.runs_testutils import FAST, wait_for, worker_started
from training.models import TrainingRun

pytestmark = [
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

PROMPTS = ["Name a colour.", "Say hello to the cat."]
DEMOS = {PROMPTS[0]: "red is a colour", PROMPTS[1]: "hello cat"}
WORDS = "the a cat dog sat ran on under mat log red blue big small happy sad hello colour".split()
JOB = 120_000  # ms a page waits for a job of the worker (2 shared cores)


@pytest.fixture
def models_dir(settings, tmp_path):
    """The models directory, holding a tiny random llama as the folder `tiny-base`."""
    from training.engine.tiny import tiny_llama, train_tokenizer

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)]
    train_tokenizer(lines, tmp_path / "tok", vocab_size=300)
    settings.MODELS_DIR = tmp_path / "models"
    tiny_llama(tmp_path / "tok", settings.MODELS_DIR / "tiny-base")
    return settings.MODELS_DIR


@pytest.fixture
def worker(tmp_path, django_db_blocker):
    proc = worker_started(None, tmp_path / "worker.log", django_db_blocker, timeout=120,
                          env={"TRAINING_TORCH_THREADS": "1"})  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture
def accounts(make_user):
    """Accounts only: no project, no role (the admin gives them in the browser)."""
    make_user("ada", is_staff=True, is_superuser=True)
    for name in ("cora", "eli", "lena", "rafa"):
        make_user(name)


def add_member(page, row: int, username: str, role: str):
    """One row of the project's Memberships inline: the user (searched by name), the role."""
    page.get_by_role("button", name="Add another Membership").click()
    inline = page.locator(f"#memberships-{row}")
    inline.locator(".select2-selection").click()
    page.locator(".select2-search__field").fill(username)
    page.locator(".select2-results__option", has_text=re.compile(rf"^{username}$")).click()
    inline.locator(f"#id_memberships-{row}-role").select_option(value=role)


def cut_snapshot(page, *, kind: str, filters: dict) -> int:
    """From the home page: Curate, Snapshots, Cut a snapshot (the admin's form, the project
    chosen); the worker builds it."""
    page.get_by_role("link", name="My projects").click()
    page.get_by_role("link", name="Curate First hour").click()
    page.get_by_role("link", name="Snapshots", exact=True).click()
    page.get_by_role("link", name="Cut a snapshot").click()
    expect(page.get_by_label("Project")).to_have_value(str(Project.objects.get().pk))
    page.get_by_label("Kind").select_option(label=kind)
    box = page.get_by_label("Filters")
    box.fill("")
    box.type(json.dumps(filters))
    page.get_by_role("button", name="Save", exact=True).click()
    message = page.locator(".messagelist")
    expect(message).to_contain_text(re.compile(r"Snapshot #\d+ queued\."))
    return int(re.search(r"#(\d+)", message.inner_text()).group(1))


def open_snapshot(page, snapshot_id: int):
    """From the admin's list, once the worker has built it: its record, then its page."""
    wait_for(lambda: Snapshot.objects.get(pk=snapshot_id).status == "ready", JOB / 1000,
             what=f"snapshot #{snapshot_id}")  # fmt: skip
    page.get_by_role("link", name=str(snapshot_id), exact=True).click()
    expect(page.locator(".field-status")).to_contain_text("Ready")
    page.get_by_role("link", name="Preview and download").click()


def test_a_team_goes_from_an_empty_platform_to_a_model_and_its_preference_data(
    browser, live_server, screenshot, accounts, models_dir, worker, tmp_path
):
    shot = iter(range(1, 100))

    def snap(page, name):
        screenshot(page, f"first-hour-{next(shot):02d}-{name}")

    # 1. The admin creates the project and gives four accounts their roles.
    admin = as_user(browser, live_server, "ada")
    admin.get_by_role("link", name="Admin").click()
    admin.get_by_role("link", name="Projects", exact=True).click()
    admin.get_by_role("link", name=re.compile("Add project")).click()
    admin.locator("#id_name").press_sequentially("First hour")
    expect(admin.get_by_label("Slug")).to_have_value("first-hour")
    admin.get_by_label("K responses per ranking task").fill("2")
    for row, (username, role) in enumerate(
        [("cora", "curator"), ("eli", "engineer"), ("lena", "labeler"), ("rafa", "labeler")]
    ):
        add_member(admin, row, username, role)
    snap(admin, "admin-project-members")
    admin.get_by_role("button", name="Save", exact=True).click()
    expect(admin.locator(".messagelist")).to_contain_text("was added successfully")
    project = Project.objects.get(slug="first-hour")
    roles = dict(project.memberships.values_list("user__username", "role"))
    assert roles == {"cora": Role.CURATOR, "eli": Role.ENGINEER, "lena": Role.LABELER,
                     "rafa": Role.LABELER}  # fmt: skip

    # 2. The curator uploads a JSONL of prompts from the curate page.
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    curator = as_user(browser, live_server, "cora")
    expect(curator.locator("#role-first-hour")).to_have_text("curator")
    curator.get_by_role("link", name="Curate First hour").click()
    curator.get_by_role("link", name="Import a file").click()
    curator.get_by_label(re.compile(r"^File \(")).set_input_files(str(prompts_file))
    curator.get_by_role("button", name="Import").click()
    expect(curator.locator("#import-job-status")).to_have_text("Done", timeout=JOB)
    snap(curator, "curator-import-done")

    # 3. ... and creates one demonstration task per imported prompt.
    curator.get_by_role("link", name="Back to curation").click()
    curator.get_by_role("link", name="Create tasks in bulk").click()
    curator.get_by_label("Kind of task").select_option(label="Write a demonstration")
    choice = curator.locator("#id_batch option", has_text="prompts.jsonl")
    curator.get_by_label("Import batch").select_option(label=choice.inner_text())
    curator.get_by_label("Labelers per task").fill("1")
    curator.get_by_role("button", name="Create tasks").click()
    expect(curator.locator("#task-batch-status")).to_have_text("Done", timeout=JOB)
    snap(curator, "curator-tasks-created")

    # 4. A labeler writes the two demonstrations, by keyboard.
    writer = as_user(browser, live_server, "lena")
    start_labeling(writer)
    for n in range(len(PROMPTS)):
        shown = writer.locator(".prompt").inner_text()
        prompt = next(p for p in PROMPTS if p in shown)
        writer.get_by_label("Your ideal assistant reply").click()
        writer.keyboard.type(DEMOS[prompt])
        if n == 0:
            snap(writer, "labeler-demonstration")
        submit(writer)
    expect(writer.locator("#no-task")).to_contain_text("Nothing left")
    written = {a.task.prompt.text: a.payload["text"] for a in Annotation.objects.all()}
    assert written == DEMOS

    # 5. The curator cuts an SFT snapshot in the admin and previews it on its page.
    sft_id = cut_snapshot(curator, kind="Supervised fine-tuning", filters={"test_size": 0})
    open_snapshot(curator, sft_id)
    expect(curator.locator("#preview-train")).to_contain_text(DEMOS[PROMPTS[0]])
    expect(curator.locator("#preview-train")).to_contain_text(PROMPTS[1])
    snap(curator, "curator-sft-snapshot")

    # 6. The engineer registers the tiny base model from the models directory ...
    engineer = as_user(browser, live_server, "eli")
    expect(engineer.locator("#role-first-hour")).to_have_text("engineer")
    engineer.get_by_role("link", name="Admin").click()
    engineer.get_by_role("link", name="Model artifacts").click()
    engineer.get_by_role("link", name="Register a base model").click()
    expect(engineer.locator("#model-folders")).to_contain_text("tiny-base")
    engineer.get_by_label("Project").select_option(label="First hour")
    engineer.locator("#id_folder").fill("tiny-base")
    engineer.locator("#id_name").fill("Tiny base")
    engineer.get_by_role("button", name="Register").click()
    expect(engineer.locator(".messagelist")).to_contain_text("Registered Tiny base in First hour.")
    snap(engineer, "engineer-base-model")

    # 7. ... and launches SFT on the snapshot from it, a few steps.
    engineer.get_by_role("link", name="Home").click()
    engineer.get_by_role("link", name="Training runs").click()
    engineer.get_by_role("link", name="Launch training").click()
    engineer.get_by_label("Stage").select_option(value="sft")
    snapshot = engineer.locator("#id_snapshot option", has_text=f"#{sft_id}")
    engineer.get_by_label("Snapshot").select_option(label=snapshot.inner_text())
    parent = engineer.locator("#id_parent option", has_text="Tiny base")
    engineer.get_by_label("Parent").select_option(label=parent.inner_text())
    engineer.get_by_label("Config").fill(
        "\n".join(f"{k}: {v}" for k, v in {**FAST, "max_length": 32}.items())
    )
    snap(engineer, "engineer-launch")
    engineer.get_by_role("button", name="Launch", exact=True).click()

    # 8. The run finishes on the worker; its page says so.
    run = wait_for(TrainingRun.objects.first, 10, what="the run")
    engineer.wait_for_url(re.compile(rf"/runs/{run.pk}/$"))
    expect(engineer.locator("#run-status")).to_have_text("Succeeded", timeout=300_000)
    run.refresh_from_db()
    assert run.status == "succeeded", worker.tail()
    snap(engineer, "engineer-run-done")

    # 9. The engineer generates two candidates per prompt from the SFT model: ranking tasks.
    expect(engineer.locator("#run-artifact")).to_contain_text("sft-run1")
    engineer.get_by_role("link", name="Generate candidates for labelers").click()
    engineer.get_by_label("Responses per prompt (K)").fill("2")
    engineer.get_by_label("Max new tokens").fill("8")
    engineer.get_by_label("Project").select_option(label="First hour")
    snap(engineer, "engineer-generate")
    engineer.get_by_role("button", name="Generate candidates").click()
    expect(engineer.locator(".messagelist")).to_contain_text("queued")
    wait_for(lambda: project.tasks.filter(kind=TaskKind.RANK).count() == 2, JOB / 1000,
             what="the ranking tasks")  # fmt: skip

    # 10. The other labeler ranks them by keyboard.
    ranker = as_user(browser, live_server, "rafa")
    start_labeling(ranker)
    for task in range(2):
        for _ in range(15):
            ranker.keyboard.press("Tab")
            if ranker.evaluate("document.activeElement.classList.contains('rankable')"):
                break
        ranker.keyboard.press("1")
        ranker.keyboard.press("2")
        if task == 0:
            snap(ranker, "labeler-rank")
        submit(ranker)
    expect(ranker.locator("#no-task")).to_contain_text("Nothing left")
    rankings = [a.payload["ranking"] for a in Annotation.objects.filter(kind=TaskKind.RANK)]
    assert len(rankings) == 2 and all(len(r) == 2 for r in rankings), rankings

    # 11. The curator cuts a preference snapshot and downloads it from its page.
    pref_id = cut_snapshot(curator, kind="Preference pairs", filters={"test_size": 0})
    open_snapshot(curator, pref_id)
    snap(curator, "curator-preference-snapshot")
    with curator.expect_download() as info:
        curator.get_by_role("link", name="Download train").click()
    name = info.value.suggested_filename
    assert re.fullmatch(r"first-hour-preference-[0-9a-f]{12}-train\.jsonl", name), name
    rows = [json.loads(line) for line in Path(info.value.path()).read_text().splitlines()]
    assert sorted(r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][0]["content"]
                  for r in rows) == sorted(PROMPTS)  # fmt: skip
    assert all(r["chosen"] != r["rejected"] for r in rows)
