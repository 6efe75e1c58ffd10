"""DPO: TRL DPOTrainer on the same preference snapshots, no reward model needed."""

from __future__ import annotations

from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer

from ..runtime import Run
from .preference import fit_against_reference


def _losses(cfg) -> dict:
    """TRL's loss list: the DPO variant, plus an SFT term on the chosen side when weighted."""
    if not cfg.sft_weight:
        return {"loss_type": [cfg.loss_type]}
    return {"loss_type": [cfg.loss_type, "sft"], "loss_weights": [1.0, cfg.sft_weight]}


def run(run: Run) -> None:
    fit_against_reference(
        run,
        kind="dpo",
        config_class=TRLDPOConfig,
        trainer_class=DPOTrainer,
        options=_losses(run.cfg),
        reported={"accuracy": "eval_rewards/accuracies", "margin": "eval_rewards/margins"},
    )
