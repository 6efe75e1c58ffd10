"""KTO: TRL KTOTrainer on unpaired thumbs-up / thumbs-down rows (the `kto` snapshot kind:
`{prompt, completion, label}`), against a frozen reference policy."""

from __future__ import annotations

from trl import KTOConfig as TRLKTOConfig
from trl import KTOTrainer

from ..runtime import Run
from .preference import fit_against_reference


def run(run: Run) -> None:
    cfg = run.cfg
    fit_against_reference(
        run,
        kind="kto",
        config_class=TRLKTOConfig,
        trainer_class=KTOTrainer,
        options={
            "loss_type": cfg.loss_type,
            "desirable_weight": cfg.desirable_weight,
            "undesirable_weight": cfg.undesirable_weight,
        },
        reported={"margin": "eval_rewards/margins"},
    )
