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


# ---------------------------------------------------------------------------------------
# issue 11: ranges in __post_init__ (named by dotted path), float spellings, explicit wins
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, message", [
    ({"stages": {"finetune": {"lr": 0}}}, "stages.finetune.lr: must be > 0"),
    ({"stages": {"align": {"lr": -1e-3}}}, "stages.align.lr: must be > 0"),
    ({"stages": {"finetune": {"warmup_ratio": 1.0}}}, r"stages.finetune.warmup_ratio: must be in \[0, 1\)"),
    ({"stages": {"finetune": {"epochs": 0}}}, "stages.finetune.epochs: must be > 0"),
    ({"stages": {"finetune": {"max_steps": 0}}}, "stages.finetune.max_steps: must be ≥ 1"),
    ({"stages": {"finetune": {"global_batch_size": 0}}}, "global_batch_size: must be ≥ 1"),
    ({"stages": {"finetune": {"lr_rule": "scaeld"}}}, "lr_rule: must be one of 'fixed', 'scaled'"),
    ({"stages": {"finetune": {"schedule": "linear"}}}, "schedule: must be one of"),
    ({"stages": {"finetune": {"train": "llm"}}}, "train: must be one of 'projector', 'projector\\+llm'"),
    ({"tasks": [{"name": "t", "train": [{"path": "x", "fraction": 1.5}]}]},
     r"tasks\[0\].train\[0\].fraction: must be in \(0, 1\], got 1.5"),
    ({"tasks": [{"name": "t", "train": [{"path": "x", "missing_image": "ignore"}]}]},
     "missing_image: must be one of 'error', 'skip'"),
    ({"tasks": [{"name": "t", "eval": [{"name": "e", "max_samples": 0}]}]},
     r"tasks\[0\].eval\[0\].max_samples: must be ≥ 1"),
    ({"trainer": {"cpus_per_worker": 0}}, "trainer.cpus_per_worker: must be > 0"),
    ({"trainer": {"keep_last": 0}}, "trainer.keep_last: must be ≥ 1"),
    ({"trainer": {"mixed_precision": "fp16"}}, "trainer.mixed_precision: must be one of"),
    ({"eval": {"batch_size": 0}}, "eval.batch_size: must be ≥ 1"),
    ({"model": {"dtype": "float64"}}, "model.dtype: must be one of"),
    ({"recipe": "contiual"}, "recipe: must be one of 'continual', 'llava', got 'contiual'"),
    ({"stages": {"finetune": {"lr": float("nan")}}}, "stages.finetune.lr: expected a number, got NaN"),
])
def test_out_of_range_values_rejected_by_dotted_path(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(RunConfig, data)


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("2E-5", 2e-5), (" 0.5 ", 0.5),
                                         ("3", 3.0), (".5", 0.5), ("-1e+2", -100.0)])
def test_float_fields_accept_ordinary_spellings(text, value):
    """YAML `lr: 1e-4` (PyYAML: a string, no dot) and `--set ...lr=1e-4` are numbers."""
    k, v = parse_override(f"stages.finetune.lr={text}")
    data: dict = {}
    set_dotted(data, k, v)
    if value > 0:
        assert from_dict(RunConfig, data).stages.finetune.lr == value
    else:
        with pytest.raises(ConfigError, match="must be > 0"):
            from_dict(RunConfig, data)


@pytest.mark.parametrize("text", ["1e-4x", "fast", "1,5", "0x10", ""])
def test_non_numbers_still_rejected(text):
    with pytest.raises(ConfigError, match="stages.finetune.lr: expected a number"):
        from_dict(RunConfig, {"stages": {"finetune": {"lr": text}}})


def test_explicit_override_wins_over_its_rule_or_conflicts():
    from mllmcl_ray.config import apply_sets, resolve_explicit

    data = {"stages": {"finetune": {"lr_rule": "scaled", "lr": 1e-4}}}
    notes = apply_sets(data, ["stages.finetune.lr=0.5"])
    cfg = from_dict(RunConfig, data)
    assert (cfg.stages.finetune.lr, cfg.stages.finetune.lr_rule) == (0.5, "fixed")
    assert notes == ["stages.finetune.lr set explicitly: stages.finetune.lr_rule 'scaled' → "
                     "'fixed' (explicit values win over derived rules)"]
    # a rule already using the field, or another stage's field: nothing changes
    data = {"stages": {"finetune": {"lr_rule": "scaled"}}}
    assert apply_sets(data, ["stages.align.lr=0.1", "seed=3"]) == []
    assert data["stages"]["finetune"]["lr_rule"] == "scaled"
    with pytest.raises(ConfigError, match="stages.finetune.lr is set explicitly but "
                                          "stages.finetune.lr_rule is 'scaled'"):
        apply_sets({}, ["stages.finetune.lr_rule=scaled", "stages.finetune.lr=0.5"])
    # setting the rule to the value that uses the field is fine
    data = {"stages": {"finetune": {"lr_rule": "scaled"}}}
    assert resolve_explicit(data, []) == []
    apply_sets(data, ["stages.finetune.lr_rule=fixed", "stages.finetune.lr=0.5"])
    assert from_dict(RunConfig, data).stages.finetune.lr == 0.5
