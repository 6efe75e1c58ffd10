"""tests/testenv.py: the session's own var/, and the check that no test opens the checkout's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
from pathlib import Path

VAR = Path({var!r})


def test_opens_var():
    try:
        open(VAR / "never-created-by-the-probe")
    except FileNotFoundError:
        pass


def test_stays_out():
    assert True
"""


def test_the_session_keeps_every_folder_out_of_the_checkout():
    var = ROOT / "var"
    folders = {
        "VAR_DIR": settings.VAR_DIR,
        "DATA_DIR": settings.DATA_DIR,
        "CELERY_BROKER_DIR": settings.CELERY_BROKER_DIR,
        "STATIC_ROOT": settings.STATIC_ROOT,
    }
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        folders["test database"] = Path(settings.DATABASES["default"]["TEST"]["NAME"]).parent
    for name, folder in folders.items():
        assert not Path(folder).resolve().is_relative_to(var), (name, folder)
    # What a worker or manage.py started by a test inherits.
    assert os.environ["PLATFORM_VAR_DIR"] == str(settings.VAR_DIR)
    assert os.environ["CELERY_BROKER_DIR"] == str(settings.CELERY_BROKER_DIR)


def test_it_fails_the_session_and_names_the_test_that_opened_something_under_var(tmp_path):
    """Kills mutations: tests/testenv.py without its audit hook; its session check not failing
    the run."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE.format(var=str(ROOT / "var")))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
         str(ROOT), "-p", "no:cacheprovider", str(probe)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout
    touched = result.stdout.split("var/ touched", 1)[1]
    assert f"::test_opens_var: open {ROOT / 'var' / 'never-created-by-the-probe'}" in touched
    assert "test_stays_out" not in touched
    assert not (ROOT / "var" / "never-created-by-the-probe").exists()


RMTREE_PROBE = """
import shutil


def test_deletes_a_folder_holding_a_var(tmp_path):
    (tmp_path / "old" / "var" / "runs").mkdir(parents=True)
    shutil.rmtree(tmp_path / "old")
"""


def test_deleting_a_folder_that_holds_a_var_is_not_a_touch_of_the_checkouts(tmp_path):
    """shutil.rmtree opens each entry by its bare name relative to its parent folder's
    descriptor; an entry named `var` read as the checkout's var/ and failed a CI run (pytest
    deletes old tmp_path folders, whose tests made a var/, at session end)."""
    probe = tmp_path / "test_rmtree_probe.py"
    probe.write_text(RMTREE_PROBE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
         str(ROOT), "-p", "no:cacheprovider", str(probe)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout
