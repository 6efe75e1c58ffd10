"""Figures as the pages show them, so two pages never print one figure two ways."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def percent(share: float | None) -> str:
    """A share from 0 to 1 as a whole percentage ("67%"); "—" when there is none."""
    return "—" if share is None else f"{round(100 * share)}%"
