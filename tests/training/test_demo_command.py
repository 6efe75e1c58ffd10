"""`manage.py rlhf_demo`'s options (README, "The RLHF demo") reach the pipeline it runs; the
end-to-end test runs the pipeline itself (`--quick`, with a worker)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from training.demo import pipeline, state


@pytest.fixture
def demos(monkeypatch, settings, tmp_path, db):
    """The Demo objects the command builds, each recorded instead of run (on the migrated test
    database the command checks first)."""
    settings.VAR_DIR = tmp_path
    built: list[state.Demo] = []
    monkeypatch.setattr(pipeline, "run", lambda demo: built.append(demo) or {"seed": demo.seed})
    # The command sets these with setdefault and installs a SIGTERM handler: keep them here.
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRL_EXPERIMENTAL_SILENCE", "1"),
                        ("TQDM_DISABLE", "1"), ("TRANSFORMERS_VERBOSITY", "error")):  # fmt: skip
        monkeypatch.setenv(name, value)
    before = signal.getsignal(signal.SIGTERM)
    yield built
    signal.signal(signal.SIGTERM, before)


def test_it_passes_rounds_seed_worker_and_out_to_the_pipeline(demos, tmp_path):
    """Kills mutations: training/management/commands/rlhf_demo.py handle
    `rounds=options["rounds"]` -> `rounds=1`; `use_worker=not options["no_worker"]` ->
    `use_worker=True`; `seed=options["seed"]` -> `seed=0`."""
    call_command("rlhf_demo", "--rounds", "3", "--seed", "5", "--no-worker", "--out",
                 str(tmp_path / "report"))  # fmt: skip
    (demo,) = demos
    assert (demo.rounds, demo.seed, demo.use_worker) == (3, 5, False)
    assert demo.sizes == state.Sizes() and demo.out_dir == tmp_path / "report"


def test_quick_means_the_smallest_sizes_and_one_round_unless_told(demos, tmp_path):
    """Kills mutations: rlhf_demo.py handle `1 if options["quick"] else 3` -> `3`;
    `QUICK if options["quick"] else Sizes()` -> `Sizes()`."""
    call_command("rlhf_demo", "--quick")
    call_command("rlhf_demo", "--quick", "--rounds", "2")
    call_command("rlhf_demo")
    quick, quick_two, full = demos
    assert (quick.sizes, quick.rounds, quick.use_worker) == (state.QUICK, 1, True)
    assert (quick_two.sizes, quick_two.rounds) == (state.QUICK, 2)
    assert (full.sizes, full.rounds, full.seed) == (state.Sizes(), 3, 0)
    assert full.out_dir == Path(tmp_path) / "demo"  # var/demo under the var dir


def test_it_refuses_fewer_than_one_round(demos):
    with pytest.raises(CommandError, match="--rounds must be at least 1"):
        call_command("rlhf_demo", "--quick", "--rounds", "0")
    assert demos == []


def test_seeds_runs_one_world_per_seed_and_writes_the_table_of_them_all(demos, tmp_path):
    out = tmp_path / "report"
    call_command("rlhf_demo", "--quick", "--seeds", "4,0,2", "--out", str(out))
    assert [d.seed for d in demos] == [4, 0, 2]
    assert [d.out_dir for d in demos] == [out / "seed-4", out / "seed-0", out / "seed-2"]
    assert all(d.sizes == state.QUICK and d.rounds == 1 for d in demos)
    table = (out / "seeds.md").read_text(encoding="utf-8")
    assert "| figure | seed 4 | seed 0 | seed 2 | mean | range |" in table
    assert (out / "seeds.json").is_file()


@pytest.mark.parametrize("seeds", ["a,b", "1,1", ","])
def test_it_refuses_seeds_that_are_not_a_list_of_distinct_integers(demos, seeds):
    with pytest.raises(CommandError, match="--seeds"):
        call_command("rlhf_demo", "--quick", "--seeds", seeds)
    assert demos == []


def test_on_a_database_without_migrations_it_says_to_migrate(tmp_path):
    """A fresh PLATFORM_VAR_DIR (an empty SQLite file) gave a traceback ending in "no such
    table: auth_user" at the demo's first stage."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PLATFORM_VAR_DIR": str(tmp_path), "DJANGO_DEBUG": "1"}
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "manage.py", "rlhf_demo", "--quick", "--no-worker"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert "unapplied migrations: run `.venv/bin/python manage.py migrate` first" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "demo").exists()  # nothing run, no report
