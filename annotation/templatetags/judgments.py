"""A judgment as a curator reads it: the responses' texts in the order or choice the labeler
gave, not the payload's ids (`{'ranking': [[5551], [5552]]}`)."""

from __future__ import annotations

import json

from django import template

from annotation.models import Annotation, TaskKind

register = template.Library()


@register.filter
def judgment_shown(annotation: Annotation) -> dict:
    """{"kind": how to lay it out, ...the responses and values it names}. The candidates come
    from `task.candidate_list()` (prefetch `task__candidates` for a page of them); an id that is
    not a candidate of the task is shown as such, never looked up elsewhere."""
    payload = annotation.payload if isinstance(annotation.payload, dict) else {}
    candidates = {r.pk: r for r in annotation.task.candidate_list()}

    def response(pk) -> dict:
        found = candidates.get(pk) if isinstance(pk, int) else None
        return {"pk": pk, "text": found.text if found else None}

    kind = annotation.kind
    try:
        if kind == TaskKind.RANK and isinstance(payload.get("ranking"), list):
            return {
                "kind": "ranking",
                "ranks": [
                    {"rank": n, "responses": [response(pk) for pk in group], "tie": len(group) > 1}
                    for n, group in enumerate(payload["ranking"], start=1)
                ],
                "all_unacceptable": bool(payload.get("all_unacceptable")),
                "better": payload.get("better") or "",
            }
        if kind in (TaskKind.COMPARE, TaskKind.ARENA) and "winner" in payload:
            winner = payload["winner"]
            others = [pk for pk in sorted(candidates) if pk != winner]
            if winner is None:
                return {
                    "kind": "tie",
                    "responses": [response(pk) for pk in sorted(candidates)],
                    "both_bad": bool(payload.get("both_bad")),
                }
            return {
                "kind": "choice",
                "chosen": response(winner),
                "rejected": [response(pk) for pk in others],
                "strength": payload.get("strength"),
            }
        if kind == TaskKind.RATE and "score" in payload:
            return {
                "kind": "rating",
                "score": payload["score"],
                "flags": list(payload.get("flags") or []),
                "responses": [response(pk) for pk in sorted(candidates)],
            }
        if kind == TaskKind.DEMONSTRATION and isinstance(payload.get("text"), str):
            return {"kind": "written", "text": payload["text"]}
        if kind == TaskKind.WRITE_PROMPT and ("text" in payload or "messages" in payload):
            messages = payload.get("messages") or [{"role": "user", "content": payload["text"]}]
            return {
                "kind": "prompt",
                "messages": messages,
                "tags": list(payload.get("tags") or []),
            }
    except (TypeError, AttributeError):  # an imported payload of another shape
        pass
    return {"kind": "raw", "json": json.dumps(annotation.payload, indent=2, ensure_ascii=False)}
