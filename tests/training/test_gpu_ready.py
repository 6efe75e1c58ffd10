"""What a GPU machine needs that can be checked without one: QLoRA refused clearly when it
cannot run, adapters reloaded with their stage's class, merges onto an unquantized base, a
distinct pad token for EOS-padded tokenizers, one GPU per worker, the physical device in the
inventory and the run label, generation on the GPU worker's queue, and logging cadence."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_testutils import base_config

from training.engine import load_config, run_stage
from training.engine.config import ConfigError
from training.engine.runtime import (
    EMBEDDING_MULTIPLE,
    Run,
    load_model,
    load_tokenizer,
    logging_steps,
    save_model,
)

ROOT = Path(__file__).resolve().parents[2]


def _no_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.skipif(not _no_bitsandbytes(), reason="bitsandbytes is installed here")
def test_load_in_4bit_without_bitsandbytes_is_a_config_error_naming_it(tiny, tmp_path):
    cfg = base_config(tiny, "sft", tmp_path / "out", use_lora=True, load_in_4bit=True)
    with pytest.raises(ConfigError, match=r"sft\.load_in_4bit: needs the bitsandbytes package"):
        run_stage(cfg)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_load_in_4bit_without_lora_is_a_config_error(tiny, tmp_path):
    cfg = base_config(tiny, "dpo", tmp_path / "out", load_in_4bit=True,
                      dataset=tiny["snap_preference"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"dpo\.load_in_4bit: .*set use_lora: true"):
        run_stage(cfg)


def test_a_reward_adapter_is_reloaded_as_a_sequence_classifier(tiny, tmp_path):
    """A reward model saved as an adapter (merge_lora: false) and named by a later stage (PPO's
    reward_model) is a scorer again, with the score head it trained."""
    from transformers import LlamaForSequenceClassification

    cfg = base_config(tiny, "reward", tmp_path / "rm", dataset=tiny["snap_preference"],
                      use_lora=True, lora_r=4, merge_lora=False, max_steps=2)  # fmt: skip
    result = run_stage(cfg)
    assert result.status == "succeeded", result.error
    assert (Path(result.output_dir) / "adapter_config.json").is_file()
    ppo = load_config(base_config(tiny, "ppo", tmp_path / "ppo", prompts=tiny["snap_prompts"],
                                  reward_model=result.output_dir))  # fmt: skip
    run = Run(ppo, None, output_dir=tmp_path, device="cpu")
    tok = load_tokenizer(ppo, ppo.model)
    reward = load_model(result.output_dir, run, tok, kind="score", trainable=False)
    assert isinstance(reward, LlamaForSequenceClassification)
    batch = tok(["Question 1: the cat?", "no no no"], return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = reward(**batch).logits
    assert scores.shape == (2, 1)
    base = load_model(tiny["reward"], run, tok, kind="score", trainable=False)
    assert not torch.equal(reward.score.weight, base.score.weight)  # the trained head came back


def test_lora_merged_onto_a_reloaded_base_equals_the_merge_in_place(tiny, tmp_path):
    """The path a QLoRA run saves by: the adapters merged onto a fresh bf16 load of the base
    rather than into 4-bit layers. Same weights as merging in place, to bf16 rounding."""
    from peft import LoraConfig, get_peft_model

    cfg = load_config(base_config(tiny, "sft", tmp_path))
    run = Run(cfg, None, output_dir=tmp_path, device="cpu")
    tok = load_tokenizer(cfg, cfg.model)
    model = load_model(tiny["policy"], run, tok)
    peft = get_peft_model(
        model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    save_model(peft, tok, tmp_path / "reloaded", merge_lora=True, reload_base=True)
    in_place = peft.merge_and_unload().state_dict()
    from engine_testutils import load_weights

    reloaded = load_weights(tmp_path / "reloaded")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert reloaded[name].dtype == torch.bfloat16
    assert torch.allclose(reloaded[name].float(), in_place[name], atol=1e-2, rtol=1e-2)
    assert not torch.allclose(in_place[name], load_weights(tiny["policy"])[name])  # LoRA moved it


@pytest.fixture
def eos_padded(tiny, tmp_path):
    """The tiny policy with a tokenizer that pads with EOS, as Qwen2.5 bases do."""
    from transformers import AutoTokenizer

    path = tmp_path / "eos-padded"
    shutil.copytree(tiny["policy"], path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(path)
    return str(path)


def test_an_eos_padded_tokenizer_gets_a_distinct_pad_token_when_one_is_named(
    tiny, tmp_path, eos_padded
):
    ppo = dict(prompts=tiny["snap_prompts"], reward_model=tiny["reward"], model=eos_padded)
    with pytest.raises(ConfigError, match=r"ppo\.pad_token: .* uses EOS as pad token"):
        load_tokenizer(load_config(base_config(tiny, "ppo", tmp_path, **ppo)), eos_padded)
    cfg = load_config(base_config(tiny, "sft", tmp_path, model=eos_padded, pad_token="<|padding|>"))
    tok = load_tokenizer(cfg, eos_padded)
    assert tok.pad_token == "<|padding|>" and tok.pad_token_id != tok.eos_token_id
    model = load_model(eos_padded, Run(cfg, None, output_dir=tmp_path, device="cpu"), tok)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows >= len(tok) and rows % EMBEDDING_MULTIPLE == 0
    assert model.config.pad_token_id == tok.pad_token_id
    with pytest.raises(ConfigError, match=r"sft\.pad_token: .* is the EOS token"):
        load_tokenizer(
            load_config(base_config(tiny, "sft", tmp_path, pad_token=tok.eos_token)), eos_padded
        )


def test_progress_is_logged_every_step_on_cpu_and_every_10_on_a_gpu_unless_set(tiny, tmp_path):
    cfg = load_config(base_config(tiny, "sft", tmp_path))
    assert cfg.logging_steps is None
    assert (logging_steps(cfg, "cpu"), logging_steps(cfg, "cuda")) == (1, 10)
    cfg = load_config(base_config(tiny, "sft", tmp_path, logging_steps=3))
    assert logging_steps(cfg, "cuda") == 3
    with pytest.raises(ConfigError, match=r"sft\.logging_steps: must be positive"):
        load_config(base_config(tiny, "sft", tmp_path, logging_steps=0))


# --- One GPU per worker ---------------------------------------------------------------------

FAKE_SMI = """#!/bin/sh
cat <<'EOF'
0, GPU-aaaa1111, NVIDIA H100 80GB HBM3, 81559, 80000, 9.0
1, GPU-bbbb2222, NVIDIA H100 80GB HBM3, 81559, 81000, 9.0
2, GPU-cccc3333, NVIDIA H100 PCIe, 81559, 81000, 9.0
EOF
"""


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
            "DJANGO_SETTINGS_MODULE": "config.settings", **env}  # fmt: skip
    full.pop("CUDA_VISIBLE_DEVICES", None) if "CUDA_VISIBLE_DEVICES" not in env else None
    return subprocess.run([sys.executable, "-c", code], env=full, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_the_worker_command_gives_its_process_the_gpus_before_torch_is_imported():
    code = (
        "import os, sys, django; django.setup()\n"
        "from core.management.commands.worker import visible_gpus_set\n"
        "visible_gpus_set('1, 2')\n"
        "assert 'torch' not in sys.modules\n"
        "print(os.environ['CUDA_VISIBLE_DEVICES'])\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1,2"


@pytest.mark.parametrize("spec", ["a", "0;1", "0,0", "-1"])
def test_the_worker_command_refuses_a_malformed_gpu_list(spec):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--gpus"):
        call_command("worker", "--gpus", spec)


def test_the_inventory_and_the_run_label_name_the_physical_gpu(tmp_path):
    """Under CUDA_VISIBLE_DEVICES=2 the process's cuda:0 is the machine's GPU 2: the heartbeat
    lists that one alone, and a run's label names it (read with nvidia-smi, never torch)."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(FAKE_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    code = (
        "import sys\n"
        "from training.engine.resources import device_inventory, device_label\n"
        "print([g['index'] for g in device_inventory()['gpus']])\n"
        "print(device_label())\n"
        "assert 'torch' not in sys.modules\n"
    )
    path = f"{smi.parent}:{os.environ['PATH']}"
    done = _python(code, PATH=path, CUDA_VISIBLE_DEVICES="2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["[2]", "GPU 2: NVIDIA H100 PCIe, 80 GiB"]
    done = _python(code, PATH=path)
    assert done.stdout.splitlines()[0] == "[0, 1, 2]"


@pytest.mark.django_db
def test_generation_jobs_go_to_the_training_queue_while_a_gpu_worker_takes_it():
    from django.utils import timezone

    from training.models import WorkerHeartbeat
    from training.selectors import task_queue

    assert task_queue("training.tasks.generation_run") == "default"
    now = timezone.now()
    cpu_worker = WorkerHeartbeat.objects.create(
        hostname="cpu@box", queues=["training"], devices=[], cpu={"cores": 2},
        started_at=now, seen_at=now,
    )  # fmt: skip
    assert task_queue("training.tasks.generation_run") == "default"
    gpu = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total": 80 * 2**30}
    WorkerHeartbeat.objects.create(hostname="gpu0@box", queues=["training"], devices=[gpu],
                                   cpu={"cores": 16}, started_at=now, seen_at=now)  # fmt: skip
    assert task_queue("training.tasks.generation_run") == "training"
    assert task_queue("training.tasks.run_train") == "training"
    WorkerHeartbeat.objects.exclude(pk=cpu_worker.pk).update(stopped_at=now)
    assert task_queue("training.tasks.generation_run") == "default"
