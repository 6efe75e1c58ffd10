"""The engine's own PPO (Schulman et al. 2017) for RLHF (Ziegler et al. 2019; Ouyang et al. 2022),
on `accelerate.Accelerator`, in four short modules read top to bottom:

- `rollout`: sample responses (left-padded prompts, stop at EOS), score them with the frozen
  reward model, and record the log-probs of the policy and the reference and the critic's values.
- `advantages`: per-token KL penalty, GAE, whitening, and the fixed or adaptive KL controller.
- `losses`: the clipped policy and value losses and the PPO-ptx language-modeling loss.
- `loop`: minibatches and PPO epochs per update, metrics, periodic atomic checkpoints, and an
  exact resume (weights, optimizer, scheduler, KL controller, every RNG, the prompt sampler's
  position, counters and the metrics so far).

Which models, and why. Four roles, as in InstructGPT: the policy (trained), a value model
(trained), the frozen reference policy and the frozen reward model. The value model is a
separate critic initialised from `value_model` (default: the reward model), a scorer whose
one-label head reads every position. We keep it separate rather than a value head on the
policy because a shared trunk couples the two losses (`vf_coef` then trades the policy's
language against its value fit) and the reward model's trunk already knows what a good answer
is. With `use_lora` neither trains a full-size copy: the policy is the base + a LoRA adapter and
its reference is the same base with the adapter disabled; the critic is the reward model + its
own LoRA adapter and head, and the frozen reward model is that same critic with its adapter
disabled. Two base models sit in memory, not four, and only the adapters train.
"""
