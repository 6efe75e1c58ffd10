"""The memory estimate against figures worked out by hand for three real shapes, hub names read
from their config.json alone, and the GPU inventory read without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.engine.resources import (
    GPU_RESERVE,
    estimate_memory,
    parse_nvidia_smi,
)

GiB = 2**30
ROOT = Path(__file__).resolve().parents[2]
H100 = {"name": "NVIDIA H100 80GB HBM3", "kind": "cuda", "memory_total": 81559 * 2**20,
        # busy: another process holds most of it; the estimate must not care
        "memory_free": 2 * GiB}  # fmt: skip

QWEN_05B = {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
            "vocab_size": 151936, "tie_word_embeddings": True}  # fmt: skip
LLAMA3_8B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
             "vocab_size": 128256, "tie_word_embeddings": False}  # fmt: skip


def _model(tmp_path, config: dict, name: str) -> str:
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def test_full_sft_of_a_0_5b_model_in_bf16(tmp_path):
    model = _model(tmp_path, QWEN_05B, "qwen")
    est = estimate_memory({"stage": "sft", "model": model, "per_device_train_batch_size": 8,
                           "max_length": 1024, "precision": "bf16"}, H100)  # fmt: skip
    # Parameters. k/v width: 896 * 2 / 14 = 128.
    attn = 896 * 896 * 2 + 896 * 128 * 2  # q, o; k, v = 1,835,008
    mlp = 3 * 896 * 4864  # 13,074,432
    params = 24 * (attn + mlp) + 151936 * 896 + 24 * 2 * 896  # tied embeddings, norms
    assert params == 494_004_224  # Qwen2.5-0.5B's published 0.49B
    # Trained in full: float32 weights, float32 gradients, two float32 AdamW moments.
    assert (est.weights, est.gradients, est.optimizer_states) == (
        params * 4,
        params * 4,
        params * 8,
    )  # 1.84 + 1.84 + 3.68 GiB
    # sdpa: 34 * hidden bytes per token and layer in bf16, 8 x 1024 tokens, 24 layers.
    assert est.activations == 8 * 1024 * 34 * 896 * 24  # 5.58 GiB
    # fp32 logits and their gradient over the 151,936-token vocabulary.
    assert est.logits == 8 * 1024 * 151936 * 4 * 2  # 9.27 GiB
    assert est.rollout == 0
    assert est.total == int((params * 16 + 8 * 1024 * 34 * 896 * 24 + 8 * 1024 * 151936 * 8) * 1.1)
    # (7.36 + 5.58 + 9.27) x 1.1
    assert round(est.total / GiB, 2) == 24.43
    # Against the card's total less the reserve, not the 2 GiB it has free this moment.
    assert est.available == 81559 * 2**20 - GPU_RESERVE and est.fits is True


def test_qlora_dpo_of_an_8b_model_with_gradient_checkpointing(tmp_path):
    model = _model(tmp_path, LLAMA3_8B, "llama8b")
    est = estimate_memory({"stage": "dpo", "model": model, "use_lora": True, "lora_r": 16,
                           "load_in_4bit": True, "per_device_train_batch_size": 2,
                           "max_length": 2048, "gradient_checkpointing": True,
                           "precision": "bf16"}, H100)  # fmt: skip
    kv = 4096 * 8 // 32  # 1024
    linear = 32 * (4096 * 4096 * 2 + 4096 * kv * 2 + 3 * 4096 * 14336)  # 6,979,321,856
    embeddings = 128256 * 4096 * 2  # untied head: 1,050,673,152
    norms = 32 * 2 * 4096
    params = linear + embeddings + norms
    assert params == 8_030_257_152  # Llama-3-8B's 8.03B
    lora = 32 * 16 * ((4096 + 4096) * 2 + (4096 + kv) * 2 + (4096 + 14336) * 3)  # 41,943,040
    nf4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # bytes a 4-bit weight takes with its scales
    # 4-bit linears, bf16 embeddings/head/norms, float32 adapters; DPO's reference is the base
    # with adapters off: no second copy.
    assert est.weights == int(linear * nf4 + (embeddings + norms) * 2 + lora * 4)  # 5.47 GiB
    assert est.trainable_parameters == lora
    assert (est.gradients, est.optimizer_states) == (lora * 4, lora * 8)
    tokens = 2 * 2 * 2048  # chosen and rejected together
    # Checkpointing: each layer's bf16 input, plus one layer's activations recomputed.
    assert est.activations == tokens * 4096 * 2 * 32 + tokens * 34 * 4096  # 3.06 GiB
    assert est.logits == tokens * 128256 * 8  # 7.83 GiB: DPO has a language-model head
    # (5.47 + 0.47 + 3.06 + 7.83) x 1.1
    assert round(est.total / GiB, 2) == 18.51 and est.fits is True


def test_a_reward_model_has_no_vocabulary_logits_and_eager_attention_keeps_its_scores(tmp_path):
    model = _model(tmp_path, LLAMA3_8B, "rm8b")
    cfg = {"stage": "reward", "model": model, "use_lora": True, "lora_r": 16,
           "per_device_train_batch_size": 4, "max_length": 1024, "precision": "bf16"}  # fmt: skip
    est = estimate_memory(cfg, H100)
    params = 8_030_257_152
    lora = 41_943_040
    assert est.logits == 0  # one score per sequence: no 8 x 1024 x 128256 fp32 logits (7.8 GiB)
    assert est.weights == params * 2 + lora * 4  # a bf16 base, float32 adapters: 15.11 GiB
    tokens = 4 * 2 * 1024
    assert est.activations == tokens * 34 * 4096 * 32  # 34.0 GiB
    # (15.11 + 0.47 + 34.0) x 1.1
    assert round(est.total / GiB, 2) == 54.54 and est.fits is True
    eager = estimate_memory({**cfg, "attn_implementation": "eager"}, H100)
    # The softmax scores: 5 x heads x length bytes per token and layer in bf16.
    assert eager.activations == tokens * (34 * 4096 + 5 * 32 * 1024) * 32  # 74.0 GiB
    assert eager.fits is False


def test_ppo_counts_its_rollout(tmp_path):
    model = _model(tmp_path, QWEN_05B, "qwen")
    est = estimate_memory({"stage": "ppo", "model": model, "reward_model": model,
                           "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                           "response_length": 128, "max_prompt_length": 256,
                           "max_length": 1024, "precision": "bf16"}, H100)  # fmt: skip
    # Rollout batch min(64, 4 x 2) = 8, length 256 + 128: bf16 KV cache, then the policy's and
    # reference's float32 logits of the responses.
    assert est.rollout == 2 * 24 * 128 * 8 * 384 * 2 + 2 * 8 * 128 * 151936 * 4


def test_a_hub_name_is_estimated_from_its_cached_config_alone(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / "config.json").write_text(json.dumps(QWEN_05B))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    est = estimate_memory({"stage": "sft", "model": "Qwen/Qwen2.5-0.5B", "precision": "bf16"}, H100)
    assert est.known and est.parameters == 494_004_224


def test_a_hub_name_not_cached_while_offline_says_so(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    est = estimate_memory({"stage": "sft", "model": "meta-llama/Llama-3.1-8B"}, H100)
    assert est.known is False and est.fits is None
    assert "meta-llama/Llama-3.1-8B" in est.advice[0] and "HF_HUB_OFFLINE" in est.advice[0]


SMI = """\
0, GPU-aaaa1111, NVIDIA H100 80GB HBM3, 81559, 80000, 9.0
1, GPU-bbbb2222, NVIDIA H100 80GB HBM3, 81559, 1200, 9.0
2, GPU-cccc3333, Tesla V100-SXM2-16GB, 16384, 16000, 7.0
"""


@pytest.mark.parametrize(
    "visible, indices",
    [(None, [0, 1, 2]), ("2", [2]), ("1,0", [1, 0]), ("GPU-cccc", [2]), ("", []), ("0,7,1", [0])],
)
def test_the_inventory_lists_the_gpus_this_process_may_use_by_physical_index(visible, indices):
    gpus = parse_nvidia_smi(SMI, visible)
    assert [g["index"] for g in gpus] == indices
    if 2 in indices:
        v100 = next(g for g in gpus if g["index"] == 2)
        assert v100["bf16"] is False and v100["memory_total"] == 16 * GiB


def test_the_heartbeat_inventory_and_the_worker_tasks_never_import_torch():
    """A worker's parent process reads the inventory for its heartbeat: a CUDA context there
    would break every child it forks. Neither it nor the tasks module may import torch."""
    code = (
        "import sys, django; django.setup()\n"
        "import training.tasks\n"
        "from training.engine.resources import device_inventory\n"
        "inv = device_inventory()\n"
        "assert inv['cpu']['cores'] >= 1 and inv['torch']\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
           "DJANGO_SETTINGS_MODULE": "config.settings"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
