"""Base models as artifacts of a project (issue 21, part 1): an engineer registers one from the
admin by a folder of the models directory (a path typed never leaves it) or by hub name (a
fetch job with the job lifecycle; offline, a clear refusal saying what to do); its page shows
parameters, dtype, context length and the memory estimate; the launch form offers it.

Nothing downloads: the models are built by the tests, the hub is unreachable or off."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone
from runs_testutils import messages_of, snapshot_row

from annotation import services as annotation_services
from annotation.models import Role
from core.jobs import jobs_reap_stale
from training import base_models
from training.models import BaseModelFetch, ModelArtifact, TrainingRun

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("data_dir")]

REGISTER = "admin:training_modelartifact_register_base"
LAUNCH = "admin:training_trainingrun_launch"


@pytest.fixture
def models_dir(settings, tmp_path, tiny):
    """The models directory, holding a copy of the tiny policy as `tiny-base`."""
    settings.MODELS_DIR = tmp_path / "models"
    shutil.copytree(tiny["policy"], settings.MODELS_DIR / "tiny-base")
    return settings.MODELS_DIR


def _register(client, users, **fields):
    data = {"project": users["project"].pk, "name": "", "folder": "", "hub_name": "", **fields}
    return client.post(reverse(REGISTER), data)


def test_an_engineer_registers_a_folder_and_sees_its_size_and_memory_then_trains_from_it(
    client, tiny, users, models_dir
):
    """Kills mutations: the folder registered without its config.json read (no parameters,
    dtype, context length on its page); the model page without the engine's estimate; the
    launch form not offering it, or SFT refusing to start from it."""
    from transformers import AutoModelForCausalLM

    client.force_login(users["owner"])
    page = client.get(reverse("admin:training_modelartifact_changelist")).content.decode()
    assert f'href="{reverse(REGISTER)}"' in page
    form_page = client.get(reverse(REGISTER)).content.decode()
    assert "<code>tiny-base</code>" in form_page  # the folders there, to choose from

    response = _register(client, users, folder="tiny-base", name="Tiny base")

    artifact = ModelArtifact.objects.get()
    assert response["Location"] == reverse(
        "admin:training_modelartifact_change", args=[artifact.pk]
    )
    assert f"Registered Tiny base in {users['project']}." in messages_of(response)
    assert artifact.is_base and artifact.project == users["project"]
    assert artifact.path == str((models_dir / "tiny-base").resolve())
    config = json.loads((models_dir / "tiny-base" / "config.json").read_text())
    expected = AutoModelForCausalLM.from_pretrained(artifact.path).num_parameters()
    assert artifact.info["parameters"] == expected
    assert artifact.info["context_length"] == config["max_position_embeddings"]
    assert artifact.info["dtype"] == (config.get("torch_dtype") or config.get("dtype"))

    page = client.get(reverse("admin:training_modelartifact_change", args=[artifact.pk]))
    text = page.content.decode()
    assert f"parameters: {expected / 1e6:,.1f} M" in text
    assert f"context length: {config['max_position_embeddings']:,}" in text
    assert "memory, SFT, all weights: " in text and "memory, SFT with LoRA: " in text

    demos = snapshot_row(users["project"], "sft", tiny["snap_sft"])
    form = client.get(reverse(LAUNCH)).context["form"]
    labels = dict(form.fields["parent"].choices)
    assert any(str(v) == str(artifact.pk) and "Tiny base · base model" in label
               for v, label in labels.items())  # fmt: skip
    launched = client.post(reverse(LAUNCH), {"stage": "sft", "snapshot": demos.pk,
                                             "parent": artifact.pk, "config": "max_steps: 1",
                                             "launch": "Launch", "ignore_memory": "on"})  # fmt: skip
    run = TrainingRun.objects.get()
    assert launched.status_code == 302, launched.context["form"].errors
    assert run.parent_artifact == artifact and run.config["model"] == artifact.path


def test_a_typed_folder_never_leaves_the_models_directory(client, tmp_path, users, models_dir):
    """Kills mutations: folder_resolve not resolving `..` or symlinks, accepting an absolute
    path outside, or a folder with no config.json; a refusal said anywhere but under Folder."""
    outside = tmp_path / "outside"
    shutil.copytree(models_dir / "tiny-base", outside)
    (models_dir / "escape").symlink_to(outside, target_is_directory=True)
    (models_dir / "empty").mkdir()
    client.force_login(users["owner"])

    for folder, said in [
        ("../outside", "not a folder under the models directory"),
        (str(outside), "not a folder under the models directory"),
        ("escape", "not a folder under the models directory"),
        ("tiny-base/../../outside", "not a folder under the models directory"),
        (".", "not a folder under the models directory"),
        ("missing", "no such folder"),
        ("empty", "has no config.json"),
    ]:
        response = _register(client, users, folder=folder)
        assert response.status_code == 200, folder
        errors = response.context["form"].errors
        assert list(errors) == ["folder"] and said in errors["folder"][0], (folder, errors)
    both = _register(client, users, folder="tiny-base", hub_name="org/model")
    assert "one of the two" in " ".join(both.context["form"].errors["folder"])
    assert not ModelArtifact.objects.exists()
    # Inside, by its absolute path or through a symlink that stays inside: accepted.
    (models_dir / "alias").symlink_to(models_dir / "tiny-base", target_is_directory=True)
    assert _register(client, users, folder="alias").status_code == 302
    assert ModelArtifact.objects.get().path == str((models_dir / "tiny-base").resolve())


def test_only_an_engineer_of_the_project_registers_into_it(client, make_user, users, models_dir):
    """Kills mutations: the register page open to curators; the project choices not scoped to
    the user's engineer projects; base_model_register without its role check."""
    curator = make_user("curator", is_staff=True)
    annotation_services.membership_set(project=users["project"], user=curator, role=Role.CURATOR)
    client.force_login(curator)
    assert client.get(reverse(REGISTER)).status_code == 403
    client.force_login(users["outsider"])  # an engineer of another project
    refused = _register(client, users, folder="tiny-base")
    assert "project" in refused.context["form"].errors
    with pytest.raises(Exception, match="engineer"):
        base_models.base_model_register(
            project=users["project"], folder="tiny-base", user=users["outsider"]
        )
    assert not ModelArtifact.objects.exists()


def test_offline_a_hub_name_is_refused_with_what_to_do(client, users, models_dir, monkeypatch):
    """Kills mutations: the hub request queued while HF_HUB_OFFLINE is set (a job that can only
    fail), or refused without saying to register a folder instead."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    client.force_login(users["owner"])
    assert 'id="offline-note"' in client.get(reverse(REGISTER)).content.decode()

    response = _register(client, users, hub_name="Qwen/Qwen2.5-0.5B")

    (said,) = response.context["form"].errors["hub_name"]
    assert "offline (HF_HUB_OFFLINE=1)" in said and str(models_dir) in said
    assert "register it by folder" in said
    assert not BaseModelFetch.objects.exists()
    bad = _register(client, users, hub_name="../etc/passwd")
    assert "a hub name is org/name" in bad.context["form"].errors["hub_name"][0]


def test_a_fetch_is_one_job_claimed_once_and_fails_clearly_when_the_hub_is_unreachable(
    client, users, models_dir, monkeypatch
):
    """Kills mutations: a second identical request queuing a second job; a job claimed twice;
    a network failure raised (the job left running) instead of recorded with what to do; the
    reaper's message of a lost fetch."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    client.force_login(users["owner"])

    response = _register(client, users, hub_name="org/tiny")
    again = _register(client, users, hub_name="org/tiny")

    job = BaseModelFetch.objects.get()
    assert (
        response["Location"]
        == again["Location"]
        == reverse("admin:training_basemodelfetch_change", args=[job.pk])
    )
    assert "already being fetched" in messages_of(again)[-1]
    assert (job.status, job.hub_name, job.project, job.created_by) == (
        "queued", "org/tiny", users["project"], users["owner"],
    )  # fmt: skip

    assert base_models.base_model_fetch_execute(job_id=job.pk, worker="w1") == "failed"
    assert base_models.base_model_fetch_execute(job_id=job.pk, worker="w2") == "skipped"
    job.refresh_from_db()
    assert job.status == "failed" and job.worker == "w1" and job.finished_at is not None
    assert job.error.startswith("Could not fetch org/tiny from http://127.0.0.1:9")
    assert "Is the worker offline?" in job.error and "register it by folder" in job.error
    assert not ModelArtifact.objects.exists()
    page = client.get(reverse("admin:training_basemodelfetch_change", args=[job.pk]))
    assert "Could not fetch org/tiny" in page.content.decode()

    lost = BaseModelFetch.objects.create(
        project=users["project"], hub_name="org/other", name="other", status="running",
        worker="w3", heartbeat_at=timezone.now() - timedelta(hours=1),
    )  # fmt: skip
    assert jobs_reap_stale(models=[BaseModelFetch]) == 1
    lost.refresh_from_db()
    assert lost.status == "failed" and lost.error.endswith("fetch it again to finish.")


class _FakeHub(ThreadingHTTPServer):
    """The two calls of a fetch, served from a local folder as the hub answers them: the model's
    file list (`/api/models/<repo>`) and each file (`/<repo>/resolve/main/<file>`, HEAD and
    GET). Nothing leaves the machine."""

    def __init__(self, repo: str, folder):
        self.repo, self.folder, self.gets = repo, folder, []
        self.on_get = None  # called as a file's GET begins (what a person does meanwhile)
        super().__init__(("127.0.0.1", 0), _FakeHubHandler)

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class _FakeHubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _file(self):
        prefix = f"/{self.server.repo}/resolve/main/"
        path = self.path.split("?")[0]
        if not path.startswith(prefix):
            return None
        target = self.server.folder / path[len(prefix) :]
        return target if target.is_file() else None

    def _answer(self, body: bytes, content_type: str, send: bool, etag: str = "") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Repo-Commit", "a" * 40)
        self.send_header("ETag", f'"{etag or hashlib.sha1(body).hexdigest()}"')
        self.end_headers()
        if send:
            self.wfile.write(body)

    def _serve(self, send: bool) -> None:
        if self.path.split("?")[0] == f"/api/models/{self.server.repo}":
            files = sorted(p for p in self.server.folder.iterdir() if p.is_file())
            siblings = [{"rfilename": p.name, "size": p.stat().st_size} for p in files]
            body = json.dumps({"id": self.server.repo, "sha": "a" * 40, "siblings": siblings})
            return self._answer(body.encode(), "application/json", send)
        target = self._file()
        if target is None:
            self.send_response(404)
            self.end_headers()
            return None
        if send:
            self.server.gets.append(target.name)
            if self.server.on_get is not None:
                self.server.on_get()
        return self._answer(target.read_bytes(), "application/octet-stream", send)

    def do_HEAD(self):
        self._serve(send=False)

    def do_GET(self):
        self._serve(send=True)


# Its own transactions: the heartbeat thread writes the progress through its own connection.
@pytest.mark.django_db(transaction=True)
def test_a_worker_fetches_a_hub_model_with_progress_and_registers_it(
    client, tiny, tmp_path, users, models_dir, monkeypatch
):
    """Kills mutations: the fetch registering nothing, or under another project; files of no
    use (another format) fetched; the progress not counted to the end; the model's info not
    read from what was fetched."""
    from huggingface_hub import constants

    served = tmp_path / "served"
    shutil.copytree(tiny["policy"], served)
    (served / "model.onnx").write_bytes(b"not needed")
    hub = _FakeHub("org/tiny", served)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{hub.server_port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # what HF_ENDPOINT sets, both
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    client.force_login(users["owner"])
    try:
        _register(client, users, hub_name="org/tiny", name="Tiny from the hub")
        job = BaseModelFetch.objects.get()

        assert base_models.base_model_fetch_execute(job_id=job.pk, worker="w1") == "succeeded"
    finally:
        hub.shutdown()
        hub.server_close()

    job.refresh_from_db()
    artifact = job.artifact
    wanted = sorted(p.name for p in served.iterdir() if p.name != "model.onnx")
    assert sorted(hub.gets) == wanted  # the model's files, each once; not the ONNX export
    assert job.status == "succeeded" and job.error == "" and job.finished_at is not None
    assert (job.files_done, job.files_total) == (len(wanted), len(wanted))
    assert job.bytes_done == job.bytes_total == sum((served / n).stat().st_size for n in wanted)
    assert artifact.name == "Tiny from the hub" and artifact.project == users["project"]
    assert artifact.is_base and artifact.path == str(models_dir.resolve() / "hub" / "org--tiny")
    local = ModelArtifact.objects.create(name="x", stage="pretrain", path=tiny["policy"])
    assert artifact.info == base_models.model_info(Path(local.path))  # what was fetched: all
    page = client.get(reverse("admin:training_basemodelfetch_change", args=[job.pk]))
    assert "100% (" in page.content.decode() and f"{len(wanted)}/{len(wanted)} files" in (
        page.content.decode()
    )


def _serve_hub(monkeypatch, hub: _FakeHub) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{hub.server_port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )


# Its own transactions: the Cancel is pressed from the fake hub's thread, mid-fetch.
@pytest.mark.django_db(transaction=True)
def test_an_engineer_cancels_a_fetch_from_its_page_and_it_stops_between_two_files(
    client, tiny, tmp_path, make_user, users, models_dir, monkeypatch
):
    """A fetch could not be cancelled. Its page offers Cancel to its project's engineers only
    (a curator sees the page, no button, and a POST is refused; an outsider's is a 404); pressed
    while a file downloads, the worker finishes that file, fetches no other, registers nothing
    and the fetch ends cancelled with the files it had."""
    curator = make_user("curator", is_staff=True)
    annotation_services.membership_set(project=users["project"], user=curator, role=Role.CURATOR)
    served = tmp_path / "served"
    shutil.copytree(tiny["policy"], served)
    client.force_login(users["owner"])
    with _FakeHub("org/tiny", served) as hub:
        _serve_hub(monkeypatch, hub)
        _register(client, users, hub_name="org/tiny")
        job = BaseModelFetch.objects.get()
        page_url = reverse("admin:training_basemodelfetch_change", args=[job.pk])
        cancel_url = reverse("training:base_model_fetch_cancel", args=[job.pk])
        assert 'id="fetch-cancel"' in client.get(page_url).content.decode()

        client.force_login(curator)
        page = client.get(page_url)
        assert page.status_code == 200 and 'id="fetch-cancel"' not in page.content.decode()
        assert client.post(cancel_url).status_code == 403
        client.force_login(users["outsider"])
        assert client.post(cancel_url).status_code == 404
        job.refresh_from_db()
        assert (job.status, job.cancel_requested) == ("queued", False)

        client.force_login(users["owner"])
        pressed = []
        hub.on_get = lambda: pressed or pressed.append(client.post(cancel_url))

        assert base_models.base_model_fetch_execute(job_id=job.pk, worker="w1") == "cancelled"

    assert pressed[0].status_code == 302 and pressed[0]["Location"] == page_url
    assert "stops after the file it is downloading" in messages_of(pressed[0])[-1]
    job.refresh_from_db()
    assert job.status == "cancelled" and job.finished_at is not None and job.error == ""
    assert len(hub.gets) == job.files_done == 1 < job.files_total
    assert (models_dir / "hub" / "org--tiny" / hub.gets[0]).is_file()  # kept for a new fetch
    assert job.artifact is None and not ModelArtifact.objects.exists()
    page = client.get(page_url).content.decode()
    assert "Cancelled" in page and 'id="fetch-cancel"' not in page
    again = client.post(cancel_url)
    assert messages_of(again)[-1] == "The fetch of org/tiny is already cancelled."


def test_a_queued_fetch_cancelled_is_never_started_and_may_be_asked_again(
    client, users, models_dir, monkeypatch
):
    """Kills mutations: a queued fetch left queued by Cancel (a worker would still fetch it);
    a cancelled fetch blocking the same request; a fetch lost while stopping said failed."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    client.force_login(users["owner"])
    _register(client, users, hub_name="org/tiny")
    job = BaseModelFetch.objects.get()

    response = client.post(reverse("training:base_model_fetch_cancel", args=[job.pk]))

    assert messages_of(response)[-1] == "Cancelled the fetch of org/tiny."
    job.refresh_from_db()
    assert job.status == "cancelled" and job.finished_at is not None
    assert base_models.base_model_fetch_execute(job_id=job.pk, worker="w1") == "skipped"
    _register(client, users, hub_name="org/tiny")
    assert BaseModelFetch.objects.filter(status="queued").exclude(pk=job.pk).count() == 1

    stopping = BaseModelFetch.objects.create(
        project=users["project"], hub_name="org/other", name="other", status="running",
        worker="w3", heartbeat_at=timezone.now() - timedelta(hours=1), cancel_requested=True,
    )  # fmt: skip
    assert jobs_reap_stale(models=[BaseModelFetch]) == 1
    stopping.refresh_from_db()
    assert (stopping.status, stopping.error) == ("cancelled", "")
