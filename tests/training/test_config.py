from __future__ import annotations

import json
import subprocess
import sys

import pytest
from engine_testutils import base_config

from training.engine import ConfigError, config_to_dict, load_config, run_stage


def test_it_loads_yaml_and_round_trips(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "stage: dpo\noutput_dir: out\nmodel: m\ndataset: d\nlearning_rate: 3e-5\nbeta: 0.2\n"
    )
    cfg = load_config(path)
    assert cfg.stage == "dpo" and cfg.learning_rate == 3e-5 and cfg.beta == 0.2
    assert load_config(config_to_dict(cfg)) == cfg
    json.dumps(config_to_dict(cfg))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"stage": "sft", "lr": 1e-4}, "unknown key 'lr' (did you mean 'learning_rate'?)"),
        ({"stage": "ppo", "kl_coef": "abc"}, "ppo.kl_coef: expected a number, got 'abc'"),
        ({"stage": "sft", "max_steps": "10"}, "sft.max_steps: expected an integer"),
        ({"stage": "sft", "use_lora": "yes"}, "sft.use_lora: expected a boolean"),
        ({"stage": "dpo", "loss_type": "nope"}, "dpo.loss_type: 'nope' is not one of"),
        ({"stage": "rlhf"}, "stage: unknown stage 'rlhf'"),
        ({"output_dir": "x"}, "missing key 'stage'"),
        ({"stage": "sft", "output_dir": "o", "model": "m"}, "sft.dataset: required"),
        (
            {"stage": "sft", "output_dir": "o", "model": "m", "dataset": "d", "learning_rate": -1},
            "sft.learning_rate: must be positive",
        ),
        (
            {"stage": "dpo", "output_dir": "o", "model": "m", "dataset": "d", "sft_weight": -0.5},
            "dpo.sft_weight: must be 0 (plain DPO) or positive",
        ),
    ],
)
def test_it_names_the_field_in_config_errors(data, message):
    with pytest.raises(ConfigError) as exc:
        load_config(data)
    assert message in str(exc.value)


def test_it_rejects_a_missing_snapshot(tiny, tmp_path):
    cfg = base_config(tiny, "sft", tmp_path / "out", dataset=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="sft.dataset: snapshot directory not found"):
        run_stage(cfg)


def test_it_rejects_columns_that_do_not_fit_the_stage(tiny, tmp_path):
    cfg = base_config(tiny, "instruction", tmp_path / "out", dataset=tiny["snap_sft"])
    with pytest.raises(ConfigError, match="needs \\{messages\\}"):
        run_stage(cfg)
    cfg = base_config(tiny, "dpo", tmp_path / "out", dataset=tiny["snap_sft"])
    with pytest.raises(ConfigError, match="snapshot kind 'sft' does not fit stage 'dpo'"):
        run_stage(cfg)


def test_it_rejects_a_tokenizer_without_pad_token(tiny, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    cfg = base_config(tiny, "sft", tmp_path / "out", tokenizer=str(tmp_path / "nopad"))
    with pytest.raises(ConfigError, match="sft.pad_token: tokenizer .* has no pad token"):
        run_stage(cfg)


def test_it_rejects_unknown_trainer_kwargs(tiny, tmp_path):
    cfg = base_config(tiny, "sft", tmp_path / "out", trainer_kwargs={"bogus": 1})
    with pytest.raises(ConfigError, match="sft.trainer_kwargs.bogus: not an allowed option"):
        run_stage(cfg)


def test_it_never_imports_django():
    code = (
        "import sys, training.engine, training.engine.runtime, training.engine.stages, "
        "training.engine.evaluation, training.engine.generation, training.engine.resources; "
        "assert 'django' not in sys.modules, 'django imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_package_import_is_light():
    code = "import sys, training.engine; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
