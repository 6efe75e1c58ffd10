"""The exact bytes of preference snapshots, pinned.

CI runs this on SQLite and on PostgreSQL, so both databases give these bytes and this hash for
the same judgments. The expected lines were written by the builder before the fast one (one row
dict and one `json` encoding per pair), and checked by hand against the consensus rules: the
fast builder relabels ids and formats lines from templates, and must not change a byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from snapshot_testutils import judge, prompt_with

from annotation import services
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import ReviewStatus, TaskKind

TRICKY = 'say "hi" \\ back\tslash\u2028 é 😀 \x01 {{ 7*7 }} %s'


@pytest.fixture
def project(make_user):
    owner = make_user("owner")
    ann, bob, cat = make_user("ann"), make_user("bob"), make_user("cat")
    project = services.project_create(name="Bytes", slug="bytes", owner=owner, overlap=3)
    # Three labelers rank three colours: every pair is decided 2:1.
    _, (a, b, c), task = prompt_with(project, "Name a colour", ["red", "blue", "green"])
    judge(task, ann, {"ranking": [[a.pk], [b.pk], [c.pk]]})
    judge(task, bob, {"ranking": [[a.pk], [c.pk], [b.pk]]})
    judge(task, cat, {"ranking": [[b.pk], [c.pk], [a.pk]]})
    # A tie inside a ranking (a = b) and a bare id as a group; the opposite ranking cancels
    # both pairs with plum.
    _, (a, b, c), task = prompt_with(project, "Pick a fruit", ["apple", "pear", "plum"])
    judge(task, ann, {"ranking": [[a.pk, b.pk], c.pk]})
    judge(task, bob, {"ranking": [[c.pk], [b.pk], [a.pk]]})
    # Comparisons with strengths, and a tie that names the shown pair.
    _, (x, y), task = prompt_with(project, TRICKY, [TRICKY + "!", "no\n"], kind=TaskKind.COMPARE)
    judge(task, ann, {"winner": x.pk, "strength": 3})
    judge(task, bob, {"winner": y.pk, "strength": 1})
    judge(task, cat, {"winner": None})
    # Rejected, superseded and all-unacceptable work is never exported.
    _, (a, b), task = prompt_with(project, "Rejected and corrected", ["a1", "b1"])
    rejected = judge(task, ann, {"ranking": [[a.pk], [b.pk]]})
    services.annotation_review(annotation=rejected, reviewer=owner, decision=ReviewStatus.REJECTED)
    first = judge(task, bob, {"ranking": [[a.pk], [b.pk]]})
    services.annotation_correct(original=first, labeler=bob, payload={"ranking": [[b.pk], [a.pk]]})
    judge(task, cat, {"ranking": [[a.pk], [b.pk]], "all_unacceptable": True})
    # Responses listed in reverse id order, K = 4.
    for i in range(4):
        _, rs, task = prompt_with(project, f"Prompt {i}", [f"answer {i}.{j}" for j in range(4)])
        judge(task, ann, {"ranking": [[r.pk] for r in reversed(rs)]})
    return project


def build(project, **filters):
    snapshot = snapshot_request(project=project, kind="preference", filters=filters, enqueue=False)
    snapshot = snapshot_build(snapshot=snapshot)
    return snapshot, Path(snapshot.path)


AGGREGATE = {
    "train": "".join(
        (
            '{"agreement":0.666667,"chosen":"red","margin":0.333333,"prompt":"Name a colour","rejected":"blue"}\n',
            '{"agreement":0.666667,"chosen":"red","margin":0.333333,"prompt":"Name a colour","rejected":"green"}\n',
            '{"agreement":0.666667,"chosen":"blue","margin":0.333333,"prompt":"Name a colour","rejected":"green"}\n',
            '{"agreement":0.5,"chosen":"pear","margin":0.5,"prompt":"Pick a fruit","rejected":"apple"}\n',
            '{"agreement":0.333333,"chosen":"say \\"hi\\" \\\\ back\\tslash\u2028 é 😀 \\u0001 {{ 7*7 }} %s!",'
            '"margin":0.666667,"prompt":"say \\"hi\\" \\\\ back\\tslash\u2028 é 😀 \\u0001 {{ 7*7 }} %s",'
            '"rejected":"no\\n"}\n',
            '{"agreement":1.0,"chosen":"answer 0.1","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.0"}\n',
            '{"agreement":1.0,"chosen":"answer 0.2","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.0"}\n',
            '{"agreement":1.0,"chosen":"answer 0.3","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.0"}\n',
            '{"agreement":1.0,"chosen":"answer 0.2","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.1"}\n',
            '{"agreement":1.0,"chosen":"answer 0.3","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.1"}\n',
            '{"agreement":1.0,"chosen":"answer 0.3","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.2"}\n',
            '{"agreement":1.0,"chosen":"answer 2.1","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.0"}\n',
            '{"agreement":1.0,"chosen":"answer 2.2","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.0"}\n',
            '{"agreement":1.0,"chosen":"answer 2.3","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.0"}\n',
            '{"agreement":1.0,"chosen":"answer 2.2","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.1"}\n',
            '{"agreement":1.0,"chosen":"answer 2.3","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.1"}\n',
            '{"agreement":1.0,"chosen":"answer 2.3","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.2"}\n',
            '{"agreement":1.0,"chosen":"answer 3.1","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.0"}\n',
            '{"agreement":1.0,"chosen":"answer 3.2","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.0"}\n',
            '{"agreement":1.0,"chosen":"answer 3.3","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.0"}\n',
            '{"agreement":1.0,"chosen":"answer 3.2","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.1"}\n',
            '{"agreement":1.0,"chosen":"answer 3.3","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.1"}\n',
            '{"agreement":1.0,"chosen":"answer 3.3","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.2"}\n',
        )
    ),
    "test": "".join(
        (
            '{"agreement":1.0,"chosen":"b1","margin":1.0,"prompt":"Rejected and corrected","rejected":"a1"}\n',
            '{"agreement":1.0,"chosen":"answer 1.1","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.0"}\n',
            '{"agreement":1.0,"chosen":"answer 1.2","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.0"}\n',
            '{"agreement":1.0,"chosen":"answer 1.3","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.0"}\n',
            '{"agreement":1.0,"chosen":"answer 1.2","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.1"}\n',
            '{"agreement":1.0,"chosen":"answer 1.3","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.1"}\n',
            '{"agreement":1.0,"chosen":"answer 1.3","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.2"}\n',
        )
    ),
    "sha256": "85dac60488ea8f32b49752b02264a804199e2bd25bfadb693b9b1447fa6959fa",
    "ties_dropped": 2,
    "below_min_agreement": 0,
}

PER_ANNOTATION = {
    "train": "".join(
        (
            '{"agreement":1.0,"chosen":"red","margin":1.0,"prompt":"Name a colour","rejected":"blue"}\n',
            '{"agreement":1.0,"chosen":"red","margin":1.0,"prompt":"Name a colour","rejected":"green"}\n',
            '{"agreement":1.0,"chosen":"blue","margin":1.0,"prompt":"Name a colour","rejected":"green"}\n',
            '{"agreement":1.0,"chosen":"red","margin":1.0,"prompt":"Name a colour","rejected":"green"}\n',
            '{"agreement":1.0,"chosen":"red","margin":1.0,"prompt":"Name a colour","rejected":"blue"}\n',
            '{"agreement":1.0,"chosen":"green","margin":1.0,"prompt":"Name a colour","rejected":"blue"}\n',
            '{"agreement":1.0,"chosen":"blue","margin":1.0,"prompt":"Name a colour","rejected":"green"}\n',
            '{"agreement":1.0,"chosen":"blue","margin":1.0,"prompt":"Name a colour","rejected":"red"}\n',
            '{"agreement":1.0,"chosen":"green","margin":1.0,"prompt":"Name a colour","rejected":"red"}\n',
            '{"agreement":1.0,"chosen":"apple","margin":1.0,"prompt":"Pick a fruit","rejected":"plum"}\n',
            '{"agreement":1.0,"chosen":"pear","margin":1.0,"prompt":"Pick a fruit","rejected":"plum"}\n',
            '{"agreement":1.0,"chosen":"plum","margin":1.0,"prompt":"Pick a fruit","rejected":"pear"}\n',
            '{"agreement":1.0,"chosen":"plum","margin":1.0,"prompt":"Pick a fruit","rejected":"apple"}\n',
            '{"agreement":1.0,"chosen":"pear","margin":1.0,"prompt":"Pick a fruit","rejected":"apple"}\n',
            '{"agreement":1.0,"chosen":"say \\"hi\\" \\\\ back\\tslash\u2028 é 😀 \\u0001 {{ 7*7 }} %s!","margin":3.0,"prompt":"say \\"hi\\" \\\\ back\\tslash\u2028 é 😀 \\u0001 {{ 7*7 }} %s","rejected":"no\\n"}\n',
            '{"agreement":1.0,"chosen":"no\\n","margin":1.0,"prompt":"say \\"hi\\" \\\\ back\\tslash\u2028 é 😀 \\u0001 {{ 7*7 }} %s","rejected":"say \\"hi\\" \\\\ back\\tslash\u2028 é 😀 \\u0001 {{ 7*7 }} %s!"}\n',
            '{"agreement":1.0,"chosen":"b1","margin":1.0,"prompt":"Rejected and corrected","rejected":"a1"}\n',
            '{"agreement":1.0,"chosen":"answer 0.3","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.2"}\n',
            '{"agreement":1.0,"chosen":"answer 0.3","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.1"}\n',
            '{"agreement":1.0,"chosen":"answer 0.3","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.0"}\n',
            '{"agreement":1.0,"chosen":"answer 0.2","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.1"}\n',
            '{"agreement":1.0,"chosen":"answer 0.2","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.0"}\n',
            '{"agreement":1.0,"chosen":"answer 0.1","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.0"}\n',
            '{"agreement":1.0,"chosen":"answer 1.3","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.2"}\n',
            '{"agreement":1.0,"chosen":"answer 1.3","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.1"}\n',
            '{"agreement":1.0,"chosen":"answer 1.3","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.0"}\n',
            '{"agreement":1.0,"chosen":"answer 1.2","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.1"}\n',
            '{"agreement":1.0,"chosen":"answer 1.2","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.0"}\n',
            '{"agreement":1.0,"chosen":"answer 1.1","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.0"}\n',
            '{"agreement":1.0,"chosen":"answer 2.3","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.2"}\n',
            '{"agreement":1.0,"chosen":"answer 2.3","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.1"}\n',
            '{"agreement":1.0,"chosen":"answer 2.3","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.0"}\n',
            '{"agreement":1.0,"chosen":"answer 2.2","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.1"}\n',
            '{"agreement":1.0,"chosen":"answer 2.2","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.0"}\n',
            '{"agreement":1.0,"chosen":"answer 2.1","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.0"}\n',
            '{"agreement":1.0,"chosen":"answer 3.3","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.2"}\n',
            '{"agreement":1.0,"chosen":"answer 3.3","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.1"}\n',
            '{"agreement":1.0,"chosen":"answer 3.3","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.0"}\n',
            '{"agreement":1.0,"chosen":"answer 3.2","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.1"}\n',
            '{"agreement":1.0,"chosen":"answer 3.2","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.0"}\n',
            '{"agreement":1.0,"chosen":"answer 3.1","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.0"}\n',
        )
    ),
    "test": None,
    "sha256": "538e6b6af81b523504b134048220da3fefebe447638c8e402f489f97a6b21f77",
    "ties_dropped": 2,
    "below_min_agreement": 0,
}

MIN_AGREEMENT = {
    "train": "".join(
        (
            '{"agreement":0.666667,"chosen":"red","margin":0.333333,"prompt":"Name a colour","rejected":"blue"}\n',
            '{"agreement":0.666667,"chosen":"red","margin":0.333333,"prompt":"Name a colour","rejected":"green"}\n',
            '{"agreement":0.666667,"chosen":"blue","margin":0.333333,"prompt":"Name a colour","rejected":"green"}\n',
            '{"agreement":1.0,"chosen":"b1","margin":1.0,"prompt":"Rejected and corrected","rejected":"a1"}\n',
            '{"agreement":1.0,"chosen":"answer 0.1","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.0"}\n',
            '{"agreement":1.0,"chosen":"answer 0.2","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.0"}\n',
            '{"agreement":1.0,"chosen":"answer 0.3","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.0"}\n',
            '{"agreement":1.0,"chosen":"answer 0.2","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.1"}\n',
            '{"agreement":1.0,"chosen":"answer 0.3","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.1"}\n',
            '{"agreement":1.0,"chosen":"answer 0.3","margin":1.0,"prompt":"Prompt 0","rejected":"answer 0.2"}\n',
            '{"agreement":1.0,"chosen":"answer 1.1","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.0"}\n',
            '{"agreement":1.0,"chosen":"answer 1.2","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.0"}\n',
            '{"agreement":1.0,"chosen":"answer 1.3","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.0"}\n',
            '{"agreement":1.0,"chosen":"answer 1.2","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.1"}\n',
            '{"agreement":1.0,"chosen":"answer 1.3","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.1"}\n',
            '{"agreement":1.0,"chosen":"answer 1.3","margin":1.0,"prompt":"Prompt 1","rejected":"answer 1.2"}\n',
            '{"agreement":1.0,"chosen":"answer 2.1","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.0"}\n',
            '{"agreement":1.0,"chosen":"answer 2.2","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.0"}\n',
            '{"agreement":1.0,"chosen":"answer 2.3","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.0"}\n',
            '{"agreement":1.0,"chosen":"answer 2.2","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.1"}\n',
            '{"agreement":1.0,"chosen":"answer 2.3","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.1"}\n',
            '{"agreement":1.0,"chosen":"answer 2.3","margin":1.0,"prompt":"Prompt 2","rejected":"answer 2.2"}\n',
            '{"agreement":1.0,"chosen":"answer 3.1","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.0"}\n',
            '{"agreement":1.0,"chosen":"answer 3.2","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.0"}\n',
            '{"agreement":1.0,"chosen":"answer 3.3","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.0"}\n',
            '{"agreement":1.0,"chosen":"answer 3.2","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.1"}\n',
            '{"agreement":1.0,"chosen":"answer 3.3","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.1"}\n',
            '{"agreement":1.0,"chosen":"answer 3.3","margin":1.0,"prompt":"Prompt 3","rejected":"answer 3.2"}\n',
        )
    ),
    "test": None,
    "sha256": "293183f1e844a5edd55e04df4239e57a2a7238dceff470fb0eadeffb6441f1a2",
    "ties_dropped": 2,
    "below_min_agreement": 2,
}


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"test_size": 0.3}, AGGREGATE),
        ({"test_size": 0, "pairs": "per_annotation"}, PER_ANNOTATION),
        ({"test_size": 0, "min_agreement": 0.6}, MIN_AGREEMENT),
    ],
    ids=["aggregate", "per_annotation", "min_agreement"],
)
def test_it_writes_the_pinned_bytes_and_hash(project, filters, expected):
    snapshot, path = build(project, **filters)

    assert (path / "train.jsonl").read_text(encoding="utf-8") == expected["train"]
    test_file = path / "test.jsonl"
    assert (test_file.read_text(encoding="utf-8") if test_file.exists() else None) == expected[
        "test"
    ]
    assert snapshot.manifest["ties_dropped"] == expected["ties_dropped"]
    assert snapshot.manifest["below_min_agreement"] == expected["below_min_agreement"]
    assert snapshot.manifest["judgments"] == 14
    assert snapshot.sha256 == expected["sha256"]


def test_parquet_has_the_same_rows_and_hash(project):
    import pyarrow.parquet as pq

    snapshot = snapshot_build(
        snapshot=snapshot_request(
            project=project,
            kind="preference",
            format="parquet",
            filters={"test_size": 0.3},
            enqueue=False,
        )
    )

    assert snapshot.sha256 == AGGREGATE["sha256"]
    rows = pq.read_table(Path(snapshot.path) / "train.parquet").to_pylist()
    # Not splitlines(): a text holds U+2028, which JSON leaves as is and splitlines splits on.
    assert rows == [json.loads(line) for line in AGGREGATE["train"].split("\n")[:-1]]


def test_the_shape_cache_changes_no_byte(project, monkeypatch):
    from annotation.exports import rows

    monkeypatch.setattr(rows, "SHAPE_CACHE_VOTES", 0)  # forget every shape but the last

    snapshot, path = build(project, test_size=0.3)

    assert (path / "train.jsonl").read_text(encoding="utf-8") == AGGREGATE["train"]
    assert snapshot.sha256 == AGGREGATE["sha256"]


def test_postgresql_quotes_every_character_as_the_builder_does(db):
    """On PostgreSQL the texts come quoted by `to_json(text)`; it must escape exactly as
    `json.dumps(..., ensure_ascii=False)`: every code point a text can hold (PostgreSQL text has
    no NUL and no surrogates), controls, quotes, backslash, DEL, U+2028 and astral ones."""
    from django.db import connection

    from annotation.exports.rows import _quoted

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL quotes texts only there")
    every = "".join(chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_json(%s::text)::text", [every])
        (quoted,) = cursor.fetchone()
    assert quoted.encode() == _quoted(every)
    # Escaping is character by character, so the whole string agreeing means each one does.
    assert (
        _quoted('\x01\x1f\x7f\u2028"\\\b\f\n\r\t')
        == b'"\\u0001\\u001f\x7f\xe2\x80\xa8\\"\\\\\\b\\f\\n\\r\\t"'
    )


def test_the_shortcut_shape_key_stands_for_the_same_votes():
    """A lone ranking without ties is keyed by its ids relabelled, not by its votes: every
    ranking that gets the same key must give the same relabelled votes and ids."""
    import random

    from annotation.exports.rows import _relabelled_votes, _shape_key

    rng = random.Random(0)
    votes_by_key: dict = {}
    payloads = [
        {"ranking": []},
        {"ranking": [[7]]},
        {"ranking": [5, [9], 2]},  # bare ids are groups of one
        {"ranking": [[5], [5]]},  # the same id twice: not a permutation
        {"ranking": [[5, 6], [7]]},  # a tie
        {"ranking": [[True], [3]]},
        {"ranking": [[3], [4]], "all_unacceptable": True},
    ]
    for _ in range(500):
        ids = rng.sample(range(1, 60), rng.randint(2, 6))
        payloads.append({"ranking": [[pk] for pk in ids], "all_unacceptable": False})
    for payload in payloads:
        group = [(1, 1, "rank", json.dumps(payload), None, "[]")]
        key, ids = _shape_key(group)
        votes, generic_ids = _relabelled_votes(group)
        if key != votes:  # the shortcut
            assert ids == generic_ids
            assert votes_by_key.setdefault(key, votes) == votes
    assert len(votes_by_key) > 100
