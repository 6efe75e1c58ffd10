"""The test session's environment, set before Django's settings are imported.

pytest loads this module first (`-p tests.testenv` in pyproject.toml): pytest-django imports the
settings before any conftest.py, and the settings read the environment once, at import. Every
subprocess a test starts (a Celery worker, `manage.py`, the demo's worker) inherits the same
environment, so it sees the same folders.

The session gets its own var/ in the system's temporary folder: the SQLite test database, the
filesystem broker's queue, DATA_DIR and the collected static files. The checkout's var/ belongs
to the developer's platform (`make run`): its database, and a queue a worker is consuming. An
audit hook watches this process for any file operation under var/ and the session fails if one
happened, naming the test that did it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import pytest

# Tests run with development settings (no production secret needed) and never reach the Hub.
os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

CHECKOUT_VAR = Path(__file__).resolve().parents[1] / "var"
SESSION_VAR = Path(tempfile.mkdtemp(prefix="rlhf-test-var-"))
# Set, not defaulted: a developer's shell may point these at the running platform's folders.
os.environ["PLATFORM_VAR_DIR"] = str(SESSION_VAR)
os.environ["PLATFORM_DATA_DIR"] = str(SESSION_VAR / "data")
os.environ["CELERY_BROKER_DIR"] = str(SESSION_VAR / "broker")

# Audit events whose first argument (and, for the two-path ones, second) is a path.
_PATH_EVENTS = {
    "open", "os.mkdir", "os.remove", "os.rmdir", "os.listdir", "os.scandir", "os.truncate",
    "os.chmod", "os.chown", "os.utime", "shutil.rmtree", "sqlite3.connect",
}  # fmt: skip
_TWO_PATH_EVENTS = {"os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.copytree"}

_touched: list[tuple[str, str, str]] = []  # (test or phase, event, path)
_current = {"where": "start-up (before any test)"}
_lock = threading.Lock()
_first_stack: list[str] = []


def _under_var(path) -> str | None:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        return None  # a file descriptor: the call that opened it was checked
    full = os.path.abspath(os.fspath(path))
    var = str(CHECKOUT_VAR)
    return full if full == var or full.startswith(var + os.sep) else None


def _opened_by_name_in_a_walked_folder(path) -> bool:
    """shutil.rmtree's walk opens each entry by its bare name relative to its parent's
    descriptor (`os.open(name, dir_fd=...)`), and the "open" event does not carry the
    descriptor: an entry named `var` in any folder it deletes (pytest removes old tmp_path
    folders at session end, whose tests made a `var/`) would read as the checkout's."""
    if not isinstance(path, (str, bytes)) or os.path.isabs(path):
        return False
    caller = sys._getframe(2)  # _audit <- this; the caller of os.open (a C function) is next
    return (
        caller.f_code.co_name == "_rmtree_safe_fd" and caller.f_globals.get("__name__") == "shutil"
    )


def _audit(event: str, args: tuple) -> None:
    if event not in _PATH_EVENTS and event not in _TWO_PATH_EVENTS:
        return
    # A path relative to a directory descriptor belongs to a call already seen (shutil.rmtree).
    if event in {"os.remove", "os.rmdir", "os.mkdir"} and args[-1] not in (None, -1):
        return
    if event == "open" and _opened_by_name_in_a_walked_folder(args[0]):
        return
    paths = args[:2] if event in _TWO_PATH_EVENTS else args[:1]
    for path in paths:
        hit = _under_var(path)
        if hit is not None:
            with _lock:
                _touched.append((_current["where"], event, hit))
                if len(_touched) == 1:  # who did it: the thread and the calls that led there
                    _first_stack.append(
                        f"{threading.current_thread().name}: {args[:3]!r}\n"
                        + "".join(traceback.format_stack(limit=12))
                    )


sys.addaudithook(_audit)


def pytest_runtest_logstart(nodeid: str, location) -> None:
    _current["where"] = nodeid


def pytest_runtest_logfinish(nodeid: str, location) -> None:
    _current["where"] = f"after {nodeid} (a module or session fixture's teardown)"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    if not _touched:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    first = {}  # the first operation on each path by each test
    for where, event, path in _touched:
        first.setdefault((where, path), event)
    lines = [f"The tests touched {CHECKOUT_VAR}, the developer's platform's folder:"]
    lines += [f"  {where}: {event} {path}" for (where, path), event in list(first.items())[:30]]
    if len(first) > 30:
        lines.append(f"  ... and {len(first) - 30} more")
    lines.append("Use tmp_path or the settings fixture (tests/testenv.py explains the set-up).")
    lines += ["The first of them, from:", *_first_stack[0].splitlines()]
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "var/ touched", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:
        print("\n".join(lines), file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_VAR, ignore_errors=True)
