"""mllmcl_ray/cost.py against hand-worked numbers for the tiny trainer world's config."""
import dataclasses
import json

import pytest

from mllmcl_ray.config import ConfigError, DataSource, ModelSpec
from mllmcl_ray.cost import estimate_run_cost, format_cost_table, measured_mfu, parameter_counts

# Tiny GPT-NeoX (H=32, I=64, L=2, V=304, untied): embed_in V·H = 9,728; per layer two
# LayerNorms 4H = 128, query_key_value 3H·H+3H = 3,168, dense H·H+H = 1,056,
# dense_h_to_4h H·I+I = 2,112, dense_4h_to_h I·H+H = 2,080 -> 8,544; x2 = 17,088;
# final LayerNorm 2H = 64; embed_out V·H = 9,728. Total 36,608.
LLM = 36_608
LAYER = 8_544
# Tiny CLIP tower (H=32, I=64, L=2, 32 px / patch 8 = 16 patches): conv 3·8·8·32 = 6,144
# (no bias), class embedding 32, positions 17·32 = 544, pre-LayerNorm 64; per layer two
# LayerNorms 128 + q,k,v,out 4·(32·32+32) = 4,224 + fc1 2,112 + fc2 2,080 = 8,544, x2 =
# 17,088; post-LayerNorm 64. Total 23,936.
TOWER = 23_936
# Projector 32 -> 32 -> 32 with biases: 2·(32·32 + 32) = 2,112.
PROJ = 2_112
PEAK = 989e12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from train_world import make_world

    return make_world(tmp_path_factory.mktemp("cost"))


def _lengths(world, cfg, name, template_name):
    """Mean and max token length from the real tokenised dataset (an independent path)."""
    from mllmcl_ray.data.tokenized import build_tokenized
    from mllmcl_ray.models.templates import get_template
    from mllmcl_ray.models.tokenizers import ensure_special_tokens, load_tokenizer

    tok = ensure_special_tokens(load_tokenizer(cfg.model.tokenizer))
    ds = build_tokenized([DataSource(path=str(world / f"{name}.json"), image_root=str(world))],
                         tok, get_template(template_name), n_image_tokens=16, max_len=64, seed=0,
                         cache_dir=world / "elsewhere")
    lens = [len(ds[i]["input_ids"]) for i in range(len(ds))]
    return sum(lens) / len(lens), max(lens)


def test_parameter_counts_by_hand_and_real_pythia_clip_shapes(world):
    from train_world import tiny_config

    p = parameter_counts(tiny_config(world, world / "o").model)
    assert (p.llm, p.tower, p.projector, p.layer_params, p.patches) == (LLM, TOWER, PROJ, LAYER, 16)
    # Pythia-410M (H=1024, I=4096, L=24, V=50304, untied): 2·V·H = 103,022,592 + 24 layers ×
    # (4H + 3H²+3H + H²+H + 4H²+4H + 4H²+H = 12,596,224) = 302,309,376 + final LN 2,048
    # = 405,334,016 (the published count). CLIP ViT-L/14-336: conv 3·14²·1024 = 602,112 +
    # class 1,024 + positions 577·1024 = 590,848 + pre-LN 2,048 + 24 × 12,596,224 + post-LN
    # 2,048 = 303,507,456. Projector 1024·1024+1024 + 1024·1024+1024 = 2,099,200.
    spec = ModelSpec(llm_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                     num_attention_heads=16, vocab_size=50304),
                     vision_config=dict(hidden_size=1024, intermediate_size=4096,
                                        num_hidden_layers=24, num_attention_heads=16,
                                        image_size=336, patch_size=14))
    p = parameter_counts(spec)
    assert (p.llm, p.tower, p.projector, p.patches) == (405_334_016, 303_507_456, 2_099_200, 576)


def test_run_cost_matches_hand_worked_numbers(world, tmp_path):
    from train_world import tiny_config

    cfg = tiny_config(world, tmp_path / "out", align=True)  # 2 workers, fp32 on CPU, no cache
    c = estimate_run_cost(cfg, bench_json=tmp_path / "none.json")
    assert c.mfu == 0.35 and "assumed" in c.mfu_source
    assert [s.key for s in c.stages] == ["02-align", "02-colour", "03-name"]
    mean_a, max_a = _lengths(world, cfg, "caption", "plain")
    # Every stage: 32 records × 2 epochs // global batch 8 = 8 steps, capped at max_steps 6:
    # 6 × 8 = 48 samples, all with an image.
    for s, (name, tmpl, strategy) in zip(c.stages, [("caption", "plain", "shard_grad_op"),
                                                    ("colour", "micro", "full_shard"),
                                                    ("name", "micro", "full_shard")]):
        mean, mx = _lengths(world, cfg, name, tmpl)
        assert (s.optimizer_steps, s.samples, s.images, s.tower_images) == (6, 48, 48, 48)
        assert s.tokens == round(48 * mean) and s.strategy == strategy and s.workers == 2
        llm_rate = 4 if name == "caption" else 6  # frozen LLM backpropagated: 4·N; trained 6·N
        assert s.flops_parts == {"llm": llm_rate * LLM * s.tokens,
                                 "projector": 6 * PROJ * 48 * 16,  # 9,732,096
                                 "tower": 2 * TOWER * 17 * 48}  # 39,063,552
        assert s.gpu_hours == pytest.approx(s.flops / (0.35 * PEAK) / 3600, rel=1e-12)
        # Memory per worker (fp32, no activation checkpointing on CPU, b = 2, H = 32, V = 304,
        # s = the longest sample): weights (36,608 + 2,112)·4 B / 2 workers = 77,440; tower
        # 23,936·4 = 95,744; activations 2 layers × 34·s·b·H·4/2 = 8,704·s; logits 2·s·b·V·4
        # = 4,864·s.
        trained = PROJ if name == "caption" else LLM + PROJ
        expect = {"weights": 77_440, "tower": 95_744, "gradients": 4 * trained / 2,
                  "optimizer": 8 * trained / 2, "activations": 8_704 * mx, "logits": 4_864 * mx,
                  # shard_grad_op keeps the whole model gathered (38,720·4 = 154,880);
                  # full_shard two layers (2·8,544·4 = 68,352)
                  "gathered": 154_880 if name == "caption" else 68_352}
        assert s.memory_parts == pytest.approx(expect)
    assert c.tokens == sum(s.tokens for s in c.stages)
    assert c.gpu_hours == pytest.approx(c.flops / (0.35 * PEAK) / 3600)
    table = format_cost_table([c])
    assert "02-align" in table and "shard_grad_op×2" in table and "35 %" in table


def test_feature_cache_runs_each_distinct_image_once_and_gpu_memory(world, tmp_path):
    from train_world import tiny_config

    cfg = tiny_config(world, tmp_path / "out", align=True, num_workers=1)
    cfg.trainer.feature_cache = True
    cfg.trainer.use_gpu = True  # bf16 compute and activation checkpointing ("auto")
    c = estimate_run_cost(cfg, mfu=0.5)
    # each task has its own 32 images: the tower sees 32 per stage instead of 48
    assert [s.tower_images for s in c.stages] == [32, 32, 32]
    assert all(s.flops_parts["tower"] == 2 * TOWER * 17 * 32 for s in c.stages)
    s = c.stages[1]
    mx = _lengths(world, cfg, "colour", "micro")[1]
    # one worker: plain loop, nothing sharded, nothing gathered; bf16 activations with
    # checkpointing: each layer's input 2·s·b·H·2/2 = 128·s per layer, plus one layer
    # 34·s·b·H·2/2 = 2,176·s; logits 2·s·b·V·2 = 2,432·s.
    assert s.strategy == "none"
    assert s.memory_parts == pytest.approx({
        "weights": (LLM + PROJ) * 4, "tower": TOWER * 4, "gradients": 4 * (LLM + PROJ),
        "optimizer": 8 * (LLM + PROJ), "activations": 2 * 128 * mx + 2_176 * mx,
        "logits": 2_432 * mx})
    assert c.mfu == 0.5 and c.mfu_source == "given"


def test_measured_mfu_from_gpu_check_json(tmp_path):
    p = tmp_path / "gpu_check.json"
    assert measured_mfu(p) is None
    # the largest model's SDPA, uncompiled fine-tune row: 1B's 0.5 (its eager and
    # compiled comparison rows, the 410M row and the align row are not the run's MFU)
    rows = [{"stage": "finetune", "model": "pythia-410m", "mfu": 0.4, "params_llm": 4},
            {"stage": "finetune", "model": "pythia-1b", "mfu": 0.5, "params_llm": 10,
             "attn": "sdpa", "compile": False},
            {"stage": "finetune", "model": "pythia-1b", "mfu": 0.3, "params_llm": 10,
             "attn": "eager", "compile": False},
            {"stage": "finetune", "model": "pythia-1b", "mfu": 0.7, "params_llm": 10,
             "attn": "sdpa", "compile": True},
            {"stage": "align", "model": "pythia-2.8b", "mfu": 0.1, "params_llm": 28}]
    p.write_text(json.dumps({"device": "cuda: NVIDIA H100 80GB HBM3", "date": "2026-11-26",
                             "sections": {"train": {"ok": True, "result": {"rows": rows}}}}))
    mfu, src = measured_mfu(p)
    assert mfu == pytest.approx(0.5) and "gpu_check.json" in src and "pythia-1b" in src
    p.write_text(json.dumps({"device": "cpu", "sections": {"train": {"result": {"rows": rows}}}}))
    assert measured_mfu(p) is None  # a CPU smoke run is no MFU measurement


def test_errors_name_the_setting(world, tmp_path):
    from train_world import tiny_config

    cfg = tiny_config(world, tmp_path / "out")
    with pytest.raises(ConfigError, match="MFU"):
        estimate_run_cost(cfg, mfu=1.5)
    with pytest.raises(ConfigError, match="dtype"):  # rejected when the config is built
        dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="int8"))
