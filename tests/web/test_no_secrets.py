"""No secret in the repository: every tracked file is scanned for keys, tokens and passwords.

The patterns are written so that this file does not match them itself (character classes split
the prefixes). A finding that is a documented example goes in ALLOWED, with the reason.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PATTERNS = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]|github_pat)_[A-Za-z0-9_]{20,}"),
    "AWS access key": re.compile(r"\b(?:AKI[A]|ASI[A])[0-9A-Z]{16}\b"),
    "OpenAI-style key": re.compile(r"\bs[k]-(?:proj-)?[A-Za-z0-9_-]{20,}"),
    "Hugging Face token": re.compile(r"\bh[f]_[A-Za-z0-9]{30,}"),
    "Slack token": re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}"),
    # A literal key assigned in code or an env file; Django's convention marks throwaway keys
    # with "insecure", which is what the development default does.
    "hard-coded secret key": re.compile(
        r"""SECRET_KEY["']?\s*[:=]\s*["'](?![^"']*insecure)[^"']{16,}["']"""
    ),
    "secret key in an env file": re.compile(
        r"^\s*(?:export\s+)?\w*SECRET_KEY=(?![^\s]*insecure)[^\s\"'$()]{16,}\s*$"
    ),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:([^\s@/'\"]+)@"),
}

# Passwords in URLs that are placeholders in documentation or fixed test values.
PLACEHOLDER_PASSWORDS = {"pass", "password", "${POSTGRES_PASSWORD}", "s%40cret", "PASSWORD"}


def findings(text: str) -> list[tuple[int, str, str]]:
    """(line, kind, match) for every secret-looking string in `text`."""
    found = []
    for number, line in enumerate(text.split("\n"), start=1):
        for kind, pattern in PATTERNS.items():
            for match in pattern.finditer(line):
                if kind == "password in a URL" and match.group(1) in PLACEHOLDER_PASSWORDS:
                    continue
                found.append((number, kind, match.group(0)))
    return found


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_it_finds_no_secret_in_any_tracked_file():
    problems = []
    for path in tracked_files():
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        for number, kind, match in findings(data.decode("utf-8", errors="replace")):
            problems.append(f"{path.relative_to(ROOT)}:{number}: {kind}: {match[:40]}")
    assert not problems, "secrets in the repository:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN RSA " + "PRIVATE KEY-----",
        "token = 'gh" + "p_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8'",
        "AWS_ACCESS_KEY_ID=AKI" + "AIOSFODNN7EXAMPLE",
        "OPENAI_API_KEY=s" + "k-" + "abcdefghijklmnopqrstuvwxyz012345",
        'SECRET_KEY = "' + "x8#kq2!vd9zm4p0w7r1t5y3u6i" + '"',
        "DJANGO_SECRET_KEY=" + "Zq8vR2mN7xW4pL9sT1cY6hB3jF5dG0aE",
        "DATABASE_URL=postgres://rlhf:" + "hunter2" + "@db:5432/rlhf",
    ],
)
def test_it_flags_a_planted_secret(text):
    assert findings(text), text


@pytest.mark.parametrize(
    "text",
    [
        "DJANGO_SECRET_KEY=",
        'SECRET_KEY = "dev-only-insecure-key-never-use-in-production-0123456789"',
        "DATABASE_URL=postgres://rlhf:${POSTGRES_PASSWORD}@db:5432/rlhf",
        "postgres://user:pass@host:5432/name",
        "SECRET_KEY = check_secret_key(env_str('DJANGO_SECRET_KEY'))",
    ],
)
def test_it_accepts_documented_placeholders(text):
    assert not findings(text), text


@pytest.mark.parametrize("name", [".env", "platform/deploy/.env", "platform/.env"])
def test_it_keeps_env_files_out_of_git(name):
    result = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
    assert result.returncode == 0, f"{name} is not ignored by .gitignore"
