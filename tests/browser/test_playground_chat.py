"""The playground in real headless Chromium, with a real `manage.py worker` generating.

An engineer opens a conversation with a tiny local model, sends a message and watches the
reply grow while the worker writes it; cancels it halfway; sends again and waits for the whole
reply; saves the conversation as a prompt of the project.
"""

from __future__ import annotations

import random

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.models import Prompt, Role
from tests.training.runs_testutils import wait_for, worker_started
from training.models import ModelArtifact, PlaygroundSession

pytestmark = [
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

WORDS = "the a cat dog sat ran on under mat log red blue big small happy sad".split()


@pytest.fixture
def tiny_policy(tmp_path):
    from training.engine.tiny import tiny_llama, train_tokenizer

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)]
    train_tokenizer(lines, tmp_path / "tok", vocab_size=300)
    return tiny_llama(tmp_path / "tok", tmp_path / "policy")


@pytest.fixture
def worker(tmp_path, django_db_blocker):
    proc = worker_started(None, tmp_path / "worker.log", django_db_blocker, timeout=120,
                          env={"TRAINING_TORCH_THREADS": "1"})  # fmt: skip
    yield proc
    proc.stop()


def test_a_reply_streams_is_cancelled_then_saved_as_a_prompt(
    page, login, screenshot, make_user, tiny_policy, worker
):
    engineer = make_user("eng")
    project = services.project_create(name="Chat", slug="chat")
    services.membership_set(project=project, user=engineer, role=Role.ENGINEER)
    ModelArtifact.objects.create(project=project, name="tiny-chat", stage="sft",
                                 path=str(tiny_policy))  # fmt: skip
    login("eng", "pw-eng")
    page.goto(f"/training/playground/projects/{project.pk}/")
    page.get_by_label("Model").select_option(label="tiny-chat (Supervised fine-tuning)")
    page.get_by_role("button", name="New conversation").click()
    page.wait_for_url("**/playground/sessions/*/")
    session = PlaygroundSession.objects.get()

    # Greedy decoding of the random tiny model never emits its end token: a long reply to stop.
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Max new tokens").fill("2000")
    page.get_by_label("Message", exact=True).fill("hello cat <b>bold</b>")
    page.get_by_role("button", name="Send").click()
    reply = page.locator("#playground-reply")
    reply.wait_for(timeout=60_000)
    page.wait_for_function(
        "() => (document.querySelector('#playground-reply')?.textContent || '').length > 20",
        timeout=60_000,
    )
    first = len(reply.inner_text())
    page.wait_for_function(
        f"() => (document.querySelector('#playground-reply')?.textContent || '').length > {first}",
        timeout=30_000,
    )  # it grows while the page watches: tokens stream in
    assert page.locator("#playground-status").get_attribute("data-status") == "generating"
    screenshot(page, "playground-streaming")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#playground-status")).to_have_attribute("data-status", "idle",
                                                                 timeout=30_000)  # fmt: skip
    expect(page.locator("#playground-status")).to_contain_text("Cancelled")
    session.refresh_from_db()
    cut = session.messages[-1]
    assert cut["role"] == "assistant" and 0 < len(cut["content"])
    assert session.max_new_tokens == 2000  # stopped well before its budget
    # The user's text is shown as text, not markup.
    expect(page.locator(".turn.user").first).to_contain_text("<b>bold</b>")

    page.get_by_label("Max new tokens").fill("12")
    page.get_by_label("Message", exact=True).fill("and the dog?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#playground-status")).to_have_attribute("data-status", "idle",
                                                                 timeout=60_000)  # fmt: skip
    expect(page.locator(".turn.assistant")).to_have_count(2)
    page.get_by_role("button", name="Save as prompt").click()
    expect(page.locator(".messages")).to_contain_text("Saved as prompt")
    prompt = Prompt.objects.get(project=project)
    assert [m["role"] for m in prompt.messages] == ["user", "assistant", "user"]
    assert prompt.messages[0]["content"] == "hello cat <b>bold</b>"
    assert prompt.messages[-1]["content"] == "and the dog?"
    assert page.dialogs == []
    wait_for(lambda: not PlaygroundSession.objects.filter(status="generating").exists(), 10)
