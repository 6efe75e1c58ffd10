"""The live run page in a real browser: progress moves and the loss chart fills with data
while a real (tiny) training run executes in a background thread."""

from __future__ import annotations

import json
import random
import threading

import pytest

from annotation.models import Snapshot
from training import execution, runs
from training.models import ModelArtifact, TrainingRun

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WORDS = "the a cat dog sat ran on under mat log red blue big small happy sad".split()


def _sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture
def tiny_sft(tmp_path, settings, project_factory):
    from training.engine.tiny import tiny_llama, train_tokenizer, write_snapshot

    settings.DATA_DIR = tmp_path / "data"
    settings.TRAINING_HEARTBEAT_SECONDS = 1
    rng = random.Random(0)
    train_tokenizer([_sentence(rng, 12) for _ in range(200)], tmp_path / "tok", vocab_size=300)
    policy = tiny_llama(tmp_path / "tok", tmp_path / "policy")
    rows = [{"prompt": f"Q{i}: {_sentence(rng, 4)}?", "completion": " " + _sentence(rng)}
            for i in range(32)]  # fmt: skip
    snap_dir = write_snapshot(tmp_path / "snap", "sft", {"train": rows})
    manifest = json.loads((snap_dir / "manifest.json").read_text())
    project = project_factory("alpha", prompts=1)
    snapshot = Snapshot.objects.create(project=project, kind="sft", status="ready",
                                       sha256=manifest["sha256"], path=str(snap_dir),
                                       manifest=manifest, row_count=32)  # fmt: skip
    parent = ModelArtifact.objects.create(name="tiny-base", stage="pretrain", path=str(policy))
    return snapshot, parent


def test_the_run_page_shows_progress_moving_and_a_loss_chart(
    page, login, screenshot, tiny_sft, django_user_model
):
    snapshot, parent = tiny_sft
    django_user_model.objects.create_superuser("admin", "admin@example.org", "admin-pass-123")
    run = runs.run_launch(
        stage="sft",
        config={
            "max_steps": 400,
            "per_device_train_batch_size": 4,
            "max_length": 64,
            "learning_rate": 1e-3,
            "save_steps": 1000,
        },  # fmt: skip
        snapshots=[snapshot],
        parent=parent,
        name="browser-run",
        enqueue=False,  # executed by the thread below, standing in for a worker
    )
    worker = threading.Thread(
        target=execution.close_db_after(execution.run_execute),
        kwargs={"run_id": run.pk, "worker": "browser-test-thread"},
        daemon=True,
    )
    worker.start()
    try:
        login("admin", "admin-pass-123")
        page.goto(f"/training/runs/{run.pk}/")
        progress = page.locator("#run-progress")
        page.wait_for_function(
            "() => Number(document.querySelector('#run-progress').value) > 0", timeout=60_000
        )
        first = float(progress.get_attribute("value"))
        page.wait_for_function(
            f"() => Number(document.querySelector('#run-progress').value) > {first}",
            timeout=30_000,
        )
        assert float(progress.get_attribute("value")) > first
        loss = page.locator('polyline[data-series="loss"]')
        page.wait_for_function(
            "() => { const l = document.querySelector('polyline[data-series=\"loss\"]');"
            " return l && Number(l.dataset.count) >= 3; }",
            timeout=30_000,
        )
        assert len(loss.get_attribute("points").split()) >= 3
        assert page.locator("#run-status").inner_text() == "Running"
        assert "step" in page.locator("#run-log").inner_text()
        screenshot(page, "training-run-page")
        page.get_by_role("button", name="Cancel").click()
        page.wait_for_function(
            "() => document.querySelector('#run-status').textContent.trim() === 'Cancelled'",
            timeout=30_000,
        )
        assert page.dialogs == []
    finally:
        TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)
        worker.join(timeout=60)
