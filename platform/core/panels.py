"""Sections that one app adds to a page of another app's.

training shows each labeling round's progress on annotation's curate page, and annotation must
not import training. So the page asks `panels("curate", project)` for what others contributed:
each contribution is a function of the project giving (template name, context) or None."""

from __future__ import annotations

from collections.abc import Callable

_contributed: dict[str, list[Callable]] = {}


def panel_contribute(*, page: str, panel: Callable) -> None:
    panels_of = _contributed.setdefault(page, [])
    if panel not in panels_of:
        panels_of.append(panel)


def panels(page: str, obj) -> list[dict]:
    """[{"template", "context"}] of the panels contributed to `page` that have something to
    show for `obj`."""
    out = []
    for panel in _contributed.get(page, []):
        found = panel(obj)
        if found is not None:
            template, context = found
            out.append({"template": template, "context": context})
    return out
