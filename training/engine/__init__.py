"""The training engine: plain Python on transformers/TRL/peft. Never imports Django.

Importing this package is cheap (no torch): the web side uses `load_config` and the progress
sink in request code; `run_stage` pulls in the ML stack when called.
"""

from __future__ import annotations

from .config import (
    STAGES,
    ConfigError,
    DPOConfig,
    InstructionConfig,
    PPOConfig,
    PretrainConfig,
    RewardConfig,
    SFTConfig,
    StageConfig,
    config_to_dict,
    describe_config,
    load_config,
)
from .progress import ProgressSink, read_events
from .runner import StageResult, run_stage

__all__ = [
    "STAGES",
    "ConfigError",
    "DPOConfig",
    "InstructionConfig",
    "PPOConfig",
    "PretrainConfig",
    "ProgressSink",
    "RewardConfig",
    "SFTConfig",
    "StageConfig",
    "StageResult",
    "config_to_dict",
    "describe_config",
    "load_config",
    "read_events",
    "run_stage",
]
