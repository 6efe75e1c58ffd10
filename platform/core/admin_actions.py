"""Admin actions that one app adds to the admin of another app's model.

training offers "Train on the selected snapshot" on annotation's snapshot admin, and annotation
must not import training. So the admin of a model that takes such actions derives from
`ContributedActionsMixin`, and the app that adds one calls `admin_action_contribute`. The
actions are read on every request, not copied at import, so which admin module loads first
does not matter.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db.models import Model

# "app_label.model_name" -> the actions other apps added to that model's admin.
_contributed: dict[str, list[Callable]] = {}


def admin_action_contribute(*, model: type[Model], action: Callable) -> None:
    actions = _contributed.setdefault(model._meta.label_lower, [])
    if action not in actions:
        actions.append(action)


class ContributedActionsMixin:
    """A ModelAdmin that also offers the actions other apps contributed to its model."""

    def _get_base_actions(self):
        # Where Django gathers `actions`: the contributed ones then pass the same permission
        # filter, pop-up rule and `actions = None` switch as the admin's own.
        contributed = [
            self.get_action(action) for action in _contributed.get(self.opts.label_lower, [])
        ]
        return [*super()._get_base_actions(), *contributed]
