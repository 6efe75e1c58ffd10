"""The import rules of the house, read from the source (no module is imported).

- `config` (settings, urls, the Celery app) is the top of the house: only Django's entry points
  and config itself import it, never an app (core, annotation, training).
- `core` is the plumbing every app uses: it imports no project app.
- `training/engine` is plain Python: no Django, and no module of the Django side of the project.
- No import circle between project modules.

Every import counts, the ones inside functions too: moving an import into a function hides a
circle from Python at start-up, not from the design. `from package import name` depends on the
module `package.name` when there is one, otherwise on `package`; importing a module's parent
packages is not counted (`tests/`, migrations and `bench/` are not checked).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the project's top-level packages in it (platform/ is on sys.path).
PACKAGES = {"platform": ("config", "core"), ".": ("annotation", "training")}
PROJECT = {name for names in PACKAGES.values() for name in names}
SKIPPED_FOLDERS = {"migrations", "__pycache__"}
# Django and the libraries that only run inside it.
DJANGO_SIDE = {"django", "rest_framework", "celery"}


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages under `root`."""
    modules = {}
    for folder, packages in PACKAGES.items():
        for package in packages:
            for path in sorted((root / folder / package).rglob("*.py")):
                parts = list(path.relative_to(root / folder).with_suffix("").parts)
                if SKIPPED_FOLDERS & set(parts):
                    continue
                if parts[-1] == "__init__":
                    parts.pop()
                modules[".".join(parts)] = path
    return modules


def _imported_names(path: Path, module: str, known: set[str]) -> set[str]:
    """Absolute names of what the module imports anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            names.update(submodules)
            if len(submodules) < len(node.names):
                names.add(base)
    return names


def _module_of(name: str, known: set[str]) -> str:
    """The longest known module `name` starts with (`from x.y import SomeClass`: x.y)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return name


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> what it imports: project modules by name, other libraries by top-level name."""
    modules = project_modules(root)
    known = set(modules)
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imported_names(path, module, known):
            top = name.partition(".")[0]
            targets.add(_module_of(name, known) if top in PROJECT else top)
        graph[module] = targets - {module}
    return graph


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph.get(start, ()))
    while todo:
        name = todo.pop()
        if name in graph and name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of project modules that import each other, directly or through others."""
    reach = {module: _reachable(graph, module) for module in graph}
    found, placed = [], set()
    for module in sorted(graph):
        if module in placed:
            continue
        group = sorted({module} | {other for other in reach[module] if module in reach[other]})
        if len(group) > 1:
            found.append(group)
            placed.update(group)
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if _in(target, "config") and not _in(module, "config"):
                found.append(f"{module} imports {target}: only Django's entry points import config")
            if _in(module, "core") and (_in(target, "annotation") or _in(target, "training")):
                found.append(f"{module} imports {target}: core imports no project app")
            if _in(module, "training.engine") and (
                target in DJANGO_SIDE or (target in graph and not _in(target, "training.engine"))
            ):
                found.append(f"{module} imports {target}: the engine is plain Python")
    found += [f"import circle: {' <-> '.join(group)}" for group in circles(graph)]
    return found


# --- The rules can fail: a small tree that keeps them, and one way to break each -----------

CLEAN = {
    "platform/config/__init__.py": "from config.celery import app\n",
    "platform/config/celery.py": "from celery import Celery\napp = Celery()\n",
    "platform/config/urls.py": "from annotation import views\nfrom core.login import LoginView\n",
    "platform/core/__init__.py": "",
    "platform/core/login.py": "from django.contrib.auth import views\n",
    "platform/core/queue.py": "from celery import current_app\n",
    "annotation/__init__.py": "",
    "annotation/models.py": "from django.db import models\n",
    "annotation/views.py": "from annotation.models import Project\nfrom core import queue\n",
    "annotation/migrations/0001_initial.py": "from training.models import Run\n",
    "training/__init__.py": "",
    "training/models.py": "from annotation.models import Project\n",
    "training/services.py": "from core.queue import enqueue_on_commit\nfrom training import engine\n",
    "training/engine/__init__.py": "from .runner import run_stage\n",
    "training/engine/runner.py": "import torch\n\ndef run_stage():\n    from . import runtime\n",
    "training/engine/runtime.py": "from .config import Config\n",
    "training/engine/config.py": "import yaml\n",
}

BROKEN = {
    "an app imports config": (
        {"training/services.py": "def launch():\n    from config.celery import app\n"},
        "training.services imports config.celery",
    ),
    "core imports a project app": (
        {"platform/core/queue.py": "def send():\n    from training import tasks\n",
         "training/tasks.py": ""},
        "core.queue imports training.tasks",
    ),
    "the engine imports django": (
        {"training/engine/config.py": "def load():\n    from django.conf import settings\n"},
        "training.engine.config imports django",
    ),
    "the engine imports the Django side": (
        {"training/engine/runtime.py": "from training.models import Run\n"},
        "training.engine.runtime imports training.models",
    ),
    "a circle through a function-local import": (
        {"annotation/models.py": "def build():\n    from annotation import views\n"},
        "import circle: annotation.models <-> annotation.views",
    ),
    "a circle of relative imports": (
        {"training/engine/config.py": "from .runner import StageResult\n"},
        "import circle: training.engine.config <-> training.engine.runner <-> "
        "training.engine.runtime",
    ),
}  # fmt: skip


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_tree_that_keeps_the_rules_has_no_violation(tmp_path):
    graph = import_graph(_tree(tmp_path, CLEAN))
    assert "annotation.migrations.0001_initial" not in graph
    assert graph["training.engine.runner"] == {"torch", "training.engine.runtime"}
    assert violations(graph) == []


@pytest.mark.parametrize("broken", BROKEN.values(), ids=BROKEN.keys())
def test_it_names_each_kind_of_violation(tmp_path, broken):
    files, expected = broken
    found = violations(import_graph(_tree(tmp_path, {**CLEAN, **files})))
    assert [v for v in found if v.startswith(expected)], found


def test_the_project_keeps_the_rules():
    graph = import_graph(ROOT)
    walked = {"config.settings", "core.queue", "annotation.services", "training.engine.runner"}
    assert walked <= set(graph)
    assert violations(graph) == []
