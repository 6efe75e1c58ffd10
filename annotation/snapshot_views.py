"""Snapshot pages of the curator UI: the project's snapshots, one snapshot's manifest laid out
with a preview of the first rows of each split, and the download of a split or the manifest
(streamed, with its sha256). Curators and above of the project; any other project is a 404."""

from __future__ import annotations

import base64
import hashlib
import json
from itertools import islice
from pathlib import Path

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from annotation import access, selectors
from annotation.models import Role, Snapshot

PREVIEW_ROWS = 5
# A string longer than this is cut in the preview (the download has it whole).
PREVIEW_CHARS = 2000


def _curated_project(request: HttpRequest, slug: str):
    project = selectors.project_get(request.user, slug=slug)
    access.role_require(request.user, project, Role.CURATOR)
    return project


@login_required
@require_GET
def snapshot_list(request: HttpRequest, slug: str) -> HttpResponse:
    project = _curated_project(request, slug)
    snapshots = Snapshot.objects.filter(project=project).select_related("created_by")
    return render(
        request, "curation/snapshots.html", {"project": project, "snapshots": snapshots[:200]}
    )


def _split_files(snapshot: Snapshot) -> dict[str, Path]:
    """split name -> its file, as the manifest names them, inside the snapshot's folder only."""
    if snapshot.status != Snapshot.Status.READY or not snapshot.path:
        return {}
    folder = Path(snapshot.path)
    splits = (snapshot.manifest or {}).get("splits") or {}
    # Only a plain file name is taken from the manifest: nothing outside the folder is served.
    return {name: folder / Path(str(split.get("path", ""))).name for name, split in splits.items()}


def _preview(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=PREVIEW_ROWS), None)
        return batch.to_pylist() if batch is not None else []
    with path.open("rb") as fh:
        return [json.loads(line) for line in islice(fh, PREVIEW_ROWS)]


def _shown(value) -> dict:
    """A row's value for the page: text as text (cut when long), anything else as JSON."""
    if isinstance(value, str):
        return {"text": value[:PREVIEW_CHARS], "cut": len(value) > PREVIEW_CHARS}
    dumped = json.dumps(value, indent=2, ensure_ascii=False)
    return {"json": dumped[:PREVIEW_CHARS], "cut": len(dumped) > PREVIEW_CHARS}


def _most_common(counts) -> list[tuple[str, int]]:
    if not isinstance(counts, dict):
        return []
    return sorted(
        counts.items(), key=lambda item: (-item[1] if isinstance(item[1], int) else 0, item[0])
    )


@login_required
@require_GET
def snapshot_detail(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    project = _curated_project(request, slug)
    snapshot = get_object_or_404(
        Snapshot.objects.select_related("created_by"), pk=pk, project=project
    )
    manifest = snapshot.manifest or {}
    splits = []
    for name, path in _split_files(snapshot).items():
        split = manifest["splits"][name]
        try:
            size = path.stat().st_size
            rows = [{k: _shown(v) for k, v in row.items()} for row in _preview(path)]
            missing = None
        except (OSError, ValueError, AttributeError) as error:  # not a file of rows
            size, rows, missing = None, [], f"cannot be read: {error.__class__.__name__}"
        splits.append(
            {"name": name, "file": path.name, "rows": split.get("rows"), "sha256": split.get("sha256"),
             "bytes": size, "preview": rows, "missing": missing}
        )  # fmt: skip
    shown_keys = {"kind", "format", "sha256", "project", "splits", "row_count", "diversity",
                  "filters", "prompts", "columns", "built_at", "code_version"}  # fmt: skip
    context = {
        "project": project,
        "snapshot": snapshot,
        "manifest": manifest,
        "splits": splits,
        "diversity": manifest.get("diversity") or {},
        # Most common first (PostgreSQL's jsonb keeps no key order of its own).
        "tags": _most_common((manifest.get("diversity") or {}).get("tags")),
        "languages": _most_common((manifest.get("diversity") or {}).get("languages")),
        "columns": list(manifest.get("columns") or []),
        "filters": sorted((manifest.get("filters") or {}).items()),
        # Every other figure of the manifest (judgments, ties dropped, consensus...), as written.
        "figures": [
            (
                key,
                value
                if isinstance(value, (str, int, float, bool)) or value is None
                else json.dumps(value, ensure_ascii=False),
            )
            for key, value in manifest.items()
            if key not in shown_keys
        ],  # fmt: skip
        "preview_rows": PREVIEW_ROWS,
    }
    return render(request, "curation/snapshot.html", context)


@login_required
@require_GET
def snapshot_download(request: HttpRequest, slug: str, pk: int) -> FileResponse:
    """One split's file (`?file=train`), or `?file=manifest`, streamed from disk; its sha256 (of
    the bytes sent) in the `X-Content-SHA256` header and as RFC 9530's `Repr-Digest`."""
    part = request.GET.get("file", "")
    project = _curated_project(request, slug)
    snapshot = get_object_or_404(Snapshot, pk=pk, project=project)
    files = _split_files(snapshot)
    if snapshot.status == Snapshot.Status.READY and snapshot.path:
        files["manifest"] = Path(snapshot.path) / "manifest.json"
    path = files.get(part)
    if path is None or not path.is_file():
        raise Http404("No such file in this snapshot.")
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
    response = FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=f"{project.slug}-{snapshot.kind}-{snapshot.sha256[:12]}-{path.name}",
    )
    response["X-Content-SHA256"] = digest.hexdigest()
    response["Repr-Digest"] = f"sha-256=:{base64.b64encode(digest.digest()).decode()}:"
    return response
