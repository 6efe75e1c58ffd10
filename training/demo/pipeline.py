"""The RLHF loop end to end: every stage in order, each timed, then the report.

Every stage (`stages`) leaves what the platform leaves when people do the work: projects,
prompts, labeler accounts, tasks, leases and annotations; snapshots on disk with their rows;
training runs, snapshot builds, rounds and generation jobs executed by a Celery worker
(`worker`); model artifacts with lineage (base → SFT → RM → PPO, SFT → DPO); an arena battle
set and its leaderboard. Stage durations are recorded for the report.
"""

from __future__ import annotations

import time

from . import report, stages
from .state import Demo


def run(demo: Demo) -> dict:
    """Every stage in order, each timed, then the report. A worker the demo started is stopped
    whatever happens, as on Ctrl+C."""
    try:
        with demo.stage("world"):
            stages.world_build(demo)
        with demo.stage("pretrain"):
            stages.pretrain(demo)
        with demo.stage("demonstrations"):
            stages.demonstrations(demo)
        with demo.stage("sft"):
            stages.sft(demo)
        policy = demo.artifacts["sft"]
        for r in range(1, demo.rounds + 1):
            with demo.stage(f"candidates_r{r}"):
                stages.candidates(demo, r, policy)
            with demo.stage(f"labeling_r{r}"):
                stages.labeling(demo, r)
            with demo.stage(f"preference_snapshot_r{r}"):
                stages.preferences(demo, r)
            with demo.stage(f"reward_r{r}"):
                stages.reward_model(demo, r)
            with demo.stage(f"ppo_r{r}"):
                stages.ppo(demo, r, policy)
            with demo.stage(f"dpo_r{r}"):
                stages.dpo(demo, r)
            policy = demo.artifacts[f"ppo_r{r}"]
        with demo.stage("selection"):
            selection = stages.selection_compare(demo)
        with demo.stage("arena"):
            arena = stages.arena_battles(demo)
        with demo.stage("evaluate"):
            demo.results = {**stages.evaluation(demo), "selection": selection, "arena": arena}
    finally:
        demo.worker.stop()
    t0 = time.monotonic()
    data = report.build(demo)
    data["stages"].append({"name": "report", "seconds": round(time.monotonic() - t0, 2)})
    data["total_seconds"] = round(time.monotonic() - demo.started, 2)
    data["checks"] = report.checks(data)
    json_path, html_path = report.write(data, demo.out_dir)
    demo.log(report.summary(data))
    demo.log(f"\n  report: {json_path}\n          {html_path}")
    return data
