"""Stages trained by several processes: `accelerate launch` with 2 ranks on the CPU (gloo),
through `python -m training.engine`, as the worker starts a run launched with 2 processes.
Tiny sizes: each launch is a few steps on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from engine_testutils import assert_output_dir, base_config, finite, load_weights
from runs_testutils import ROOT

from training.engine import read_events
from training.engine.checkpoints import MARKER, list_checkpoints
from training.engine.launch import ACCELERATE_CONFIGS, launch_command

pytestmark = pytest.mark.slow

# What each stage trains on (beside engine_testutils.base_config); a new stage is one entry.
DROP = object()  # an option of base_config the stage refuses
STAGE_OPTIONS = {
    "pretrain": lambda tiny: {
        "dataset": tiny["snap_pretrain"],
        "model": "",
        "vocab_size": 300,
        "max_length": 32,
    },  # fmt: skip
    "sft": lambda tiny: {},
    "reward": lambda tiny: {"dataset": tiny["snap_preference"], "model": tiny["reward"]},
    "dpo": lambda tiny: {"dataset": tiny["snap_preference"], "learning_rate": 3e-5},
    "ppo": lambda tiny: {
        "dataset": "",
        "prompts": tiny["snap_prompts"],
        "reward_model": tiny["reward"],
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "num_mini_batches": 1,
        "local_rollout_forward_batch_size": 2,
        "num_ppo_epochs": 1,
        "response_length": 4,
        "missing_eos_penalty": 1.0,
    },  # fmt: skip
    "grpo": lambda tiny: {
        "dataset": "",
        "prompts": tiny["snap_prompts"],
        "reward_model": tiny["reward"],
        "per_device_train_batch_size": 2,
        "num_generations": 2,
        "max_completion_length": 8,
        "per_device_eval_batch_size": DROP,  # keys the stage does not take
        "max_length": DROP,
    },  # fmt: skip
    "kto": lambda tiny: {"dataset": tiny["snap_kto"], "learning_rate": 3e-5},
}
# Where each stage puts its training loss in metrics.json.
LOSS = {"ppo": "loss/policy_avg"}


def _launch(config: dict, tmp_path: Path, *, processes: int = 2, **kwargs) -> subprocess.Popen:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "launch.log").open("w")
    # A session of its own: a hung launch is ended with its ranks (`_stop`), not orphaned.
    return subprocess.Popen(launch_command(path, num_processes=processes, **kwargs), cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _log(tmp_path: Path) -> str:
    text = (tmp_path / "launch.log").read_text()
    return "\n".join(line for line in text.split("\n") if "Warning: find_unused" not in line)[
        -6000:
    ]


def _exit_codes(tmp_path: Path) -> dict[int, int]:
    """{rank: exit status} of the ranks that did not exit 0, as torchrun's report names them
    (the launcher itself exits 1 when any rank did not exit 0)."""
    import re

    found = re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*exitcode\s*: (-?\d+)",
                       (tmp_path / "launch.log").read_text())  # fmt: skip
    return {int(rank): int(code) for rank, code in found}


@pytest.mark.parametrize("stage", list(STAGE_OPTIONS))
def test_two_processes_train_a_stage_to_one_artifact_with_the_same_weights(tiny, tmp_path, stage):
    out = tmp_path / "out"
    config = base_config(tiny, stage, out, **STAGE_OPTIONS[stage](tiny))
    config = {key: value for key, value in config.items() if value is not DROP}
    proc = _launch(config, tmp_path)
    try:
        assert proc.wait(timeout=420) == 0, _log(tmp_path)
    finally:
        _stop(proc)

    metrics = json.loads((out / "metrics.json").read_text())
    # Both ranks trained (the launcher's count, not a default of one) and ended alike.
    assert metrics["num_processes"] == 2, metrics
    assert metrics["weights_identical_across_processes"] is True, metrics
    assert finite(metrics["train_loss"]), metrics
    events = read_events(out / "progress.jsonl")
    # Rank 0 alone reports: one start, one end, each step once.
    assert [e["event"] for e in events].count("start") == 1
    assert [e for e in events if e["event"] == "end"][0]["status"] == "succeeded"
    steps = [e["step"] for e in events if e["event"] == "progress"]
    assert steps == sorted(set(steps)) and steps, steps
    losses = [e["loss"] for e in events if e["event"] == "progress"]
    assert all(finite(loss) for loss in losses), losses
    assert_output_dir(out, stage)
    assert len(list(out.glob("*.safetensors"))) == 1


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _rank_of(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [v.split(b"=", 1)[1] for v in env if v.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def _wait_for_step(out: Path, proc: subprocess.Popen, step: int, tmp_path: Path) -> None:
    deadline = time.monotonic() + 300
    while True:
        events = read_events(out / "progress.jsonl") if (out / "progress.jsonl").exists() else []
        if any(e["event"] == "progress" and e["step"] >= step for e in events):
            return
        assert proc.poll() is None, _log(tmp_path)
        assert time.monotonic() < deadline, _log(tmp_path)
        time.sleep(0.2)


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_a_signal_to_rank_0_alone_stops_every_rank_at_the_same_step(tiny, tmp_path, stage):
    """Rank 0 reads the cancel flag and broadcasts it. Were each rank to read its own (here
    only rank 0 is told), rank 0 would stop while rank 1 waited in the next gradient
    all-reduce: the launch would hang instead of ending cancelled with a checkpoint."""
    out = tmp_path / "out"
    long = {"max_steps": 2000, "save_steps": 1000} if stage == "sft" else {"max_steps": 500}
    config = base_config(tiny, stage, out, **{**STAGE_OPTIONS[stage](tiny), **long})
    proc = _launch(config, tmp_path)
    try:
        _wait_for_step(out, proc, 2, tmp_path)
        ranks = {_rank_of(pid): pid for pid in _children(proc.pid)}
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[0], signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        _stop(proc)
    end = [e for e in read_events(out / "progress.jsonl") if e["event"] == "end"]
    assert [e["status"] for e in end] == ["cancelled"], _log(tmp_path)
    # Rank 0 says cancelled (3); the launcher stops whichever rank is still exiting then.
    assert _exit_codes(tmp_path).get(0) == 3, _log(tmp_path)
    # The stop saved a complete checkpoint at the step it stopped at: a resume continues there.
    done = [step for step, _, ok in list_checkpoints(out / "checkpoints") if ok]
    assert done and done[-1] == end[0]["step"], (done, end)
    assert (out / "checkpoints" / f"checkpoint-{done[-1]}" / MARKER).is_file()
    assert not (out / "model.safetensors").exists()


def test_a_cancel_file_stops_a_two_process_run(tiny, tmp_path):
    """The worker's way to cancel a run it launched: a file rank 0 looks for after each step."""
    out = tmp_path / "out"
    config = base_config(tiny, "sft", out, max_steps=2000, save_steps=1000)
    flag = tmp_path / "cancel"
    proc = _launch(config, tmp_path, cancel_file=flag)
    try:
        _wait_for_step(out, proc, 2, tmp_path)
        flag.touch()
        proc.wait(timeout=120)
    finally:
        _stop(proc)
    end = [e for e in read_events(out / "progress.jsonl") if e["event"] == "end"]
    assert [e["status"] for e in end] == ["cancelled"], _log(tmp_path)
    assert end[0]["step"] < 2000 and _exit_codes(tmp_path).get(0) == 3, _log(tmp_path)


# accelerate 1.15 trains plain DDP when fsdp.yaml is launched on the CPU (see fsdp_on_cpu.py):
# that shim lets it shard over gloo, so the FSDP save and resume below run for real. With 2
# GPUs the same tests launch fsdp.yaml as it ships, through `-m training.engine`.
FSDP_ON_CPU = Path(__file__).with_name("fsdp_on_cpu.py")
CUDA = torch.cuda.is_available()


def _launch_fsdp(config: dict, tmp_path: Path) -> subprocess.Popen:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = launch_command(path, num_processes=2,
                             accelerate_config=ACCELERATE_CONFIGS / "fsdp.yaml")  # fmt: skip
    if not CUDA:
        at = command.index("-m", command.index("--main_process_port"))
        command[at : at + 2] = [str(FSDP_ON_CPU)]
    log = (tmp_path / "launch.log").open("w")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def _run_fsdp(config: dict, tmp_path: Path) -> None:
    proc = _launch_fsdp(config, tmp_path)
    try:
        assert proc.wait(timeout=420) == 0, _log(tmp_path)
    finally:
        _stop(proc)


def _gathered_checkpoint(checkpoint: Path, tmp_path: Path) -> dict:
    """The model weights of an FSDP checkpoint (one shard file per rank), put together."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    whole = tmp_path / "gathered.pt"
    dcp_to_torch_save(checkpoint / "pytorch_model_fsdp_0", whole)
    return torch.load(whole, weights_only=True)["model"]


def test_fsdp_on_two_processes_saves_the_whole_trained_model_and_resumes_its_shards(tiny, tmp_path):
    """Under FSDP no rank holds the whole weights: the final save gathers them on every rank and
    rank 0 writes them. The artifact must be the full model as it stood after the last step
    (the step's sharded checkpoint, put together), not one rank's shard; and a run resumed from
    a sharded checkpoint with the same number of processes must end where the straight run
    ended."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    config = base_config(tiny, "sft", out, max_steps=4, save_steps=2, save_total_limit=None,
                         seed=7)  # fmt: skip
    _run_fsdp(config, tmp_path)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and finite(metrics["train_loss"]), metrics
    # Sharded: nothing to compare across ranks, and each checkpoint is one file set per rank.
    assert "weights_identical_across_processes" not in metrics, metrics
    shards = sorted(p.name for p in (out / "checkpoints/checkpoint-4/pytorch_model_fsdp_0").iterdir()
                    if p.suffix == ".distcp")  # fmt: skip
    assert shards == ["__0_0.distcp", "__1_0.distcp"], shards
    assert_output_dir(out, "sft")
    assert len(list(out.glob("*.safetensors"))) == 1

    base = AutoModelForCausalLM.from_pretrained(tiny["policy"]).state_dict()
    saved = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert saved.keys() == base.keys()
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in base.items()}
    assert [k for k in base if torch.equal(saved[k], base[k])] == [], "weights left untrained"
    last_step = _gathered_checkpoint(out / "checkpoints/checkpoint-4", tmp_path)
    assert all(torch.equal(saved[k], last_step[k]) for k in saved)

    # Resume from the sharded checkpoint at step 2, as if the run had stopped there.
    straight = load_weights(out)
    shutil.rmtree(out / "checkpoints/checkpoint-4")
    (out / "model.safetensors").unlink()
    _run_fsdp({**config, "resume": True}, tmp_path)
    log = _log(tmp_path)
    assert "step 3/4" in log and "step 1/4" not in log, log
    resumed = load_weights(out)
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)


# The other sharded saves: a score model, a policy with a frozen reference beside it, LoRA
# adapters (gathered with their frozen base, then filtered; or merged onto a fresh base).
FSDP_SAVES = {
    "reward": lambda tiny: {"dataset": tiny["snap_preference"], "model": tiny["reward"]},
    "dpo": lambda tiny: {"dataset": tiny["snap_preference"], "learning_rate": 3e-5},
    "kto": lambda tiny: STAGE_OPTIONS["kto"](tiny),
    "pretrain": lambda tiny: STAGE_OPTIONS["pretrain"](tiny),
    "grpo": lambda tiny: {k: v for k, v in STAGE_OPTIONS["grpo"](tiny).items() if v is not DROP},
    "sft-lora": lambda tiny: {"use_lora": True, "lora_r": 4, "merge_lora": False},
    "sft-lora-merged": lambda tiny: {
        "use_lora": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "learning_rate": 1e-2,
    },
}


@pytest.mark.parametrize("name", list(FSDP_SAVES))
def test_fsdp_on_two_processes_saves_what_the_last_step_trained(tiny, tmp_path, name):
    out = tmp_path / "out"
    stage = name.split("-")[0]
    config = base_config(tiny, stage, out, max_steps=2, save_steps=2, **FSDP_SAVES[name](tiny))
    _run_fsdp({k: v for k, v in config.items() if v is not DROP}, tmp_path)  # fmt: skip
    assert (out / ("adapter_config.json" if name == "sft-lora" else "config.json")).is_file()
    saved = load_weights(out)
    last_step = _gathered_checkpoint(out / "checkpoints/checkpoint-2", tmp_path)
    if name != "sft-lora-merged":
        # Equal tensors, so full shapes too: no rank's half made it into the file.
        assert saved and [k for k in saved if not torch.equal(saved[k], last_step[k])] == []
        adapters = {k for k in last_step if "lora_" in k}
        assert set(saved) == (adapters or set(last_step))
        return
    # Merged (in bf16, onto a fresh load of the base): base + B @ A * alpha / r, per layer.
    base = load_weights(tiny["policy"])
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in base.items()}
    scale = 8 / 4  # lora_alpha / lora_r
    prefix = "base_model.model."
    for key in base:
        a_key = prefix + key.replace(".weight", ".lora_A.weight")
        if a_key not in last_step:
            assert torch.equal(saved[key], base[key].to(saved[key].dtype)), key
            continue
        delta = last_step[a_key.replace("lora_A", "lora_B")] @ last_step[a_key] * scale
        assert delta.abs().max() > 1e-3, key  # trained, so the check below means something
        torch.testing.assert_close(saved[key].float(), base[key] + delta, atol=2e-3, rtol=0,
                                   msg=key)  # fmt: skip


def test_the_engines_ppo_under_fsdp_is_refused_naming_the_configs_that_work(tiny, tmp_path):
    """Its rollout generates with the whole policy on each rank: sharded, it would die in the
    first forward pass on a DTensor error that names neither PPO nor the config."""
    out = tmp_path / "out"
    options = {k: v for k, v in STAGE_OPTIONS["ppo"](tiny).items() if k != "max_steps"}
    proc = _launch_fsdp(base_config(tiny, "ppo", out, max_steps=2, **options), tmp_path)
    try:
        assert proc.wait(timeout=420) != 0
    finally:
        _stop(proc)
    log = _log(tmp_path)
    assert "ppo: the engine's PPO does not run sharded" in log and "ddp.yaml" in log, log
    # An invalid config (2) on each rank, unless the launcher stopped it first (the other exited).
    codes = set(_exit_codes(tmp_path).values())
    assert 2 in codes and codes <= {2, -signal.SIGTERM}, log
    assert not (out / "model.safetensors").exists()


@pytest.mark.skipif(CUDA, reason="on GPUs accelerate does shard")
def test_fsdp_yaml_launched_on_the_cpu_says_the_run_was_not_sharded(tiny, tmp_path):
    """accelerate drops fsdp.yaml's plugin on the CPU and trains DDP (fsdp_on_cpu.py says
    where): the run works, but the engineer who asked for sharding is told it did not happen."""
    out = tmp_path / "out"
    config = base_config(tiny, "sft", out, max_steps=2)
    proc = _launch(config, tmp_path, accelerate_config=ACCELERATE_CONFIGS / "fsdp.yaml")
    try:
        assert proc.wait(timeout=420) == 0, _log(tmp_path)
    finally:
        _stop(proc)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weights_identical_across_processes"] is True, metrics
    end = [e for e in read_events(out / "progress.jsonl") if e["event"] == "end"]
    assert any("FSDP" in note and "not sharded" in note for note in end[0]["notes"]), end


@pytest.mark.parametrize("path", sorted(ACCELERATE_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_each_shipped_accelerate_config_loads_with_accelerates_own_loader(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    expected = {
        "single_gpu.yaml": (DistributedType.NO, None),
        "ddp.yaml": (DistributedType.MULTI_GPU, None),
        "fsdp.yaml": (DistributedType.FSDP, None),
        "zero2.yaml": (DistributedType.DEEPSPEED, 2),
        "zero3.yaml": (DistributedType.DEEPSPEED, 3),
    }
    config = load_config_from_file(str(path))
    kind, zero_stage = expected[path.name]
    assert config.distributed_type == kind
    assert config.mixed_precision == "no"  # the stage config's `precision` decides
    if zero_stage is not None:
        assert config.deepspeed_config["zero_stage"] == zero_stage
    if kind == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_version"] == 2


def test_the_folder_ships_the_five_documented_configs():
    names = {p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")}
    assert names == {"single_gpu.yaml", "ddp.yaml", "fsdp.yaml", "zero2.yaml", "zero3.yaml"}
    readme = (ROOT / "README.md").read_text()
    assert all(f"training/accelerate/{name}" in readme for name in names)
