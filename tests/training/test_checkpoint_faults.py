"""Disk full or an unwritable output folder while a checkpoint is saved: the stage fails with
advice, the cut-short checkpoint is never resumed from, and a resumed run continues from the
last complete one."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from engine_testutils import base_config

from training.engine import ConfigError, read_events, run_stage
from training.engine.checkpoints import MARKER, list_checkpoints


@pytest.fixture
def full_disk_at_step_4(monkeypatch):
    """The disk fills up while checkpoint-4's optimizer state is written (after its model
    files): part of the file lands, then the write fails with ENOSPC."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f) and str(f).endswith("optimizer.pt"):
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half an optimizer")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return monkeypatch


def test_a_full_disk_mid_checkpoint_fails_with_advice_and_resume_skips_it(
    tiny, tmp_path, full_disk_at_step_4
):
    out = tmp_path / "out"
    cfg = base_config(tiny, "sft", out, max_steps=6, save_steps=2)
    failed = run_stage(cfg)
    assert failed.status == "failed"
    assert f"could not write under {out}" in failed.error
    assert "Free disk space" in failed.advice and "resume: true" in failed.advice
    end = read_events(out / "progress.jsonl")[-1]
    assert end["event"] == "end" and end["status"] == "failed" and end["advice"]
    found = [(step, ok) for step, _, ok in list_checkpoints(out / "checkpoints")]
    assert (2, True) in found and (4, False) in found  # written in part, never marked
    assert not (out / "checkpoints" / "checkpoint-4" / MARKER).exists()
    assert not (out / "README.md").exists()  # no final model from a failed run

    full_disk_at_step_4.undo()  # space freed
    resumed = run_stage({**cfg, "resume": True})
    assert resumed.status == "succeeded" and resumed.global_step == 6
    starts = [e for e in read_events(out / "progress.jsonl") if e["event"] == "start"]
    assert [s["step"] for s in starts] == [0, 2]  # from checkpoint-2, not the broken 4
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_an_output_dir_that_cannot_be_created_is_a_config_error_naming_it(tiny, tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    out = tmp_path / "blocker" / "out"
    with pytest.raises(ConfigError, match=r"sft\.output_dir: cannot create .*blocker/out"):
        run_stage(base_config(tiny, "sft", out))
