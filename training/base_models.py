"""Base models of a project: what SFT (and every stage but pretraining) starts from.

An engineer registers one from the admin in one of two ways:
- by a folder under MODELS_DIR (copied there by whoever runs the platform): registered at once,
  its config.json read for what the model page shows. The folder a person types is resolved
  (`..`, symlinks) and must stay inside MODELS_DIR.
- by a hub name (`org/name`): a `BaseModelFetch` job that a worker claims, fetches file by file
  into MODELS_DIR/hub/<org>--<name> (progress in bytes on the job's row; a cancel stops it
  between two files) and registers. An offline platform (HF_HUB_OFFLINE=1) refuses the
  request and says what to do instead.

Either way the model is a `ModelArtifact` of stage "pretrain" with no run (`is_base`), and
`info` holds its parameters, dtype, context length and architecture.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from annotation.models import Project
from core.jobs import job_claim, job_fingerprint, job_get_or_create, job_heartbeat
from core.queue import enqueue_on_commit
from training.artifacts import _HUB_NAME, _inside, artifact_register, engineer_require, models_dir
from training.models import BaseModelFetch, ModelArtifact, Stage

Status = BaseModelFetch.Status


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def offline_advice() -> str:
    return (
        "This platform is offline (HF_HUB_OFFLINE=1): nothing can be fetched from the Hugging "
        f"Face hub. Copy the model's folder (config.json, weights, tokenizer) into {models_dir()} "
        "on the server and register it by folder, or unset HF_HUB_OFFLINE for the workers."
    )


# --- What a model folder says about itself ---------------------------------------------------

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def _safetensors_parameters(folder: Path) -> int | None:
    """Exact parameter count from the safetensors headers (a few KB each; weights never read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                total += count
    return total


def model_info(folder: Path) -> dict:
    """Parameters, dtype, context length and architecture of the model in `folder`, from its
    config.json (and safetensors headers); ValidationError naming the file otherwise."""
    from training.engine.resources import estimate_memory

    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValidationError(
            {"folder": f"{config_path}: not a readable model config ({exc.__class__.__name__})"}
        ) from None
    if not isinstance(config, dict):
        raise ValidationError({"folder": f"{config_path}: expected a JSON object"})
    nested = {**config, **(config.get("text_config") or {})}
    context = next((nested[k] for k in _CONTEXT_KEYS if isinstance(nested.get(k), int)), None)
    try:
        parameters = _safetensors_parameters(folder)
    except (OSError, ValueError, KeyError, struct.error):
        parameters = None
    counted = "safetensors" if parameters is not None else "estimate"
    if parameters is None:
        estimate = estimate_memory({"stage": "sft", "model": str(folder)}, device="cpu")
        parameters = estimate.parameters if estimate.known else None
    return {
        "architecture": (config.get("architectures") or [config.get("model_type") or "?"])[0],
        "parameters": parameters,
        "parameters_from": counted,
        "dtype": nested.get("torch_dtype") or nested.get("dtype") or "not stated (float32)",
        "context_length": context,
        "vocab_size": nested.get("vocab_size"),
    }


# --- By folder -------------------------------------------------------------------------------


def folder_resolve(folder: str) -> Path:
    """The model folder `folder` names under MODELS_DIR (relative to it, or absolute inside
    it), resolved; ValidationError naming `folder` when it leaves MODELS_DIR (`..`, a symlink
    out), does not exist or holds no config.json."""
    text = (folder or "").strip()
    root = models_dir()
    if not text:
        raise ValidationError({"folder": f"a folder under the models directory {root}"})
    candidate = Path(text).expanduser()
    real = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if real == root or not _inside(real, root):
        raise ValidationError(
            {"folder": f"{text}: not a folder under the models directory {root} (a path may not "
             "leave it, through '..' or a symlink)"}
        )  # fmt: skip
    if not real.is_dir():
        raise ValidationError({"folder": f"{text}: no such folder in {root}"})
    if not (real / "config.json").is_file():
        raise ValidationError(
            {"folder": f"{text}: has no config.json (a model folder holds its config.json, "
             "weights and tokenizer)"}
        )  # fmt: skip
    return real


@transaction.atomic
def base_model_register(*, project: Project, folder: str, name: str = "", user) -> ModelArtifact:
    """Register the model in `folder` (under MODELS_DIR) as a base model of `project`: an
    engineer's act (PermissionDenied below); ValidationError naming `folder` otherwise."""
    engineer_require(user, project)
    real = folder_resolve(folder)
    return artifact_register(
        project=project, name=(name or "").strip() or real.name, stage=Stage.PRETRAIN,
        path=str(real), user=user, info=model_info(real),
    )  # fmt: skip


# --- By hub name -----------------------------------------------------------------------------


def hub_folder(hub_name: str) -> Path:
    return models_dir() / "hub" / hub_name.replace("/", "--")


@transaction.atomic
def base_model_fetch_request(
    *, project: Project, hub_name: str, name: str = "", user
) -> BaseModelFetch:
    """Ask a worker to fetch `hub_name` and register it in `project`. The same request while
    one is unfinished gets that job (`reused`). ValidationError naming `hub_name` for a name
    that is not one, or when the platform is offline (with what to do instead)."""
    engineer_require(user, project)
    hub_name = (hub_name or "").strip()
    if not _HUB_NAME.fullmatch(hub_name) or ".." in hub_name:
        raise ValidationError(
            {"hub_name": f"{hub_name!r}: a hub name is org/name (letters, digits, . _ -)"}
        )
    if hub_offline():
        raise ValidationError({"hub_name": offline_advice()})
    job, created = job_get_or_create(
        BaseModelFetch,
        fingerprint=job_fingerprint(kind="base_model_fetch", project=project.pk, hub=hub_name),
        defaults={"project": project, "hub_name": hub_name,
                  "name": (name or "").strip() or hub_name, "created_by": user},
    )  # fmt: skip
    if created:
        enqueue_on_commit("training.tasks.base_model_fetch", job.pk)
    return job


@transaction.atomic
def base_model_fetch_cancel(*, job: BaseModelFetch, user=None) -> BaseModelFetch:
    """Queued: cancelled at once. Fetching: a flag the worker reads before each file (and
    before registering), so it stops after the file it is downloading; the files fetched so far
    are kept, and fetching again finishes them. With a `user`: an engineer of the job's project
    only (PermissionDenied); ValidationError for a job that has finished."""
    if user is not None:
        engineer_require(user, job.project)
    now = timezone.now()
    jobs = BaseModelFetch.objects.filter(pk=job.pk)
    if jobs.filter(status=Status.QUEUED).update(
        status=Status.CANCELLED, cancel_requested=True, finished_at=now
    ):
        job.refresh_from_db()
        return job
    if not jobs.filter(status=Status.RUNNING).update(cancel_requested=True):
        job.refresh_from_db()
        raise ValidationError(
            f"The fetch of {job.hub_name} is already {job.get_status_display().lower()}."
        )
    job.refresh_from_db()
    return job


class FetchError(Exception):
    """Why a fetch failed, in words for the engineer (stored as the job's error)."""


class FetchCancelled(Exception):
    """An engineer cancelled the fetch: it stops between two files."""


def _cancel_check(job: BaseModelFetch) -> None:
    # Read from the database each time: the cancel comes from a web request, not this process.
    if BaseModelFetch.objects.filter(pk=job.pk, cancel_requested=True).exists():
        raise FetchCancelled


# The files a model needs to load: configs, tokenizer, weights (safetensors, else .bin). No code
# (`trust_remote_code` is never set), no other formats (ONNX, GGUF, TF, Flax).
_KEEP = (".json", ".safetensors", ".model", ".txt", ".tiktoken", ".jinja")


def _model_files(siblings: list[tuple[str, int]]) -> list[tuple[str, int]]:
    top = [(name, size) for name, size in siblings if "/" not in name]
    keep = [(n, s) for n, s in top if n.endswith(_KEEP)]
    if not any(n.endswith(".safetensors") for n, _ in keep):
        keep += [(n, s) for n, s in top if n.endswith(".bin") and n.startswith("pytorch_model")]
    return keep


def _fetch(job: BaseModelFetch, progress: dict) -> Path:
    if hub_offline():
        raise FetchError(offline_advice())
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    folder = hub_folder(job.hub_name)
    try:
        found = HfApi(endpoint=constants.ENDPOINT).model_info(job.hub_name, files_metadata=True)
        files = _model_files([(s.rfilename, s.size or 0) for s in found.siblings or []])
        if not any(n == "config.json" for n, _ in files):
            raise FetchError(f"{job.hub_name} has no config.json: not a transformers model")
        progress.update(bytes_total=sum(s for _, s in files), files_total=len(files))
        for filename, size in files:
            _cancel_check(job)
            hf_hub_download(job.hub_name, filename, local_dir=folder, endpoint=constants.ENDPOINT)
            progress["bytes_done"] += size
            progress["files_done"] += 1
    except (FetchError, FetchCancelled):
        raise
    except GatedRepoError:
        raise FetchError(
            f"{job.hub_name} is gated: set HF_TOKEN on the workers to a token that has accepted "
            "its licence, then fetch it again"
        ) from None
    except RepositoryNotFoundError:
        raise FetchError(f"{job.hub_name} is not a model on the Hugging Face hub") from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError):
        raise FetchError(offline_advice()) from None
    except Exception as exc:  # noqa: BLE001 - any network failure: said, not raised
        raise FetchError(
            f"Could not fetch {job.hub_name} from {constants.ENDPOINT} "
            f"({exc.__class__.__name__}: {exc}). Is the worker offline? Check its network, or "
            f"copy the model's folder into {models_dir()} and register it by folder."
        ) from None
    return folder


def base_model_fetch_execute(*, job_id: int, worker: str = "local") -> str:
    """Claim a fetch, download its files (progress on the row via the heartbeat), register the
    base model; a cancel stops it between two files. A message sent twice, or a retry of a
    started job, does nothing."""
    if not job_claim(BaseModelFetch, job_id, worker=worker):
        return "skipped"
    job = BaseModelFetch.objects.select_related("project", "created_by").get(pk=job_id)
    progress = {"bytes_done": 0, "bytes_total": 0, "files_done": 0, "files_total": 0}
    with job_heartbeat(BaseModelFetch, job_id, worker=worker, progress=lambda: dict(progress)):
        try:
            folder = _fetch(job, progress)
            _cancel_check(job)  # after the last file: nothing registered
            with transaction.atomic():
                artifact = artifact_register(
                    project=job.project, name=job.name, stage=Stage.PRETRAIN,
                    path=str(folder), user=job.created_by, info=model_info(folder),
                )  # fmt: skip
        except (FetchError, ValidationError, PermissionDenied) as exc:
            said = " ".join(getattr(exc, "messages", None) or [str(exc)])
            BaseModelFetch.objects.filter(pk=job_id).update(
                status=Status.FAILED, error=said, finished_at=timezone.now(), **progress
            )
            return "failed"
        except FetchCancelled:
            BaseModelFetch.objects.filter(pk=job_id).update(
                status=Status.CANCELLED, finished_at=timezone.now(), **progress
            )
            return "cancelled"
    BaseModelFetch.objects.filter(pk=job_id).update(
        status=Status.SUCCEEDED, artifact=artifact, finished_at=timezone.now(), **progress
    )
    return "succeeded"
