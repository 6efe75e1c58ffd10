"""One module per training method. Each exposes `run(run: Run) -> None`, which trains, saves
the model into `run.output_dir` and fills `run.metrics` / `run.global_step` (see runtime.Run).
Swapping a method's implementation (as PPO left trl.experimental) means replacing one module.
`preference` is no method: it holds what DPO and KTO share (a policy trained against a frozen
reference), so that each of their modules keeps only what differs.
"""

from __future__ import annotations

from . import dpo, kto, lm, online_rl, ppo, reward

STAGE_RUNNERS = {
    "pretrain": lm.run_pretrain,
    "sft": lm.run_sft,
    "instruction": lm.run_sft,
    "reward": reward.run,
    "dpo": dpo.run,
    "ppo": ppo.run,
    "grpo": online_rl.run,
    "rloo": online_rl.run,
    "kto": kto.run,
}
