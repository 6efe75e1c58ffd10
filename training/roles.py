"""Which permissions of the training models each project role opens in the admin.

Registered with annotation's role groups in TrainingConfig.ready (see annotation/roles.py).
"""

from __future__ import annotations

from annotation.models import Role
from annotation.roles import RoleTable

ROLE_PERMISSIONS: RoleTable = {
    Role.CURATOR: [
        ("modelartifact", "view"),
        ("trainingrun", "view"),
        ("arenabattleset", "view"),
        ("basemodelfetch", "view"),
    ],
    Role.ENGINEER: [
        (m, a)
        for m in (
            "trainingrun",
            "modelartifact",
            "metricpoint",
            "generationjob",
            "round",
            "basemodelfetch",
        )
        for a in ("add", "change", "view")
    ],
}
