from __future__ import annotations

import os
import sys
from pathlib import Path

# platform/ is a source folder, not a package: put it on sys.path (see README, "Layout").
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
