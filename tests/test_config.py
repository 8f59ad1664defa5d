"""Typed configs: strict YAML loading, overrides, presets, method params, batch rule."""
import pytest

from mllmcl_ray.config import (ConfigError, RunConfig, StageConfig, from_dict, load_yaml,
                               merge, parse_override, set_dotted, to_dict)
from mllmcl_ray.methods.base import build_methods
from mllmcl_ray.train.schedule import accumulation_steps


def test_round_trip_and_nested_stages():
    cfg = RunConfig()
    assert cfg.stages.align.lr == 1e-3 and cfg.stages.align.train == "projector"
    assert cfg.stages.finetune.lr == 2e-5 and cfg.stages.finetune.warmup_ratio == 0.03
    again = from_dict(RunConfig, to_dict(cfg))
    assert again == cfg


def test_unknown_keys_rejected_by_dotted_name():
    with pytest.raises(ConfigError, match=r"stages.finetune: unknown key\(s\) 'lrate'"):
        from_dict(RunConfig, {"stages": {"finetune": {"lrate": 1}}})
    with pytest.raises(ConfigError, match=r"tasks\[0\].train\[0\]: unknown key\(s\) 'file'"):
        from_dict(RunConfig, {"tasks": [{"name": "vqa", "train": [{"file": "x.json"}]}]})


def test_wrong_types_rejected():
    with pytest.raises(ConfigError, match=r"stages.align.lr: expected a number, got 'fast'"):
        from_dict(RunConfig, {"stages": {"align": {"lr": "fast"}}})
    with pytest.raises(ConfigError, match=r"seed: expected an integer"):
        from_dict(RunConfig, {"seed": 1.5})
    with pytest.raises(ConfigError, match=r"trainer.use_gpu: expected true or false"):
        from_dict(RunConfig, {"trainer": {"use_gpu": "yes"}})


def test_yaml_safe_load_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nseed: 3\nstages:\n  finetune:\n    lr: 1.0e-4\n")
    cfg = from_dict(RunConfig, load_yaml(p))
    assert cfg.seed == 3 and cfg.stages.finetune.lr == 1e-4
    p.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_overrides_and_merge():
    k, v = parse_override("method.params.soft_targets.alpha=0.01")
    data = {}
    set_dotted(data, k, v)
    assert data == {"method": {"params": {"soft_targets": {"alpha": 0.01}}}}
    cfg = merge(RunConfig(), {"stages": {"finetune": {"lr": 5e-5}}})
    assert cfg.stages.finetune.lr == 5e-5 and cfg.stages.align.lr == 1e-3
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("oops")


def test_methods_by_name_and_params_validated():
    stack = build_methods(from_dict(RunConfig, {"method": {"name": "naive"}}).method)
    assert stack.name == "naive"
    with pytest.raises(ConfigError, match=r"unknown method\(s\) \['magic'\]"):
        build_methods(from_dict(RunConfig, {"method": {"name": "naive+magic"}}).method)
    with pytest.raises(ConfigError, match="not among the configured methods"):
        build_methods(from_dict(RunConfig, {"method": {"name": "naive",
                                                       "params": {"lora": {"rank": 8}}}}).method)


@pytest.mark.parametrize("workers, per_device, expected", [(1, 16, 8), (2, 16, 4), (4, 8, 4)])
def test_global_batch_rule(workers, per_device, expected):
    st = StageConfig(global_batch_size=128, per_device_batch_size=per_device)
    assert accumulation_steps(st, workers) == expected
    assert per_device * workers * expected == 128


def test_unreachable_global_batch_rejected_with_numbers():
    st = StageConfig(global_batch_size=128, per_device_batch_size=12)
    with pytest.raises(ConfigError, match=r"global_batch_size 128 is not a multiple of "
                                          r"per_device_batch_size 12 × 2 worker\(s\) = 24"):
        accumulation_steps(st, 2, "finetune")
