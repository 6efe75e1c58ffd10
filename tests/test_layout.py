"""Guards the layout: platform/ must stay a source folder, never a package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_it_has_no_platform_package():
    assert (ROOT / "platform" / "config" / "settings.py").exists()
    assert not (ROOT / "platform" / "__init__.py").exists(), (
        "platform/__init__.py would shadow the standard library module 'platform'"
    )


def test_it_keeps_the_stdlib_platform_module_importable():
    import platform
    import uuid

    assert platform.system()  # the stdlib module, not our folder
    assert uuid.uuid4().hex


def test_it_imports_torch_from_the_repository_root():
    # Run from the repo root with platform/ on sys.path, as manage.py and the worker do.
    code = "import sys; sys.path.insert(0, 'platform'); import platform, torch; print(platform.system())"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
