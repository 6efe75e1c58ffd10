"""Several processes: the `accelerate launch` command line of a stage run, used by the worker
(a run launched with N processes) and the tests. The configs it can use are in
training/accelerate/ (see the README's "Several GPUs or processes").

`accelerate launch --cpu --num_processes N` starts one process, not N: accelerate's simple
launcher needs mpirun for more. A config of `distributed_type: MULTI_GPU` (ddp.yaml) goes
through torchrun instead; on a machine without CUDA the engine trains on the CPU, so those N
processes train data-parallel over gloo.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "accelerate"
DEFAULT_CONFIG = "ddp.yaml"


def free_port() -> int:
    """A TCP port nothing listens on now, for rank 0's rendezvous: the default (29500) is
    shared by every launch on the machine, so two runs side by side would meet each other."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(
    config_path: str | Path,
    *,
    num_processes: int,
    accelerate_config: str | Path | None = None,
    cancel_file: str | Path | None = None,
    port: int | None = None,
) -> list[str]:
    """`python -m accelerate.commands.launch ... -m training.engine CONFIG`: `num_processes`
    ranks of one stage run on this machine. Run it with the repository root on PYTHONPATH."""
    if num_processes < 2:
        raise ValueError(f"num_processes: {num_processes}; one process needs no launcher")
    accelerate_config = Path(accelerate_config or ACCELERATE_CONFIGS / DEFAULT_CONFIG)
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(accelerate_config), "--num_processes", str(num_processes),
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port or free_port()),
               "-m", "training.engine", str(config_path)]  # fmt: skip
    if cancel_file is not None:
        command += ["--cancel-file", str(cancel_file)]
    return command
