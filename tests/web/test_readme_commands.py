"""Every command quoted in README.md's ```bash blocks works as written, on a fresh clone.

The commands are read from the README itself, and each must have an entry in `CHECKS` saying how
this test runs it (a command added to the README without one fails the test, and so does an
entry whose command left the README):

- `run`: run as written, by bash, in the checkout, on a scratch SQLite database and data folder
  (`PLATFORM_VAR_DIR`), with none of the environment's DJANGO_*/database/broker settings: only the
  local settings file that the Makefile's rule writes (as the first `make run`/`make test`/
  `make setup` does on a fresh clone), after the Makefile's own `setup` commands;
- `help`: too long to run here (the full demo, a worker that serves for ever): the command with
  `--help` appended, as written otherwise (its values are parsed), and every option the README
  line names must be in the help, with every choice it lists (`auto|trl|...`);
- `make`: `make -n`, the recipe as make would run it, without running it (`make test` would run
  this suite, `make run` serves until Ctrl+C);
- `env`: an `export` line: its variables (command substitutions included, run by bash) are the
  environment of the commands after it in the same block.

The long `rlhf_demo` runs are only checked with `--help` here; `rlhf_demo --quick` itself runs in
tests/training/test_demo_e2e.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# Variables of the developer's or CI's environment that would change what a fresh clone does.
DROPPED = ("DJANGO_", "DATABASE_", "CELERY_", "CACHE_URL", "PLATFORM_", "PYTEST_", "VIRTUAL_ENV")

RUN, HELP, MAKE, ENV, SERVE, NOT_RUN = "run", "help", "make", "env", "serve", "not run"

CHECKS: dict[str, tuple[str, str]] = {
    # Two commands
    "make run": (MAKE, "serves until Ctrl+C"),
    "make test": (MAKE, "would run this suite"),
    # The RLHF demo
    "make demo": (MAKE, "the full demo, ~9 min"),
    ".venv/bin/python manage.py rlhf_demo --quick": (HELP, "2-3 min; test_demo_e2e.py runs it"),
    ".venv/bin/python manage.py rlhf_demo --rounds 1 --seed 1": (HELP, "the full demo, ~5 min"),
    ".venv/bin/python manage.py rlhf_demo --seeds 0,1,2": (HELP, "three full demos"),
    # Configuration: PostgreSQL and Redis
    "export DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf "
    "CELERY_BROKER_URL=redis://127.0.0.1:6379/0": (ENV, ""),
    # Production
    "export DJANGO_DEBUG=0 DJANGO_SECRET_KEY=\"$(python3 -c 'import secrets; "
    "print(secrets.token_urlsafe(64))')\" DJANGO_ALLOWED_HOSTS=rlhf.example.org "
    "DJANGO_CSRF_TRUSTED_ORIGINS=https://rlhf.example.org": (ENV, ""),
    ".venv/bin/python manage.py check --deploy": (RUN, "System check identified no issues"),
    ".venv/bin/python manage.py collectstatic --noinput": (RUN, "static files copied"),
    ".venv/bin/gunicorn --pythonpath platform config.wsgi:application": (SERVE, ""),
    ".venv/bin/python manage.py worker -Q default": (HELP, "a worker serves until stopped"),
    ".venv/bin/python manage.py worker -Q training -c 1 --gpus 0": (
        HELP,
        "a worker serves until stopped",
    ),
    ".venv/bin/python manage.py worker -Q training -c 1 --gpus 1": (
        HELP,
        "a worker serves until stopped",
    ),
    # API
    "TOKEN=$(.venv/bin/python manage.py drf_create_token labeler1 | awk '{print $3}')": (RUN, ""),
    'curl -s -XPOST -H "Authorization: Token $TOKEN" '
    "http://127.0.0.1:8000/api/v1/projects/1/tasks/next/": (RUN, ""),
    'curl -s -XPOST -H "Authorization: Token $TOKEN" -H "Idempotency-Key: 4f1c…" '
    "-H 'Content-Type: application/json' -d '{\"payload\": {\"ranking\": [[3], [1, 2], [4]]}}' "
    "http://127.0.0.1:8000/api/v1/tasks/7/annotations/": (
        NOT_RUN,
        "an example: task 7 and responses 1-4 are whatever the data holds "
        "(tests/web/test_api*.py submit rankings with idempotency keys)",
    ),
    'curl -s -H "Authorization: Token $CURATOR_TOKEN" -F project=1 -F format=auto '
    "-F file=@pairs.jsonl http://127.0.0.1:8000/api/v1/imports/": (
        NOT_RUN,
        "an example: the file, the project and the token are the reader's "
        "(tests/annotation/test_import_jobs.py posts files to this endpoint and polls the job)",
    ),
    'curl -s -H "Authorization: Token $CURATOR_TOKEN" '
    "http://127.0.0.1:8000/api/v1/import-jobs/5/": (
        NOT_RUN,
        "an example: job 5 is whatever the upload above answered",
    ),
    # Curation: usage lines, with placeholders
    ".venv/bin/python manage.py import_data PROJECT FILE [--format auto|prompts-jsonl|"
    "prompts-csv|prompts-parquet|trl|alpaca|sharegpt|hh-rlhf|oasst|label-studio|ultrafeedback] "
    "[--create-project] [--dry-run] [--skip-invalid]": (HELP, "a usage line"),
    ".venv/bin/python manage.py snapshot PROJECT --kind pretrain|sft|instruction|preference|"
    "prompts|kto [--format jsonl|parquet|hf] [--filter test_size=0.1 --filter review=approved "
    "...] [--out DIR]": (HELP, "a usage line"),
    ".venv/bin/python manage.py tasks_create PROJECT --kind demonstration|rank|compare|rate "
    "(--batch N | --tags a,b | --snapshot N | --without-demonstrations N) [--required N] "
    "[--priority N] [--round N] [--instructions TEXT]": (HELP, "a usage line"),
    # Mutation testing
    "make mutate": (MAKE, "an hour of test runs"),
    'make mutate MUTATE_ARGS="--only lease"': (MAKE, "minutes of test runs"),
}


def _one_line(command: str) -> str:
    return re.sub(r"\s+", " ", command).strip()


CHECKS = {_one_line(command): check for command, check in CHECKS.items()}


def readme_blocks() -> list[list[str]]:
    """The command lines of each ```bash block: continuations joined, runs of blanks made one,
    trailing comments cut."""
    blocks = []
    for body in re.findall(r"^```bash\n(.*?)^```", README.read_text(), re.S | re.M):
        lines = [
            re.sub(r" # .*$", "", _one_line(line))
            for line in body.replace("\\\n", " ").splitlines()
        ]
        blocks.append([line for line in lines if line])
    return blocks


def test_it_has_a_check_for_every_readme_command():
    commands = [command for block in readme_blocks() for command in block]
    assert commands, "no ```bash block found in README.md"
    unknown = [c for c in commands if c not in CHECKS]
    assert not unknown, f"README commands without a check in {__file__}: {unknown}"
    stale = [c for c in CHECKS if c not in commands]
    assert not stale, f"checks of commands no longer in README.md: {stale}"


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> dict[str, str]:
    """The environment of a fresh clone after `make setup`: the local settings file written by
    the Makefile's rule, then the Makefile's setup commands, on a scratch database and folder."""
    scratch = tmp_path_factory.mktemp("readme")
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED)}
    env.update(PLATFORM_VAR_DIR=str(scratch / "var"), PLATFORM_ENV_FILE=str(scratch / ".env"))
    env["HOME"] = str(scratch)  # gunicorn's control socket goes under $HOME
    made = subprocess.run(["make", "-s", env["PLATFORM_ENV_FILE"]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    settings = (scratch / ".env").read_text()
    assert "DJANGO_DEBUG=1" in settings and re.search(r"DJANGO_SECRET_KEY=\S{50,}", settings)
    assert (scratch / ".env").stat().st_mode & 0o077 == 0, "the secret key is readable by others"
    # The Makefile's `setup` recipe, as make prints it (its install step is done: the venv).
    recipe = _make_n("setup", env=env)
    setup = [line for line in recipe.splitlines() if line.startswith(".venv/bin/python manage.py")]
    assert len(setup) >= 2, recipe
    for line in setup:
        _bash(line, env, timeout=300)
    return env


def _make_n(args: str, env: dict[str, str]) -> str:
    done = subprocess.run(["make", "-n", *shlex.split(args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, f"make -n {args}: {done.stderr}"
    return done.stdout


def _bash(script: str, env: dict[str, str], timeout: int = 120) -> str:
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"{script}\nexit {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def _exported(line: str, env: dict[str, str]) -> dict[str, str]:
    out = _bash(f"{line}\nenv -0", env)
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def _help_names_the_options(command: str, env: dict[str, str]) -> None:
    """`COMMAND --help` as written (placeholders dropped) lists every option and choice the
    README line names."""
    words = shlex.split(command.replace("[", " ").replace("]", " ").replace("(", " "))
    words = [w.rstrip(")") for w in words if w not in {"|", "..."}]
    program = words[: words.index("manage.py") + 2]
    if any(re.fullmatch(r"[A-Z]+", word) or "|" in word for word in words):
        ran = program  # a usage line: its placeholders and choices are not values
    else:
        ran = words
    out = _bash(shlex.join([*ran, "--help"]), env)
    flat = re.sub(r"\s+", "", out)
    for i, word in enumerate(words[len(program) :], len(program)):
        if word.startswith("-"):
            option = word.split("=")[0]
            assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", out), (command, option)
            following = words[i + 1] if i + 1 < len(words) else ""
            if "|" in following:
                for choice in following.split("|"):
                    assert choice in flat, f"{command}: {option} {choice!r} not in its help"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(command: str, env: dict[str, str]):
    """Start the README's server command on a free port; return (process, port) once it
    answers."""
    port = _free_port()
    process = subprocess.Popen(
        [*shlex.split(command), "-b", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{command} exited {process.returncode}: {process.stderr.read()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, port
        except OSError:
            time.sleep(0.3)
    process.kill()
    pytest.fail(f"{command} did not listen within 60 s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _get(port: int, path: str, host: str) -> int:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers={"Host": host})
    status = connection.getresponse().status
    connection.close()
    return status


@pytest.mark.slow
def test_the_readme_commands_work_as_written(fresh_clone):
    ran = set()
    for block in readme_blocks():
        env = dict(fresh_clone)
        script: list[str] = []  # the block's lines run so far that later ones use (TOKEN=...)
        server = None
        try:
            for command in block:
                how, expected = CHECKS[command]
                if how == ENV:
                    env = _exported(command, env)
                elif how == MAKE:
                    recipe = _make_n(command.removeprefix("make "), env)
                    assert recipe.strip(), command
                    if command == "make demo":
                        assert "manage.py rlhf_demo" in recipe, recipe
                elif how == HELP:
                    _help_names_the_options(command, env)
                elif how == SERVE:
                    server = _serve(command, env)
                    # Production settings: the app itself redirects plain HTTP to HTTPS.
                    assert _get(server[1], "/accounts/login/", "rlhf.example.org") == 301
                elif how == RUN and command.startswith("curl "):
                    # The development server, as `make run` serves it, on the scratch data.
                    server = server or _serve(SERVER, env)
                    line = command.replace("127.0.0.1:8000", f"127.0.0.1:{server[1]}")
                    out = _bash("\n".join([*script, line]), env)
                    # 204 (no task left for labeler1) answers nothing; a lease is a JSON task.
                    assert out == "" or "id" in json.loads(out), out
                elif how == RUN and command.startswith("TOKEN="):
                    out = _bash(f'{command}\necho "TOKEN=$TOKEN"', env)
                    assert re.search(r"^TOKEN=[0-9a-f]{40}$", out, re.M), out
                    script.append(command)
                elif how == RUN:
                    assert expected in _bash(command, env), command
                ran.add(how)
        finally:
            if server is not None:
                _stop(server[0])
    assert ran >= {RUN, HELP, MAKE, ENV, SERVE}


SERVER = ".venv/bin/gunicorn --pythonpath platform config.wsgi:application"


def test_production_without_explicit_settings_refuses_to_start(tmp_path):
    """The local settings file is for development: an environment that says DJANGO_DEBUG=0
    reads nothing from it, so production still needs its own secret key (and hosts)."""
    (tmp_path / ".env").write_text("DJANGO_DEBUG=1\nDJANGO_SECRET_KEY=" + "k3y" * 20 + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED)}
    env.update(PLATFORM_VAR_DIR=str(tmp_path / "var"), PLATFORM_ENV_FILE=str(tmp_path / ".env"))

    def check(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT,
                              env={**env, **extra}, capture_output=True, text=True)  # fmt: skip

    # No settings file, no environment: refused, as before.
    (tmp_path / "none").mkdir()
    bare = check(PLATFORM_ENV_FILE=str(tmp_path / "none" / ".env"))
    assert bare.returncode != 0 and "DJANGO_SECRET_KEY is not set" in bare.stderr
    # DJANGO_DEBUG=0 with a development file beside it: still refused, the file is not read.
    production = check(DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="rlhf.example.org")
    assert production.returncode != 0 and "DJANGO_SECRET_KEY is not set" in production.stderr
    # The development file alone: development settings.
    development = check()
    assert development.returncode == 0, development.stderr
    assert "no issues" in development.stdout
