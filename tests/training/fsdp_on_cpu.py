"""`python -m training.engine` with accelerate's FSDP allowed on the CPU, for tests only.

accelerate 1.15 never shards on the CPU. `AcceleratorState.__init__` (accelerate/state.py, the
`elif self.distributed_type in [DistributedType.MULTI_GPU, ...]` branch at line 986) keeps the
FSDP plugin, and sets `distributed_type = FSDP` (line 1013), only for GPU-like process groups;
the engine's ranks on a machine without CUDA are MULTI_CPU (gloo), so the plugin built from
fsdp.yaml is dropped and the run trains plain DDP. No config variant changes that: `use_cpu:
true` (launch.py line 1399 then picks the simple launcher, which still starts N ranks) meets the
same check, and `fsdp_cpu_ram_efficient_loading` / `fsdp_offload_params` are read only inside
the FSDP branch. torch's FSDP2 (`fully_shard`) itself runs on the CPU over gloo, so this shim
lets accelerate take the FSDP branch there; the rest (sharding, the trainer's sharded
checkpoints, the gathered final save) runs unpatched. Run it in place of `-m training.engine`
under `accelerate launch --config_file training/accelerate/fsdp.yaml`.
"""

from __future__ import annotations

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_allowing_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    fresh = AcceleratorState._shared_state == {}
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fresh and fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _init_allowing_fsdp_on_cpu

if __name__ == "__main__":
    from training.engine.__main__ import main

    sys.exit(main())
