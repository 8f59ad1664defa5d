"""The GPU path in one prepared command: training, feature cache, generation, save/load, methods.

Needs only torch, transformers, peft and this package (no Ray, no hub, no vLLM, no
network). It builds LLaVA models from configs with real shapes and random weights —
Pythia-410M and Pythia-1B GPT-NeoX text configs (vocab 50,304) beside a CLIP ViT-L/14-336
vision config (24 layers, hidden 1024, 336 px, 576 patches) — with the package's own
builder (`models/build.py::build_mllm`), on synthetic data written to a temp dir, and runs
five sections, each on its own (a failing section is recorded with its traceback and the
others still run; the whole script stops starting new work when `--budget-s` is spent):

  train      the project's loop (`train/loop.py::train_stage`) for the fine-tune stage's
             strategy — FSDP2 `full_shard` over a world of 1 (torch.distributed, nccl),
             bf16 (MixedPrecisionPolicy), activation checkpointing — and the align stage's
             (`shard_grad_op`, projector only); tokens/s (median over the steps after
             warm-up), peak memory, MFU by `train/mfu.py::estimate_mfu` (fine-tune: N = LLM
             + projector, 6·N per token; align: 4·N for the frozen LLM that gradients pass
             through, counted as N·4/6 + projector, the tower not counted); also SDPA vs
             eager attention and, with `--compile`, torch.compile'd decoder layers
  cache      align steps with the frozen-tower feature cache (`data/feature_cache.py`, filled
             on the GPU in bf16) vs without (the tower runs in every step, in bf16 under
             `MLLMForTraining.tower_autocast`), and without the cache with the tower left
             in fp32 (as before the tower was autocast under FSDP)
  generate   `HFEngine.generate` (batched, left-padded, KV cache) vs one `generate` per
             prompt, bf16, greedy: tokens/s and how many answers are identical
  roundtrip  save_mllm → load_mllm in bf16; logits of the loaded model vs the saved one
  methods    each CL method's step time relative to naive at the 410M shape (LoRA, soft
             targets, MoELoRA E=8, EWC, LwF): two tasks through `train/task.py::run_step`
             (task b measured, so EWC's Fisher and LwF's teacher records exist)

It writes one JSON (`--out`, default benchmarks/gpu_check.json; `--smoke`:
gpu_check_smoke.json in the temp dir unless given) and prints a table.

    python benchmarks/gpu_check.py                 # one GPU, ≤ 8 min on an H100
    python benchmarks/gpu_check.py --smoke         # tiny shapes on the CPU (CI, < 60 s)
    python benchmarks/gpu_check.py --sections train cache --budget-s 300

`--smoke` runs exactly the same code at tiny shapes (GPT-NeoX hidden 64 × 2 layers, CLIP
32 px / patch 8) on the CPU (gloo), so CI proves the script before a GPU is at hand.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

# GPT-NeoX shapes of the Pythia suite (vocab 50,304, untied), CLIP ViT-L/14-336.
LLM_SHAPES = {
    "pythia-160m": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, vocab_size=50304, max_position_embeddings=2048),
    "pythia-410m": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                        num_attention_heads=16, vocab_size=50304, max_position_embeddings=2048),
    "pythia-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=8, vocab_size=50304, max_position_embeddings=2048),
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, vocab_size=1024, max_position_embeddings=512),
}
VISION_SHAPES = {
    "clip-vit-l-14-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=336, patch_size=14),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, image_size=32, patch_size=8),
}
METHODS = {  # name -> method params at the paper's defaults, sized for a short check
    "naive": {},
    "lora": {},
    "soft_targets": {},
    "moelora": {"num_experts": 8},
    "ewc": {"fisher_samples": 32},
    "lwf": {"samples_per_task": 32},
}
WORDS = ("red green blue yellow purple white black small large circle square triangle star "
         "left right top bottom next to above below the a an of on in is are there picture "
         "image shape colour describe what which how many where").split()


@dataclass
class Plan:
    """Sizes of one check (the real one or the smoke one)."""

    llms: tuple[str, ...]
    vision: str
    method_llm: str
    images: int
    steps: int  # measured optimizer steps per training row
    warmup: int  # leading steps left out of the medians
    ft_batch: tuple[int, int]  # fine-tune (global, per device)
    align_batch: tuple[int, int]
    gen_prompts: int
    gen_tokens: int
    gen_batch: int
    max_seq_len: int


REAL = Plan(llms=("pythia-410m", "pythia-1b"), vision="clip-vit-l-14-336", method_llm="pythia-410m",
            images=192, steps=10, warmup=2, ft_batch=(32, 16), align_batch=(64, 32),
            gen_prompts=64, gen_tokens=32, gen_batch=32, max_seq_len=1024)
SMOKE = Plan(llms=("tiny",), vision="tiny", method_llm="tiny", images=16, steps=1, warmup=0,
             ft_batch=(4, 2), align_batch=(4, 2), gen_prompts=4, gen_tokens=3, gen_batch=2,
             max_seq_len=256)


# ---------------------------------------------------------------------------------------
# running sections independently under one time budget
# ---------------------------------------------------------------------------------------
class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.t0 = time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


class OutOfTime(RuntimeError):
    """The script's time budget is spent: the rest of a section is skipped."""


def run_sections(sections: dict, budget: Budget, results: dict | None = None) -> dict:
    """Run each `name -> fn(budget)`; a failure (or the budget) never stops the others."""
    results = {} if results is None else results
    for name, fn in sections.items():
        t = time.perf_counter()
        if budget.left() <= 0:
            results[name] = {"ok": False, "skipped": "time budget spent", "seconds": 0.0}
            continue
        try:
            results[name] = {"ok": True, "result": fn(budget)}
        except Exception as e:  # noqa: BLE001  (reported, the next section runs)
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc(limit=12)}
            print(f"[{name}] FAILED: {type(e).__name__}: {e}", flush=True)
        results[name]["seconds"] = time.perf_counter() - t
        _free()
    return results


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_flops_for(device: torch.device) -> tuple[float, str]:
    """Dense bf16 peak of the device (train/mfu.py's table) and its label."""
    from mllmcl_ray.train.mfu import PEAK_BF16

    if device.type != "cuda":
        return PEAK_BF16["h100-sxm"], "cpu (smoke: H100 SXM peak used, MFU meaningless)"
    name = torch.cuda.get_device_name(device)
    if "H100" in name:
        key = "h100-pcie" if "PCIe" in name else "h100-sxm"
    elif "H200" in name:
        key = "h200"
    elif "A100" in name:
        key = "a100"
    else:
        return PEAK_BF16["h100-sxm"], f"{name} (unknown peak: H100 SXM used)"
    return PEAK_BF16[key], key


# ---------------------------------------------------------------------------------------
# a synthetic world: images, three LLaVA-format tasks of varied length, a BPE tokenizer
# ---------------------------------------------------------------------------------------
def make_world(root: Path, plan: Plan, image_size: int, seed: int = 0) -> Path:
    from PIL import Image

    from mllmcl_ray.models.tokenizers import train_bpe_tokenizer

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(plan.images):
        arr = np.zeros((image_size, image_size, 3), dtype=np.uint8)
        arr[:] = rng.integers(0, 255, 3)
        a, b = sorted(rng.integers(0, image_size, 2))
        arr[a:b + 1, a:b + 1] = rng.integers(0, 255, 3)
        rel = f"images/{i}.png"
        Image.fromarray(arr).save(root / rel)
        paths.append(rel)

    def sentence(lo, hi):
        return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi))))

    def conv(i, turns):
        c = []
        for t in range(turns):
            q = sentence(4, 16) + "?"
            c += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + q},
                  {"from": "gpt", "value": sentence(2, 40) + "."}]
        return {"id": str(i), "image": paths[i % len(paths)], "conversations": c}

    for name, turns in (("caption", (1, 2)), ("a", (1, 4)), ("b", (1, 4))):
        recs = [conv(i, int(rng.integers(*turns))) for i in range(plan.images)]
        if name == "caption":
            for r in recs:
                r["conversations"][0]["value"] = "<image>"
        (root / f"{name}.json").write_text(json.dumps(recs))
    from mllmcl_ray.models.templates import get_template

    frame = get_template("pythia").prompt([{"from": "human", "value": "hi"}, {"from": "gpt",
                                                                              "value": "ok"}])
    tok = train_bpe_tokenizer([" ".join(WORDS), frame] * 50, vocab_size=1000, min_frequency=1)
    tok.save_pretrained(str(root / "tok"))
    return root


def model_spec(root: Path, llm: str, vision: str, plan: Plan, **kw):
    from mllmcl_ray.config import ModelSpec

    return ModelSpec(name=llm, tokenizer=str(root / "tok"), template="pythia",
                     max_seq_len=plan.max_seq_len, llm_config=dict(LLM_SHAPES[llm]),
                     vision_config=dict(VISION_SHAPES[vision]), **kw)


def stage_config(batch: tuple[int, int], steps: int, parallel: str, train: str, lr: float):
    from mllmcl_ray.config import StageConfig

    return StageConfig(lr=lr, warmup_ratio=0.0, schedule="constant", epochs=100.0,
                       max_steps=steps, global_batch_size=batch[0], per_device_batch_size=batch[1],
                       parallel=parallel, train=train)


class Ctx:
    """What every section shares."""

    def __init__(self, args, plan: Plan, root: Path, device: torch.device, plain: bool = False):
        self.args, self.plan, self.root, self.device = args, plan, root, device
        self.bf16 = not args.fp32
        self.plain = plain  # the plain CPU loop (fp32, no wrapping), for CPU ratios
        self.peak, self.peak_label = peak_flops_for(device)

    def strategy(self, parallel: str):
        from mllmcl_ray.train.strategies import get_strategy

        if self.plain:
            return get_strategy("none", device=self.device)

        # get_strategy, not make_strategy: make_strategy degrades a world of 1 to the
        # plain loop; here FSDP2 runs over the world of one on purpose.
        return get_strategy(parallel, device=self.device,
                            mixed_precision="bf16" if self.bf16 else "fp32",
                            activation_checkpointing=True)

    def data(self, mllm, name: str, template=None):
        from mllmcl_ray.config import DataSource
        from mllmcl_ray.data.tokenized import build_tokenized

        return build_tokenized([DataSource(path=str(self.root / f"{name}.json"),
                                           image_root=str(self.root))], mllm.tokenizer,
                               template or mllm.template, n_image_tokens=mllm.n_image_tokens,
                               max_len=mllm.spec.max_seq_len, seed=0,
                               cache_dir=self.root / "cache")


def build(c: "Ctx", spec):
    """`build_mllm` with parameters created (and randomly initialised) on the device: a
    CPU init of a 1B LLM + CLIP-L takes tens of seconds of the budget."""
    from mllmcl_ray.models.build import build_mllm

    with torch.device(c.device) if c.device.type == "cuda" else contextlib.nullcontext():
        return build_mllm(spec)


def _step_times(stamps: list[float], warmup: int) -> list[float]:
    d = [b - a for a, b in zip(stamps, stamps[1:])]
    return d[warmup:] if len(d) > warmup else d


def train_row(c: Ctx, llm: str, stage_name: str, *, attn: str | None = None,
              compile_layers: bool = False, cache: bool | None = None,
              group: bool = False, tower_fp32: bool = False) -> dict:
    """Train one stage with the project's loop; median step time and tokens/s."""
    from mllmcl_ray.config import MethodConfig
    from mllmcl_ray.data.collate import Collator
    from mllmcl_ray.methods.base import MethodStack, TaskContext, build_methods
    from mllmcl_ray.models.build import count_parameters, parts, set_trainable
    from mllmcl_ray.models.templates import get_template
    from mllmcl_ray.train.callbacks import ReportMetrics
    from mllmcl_ray.train.loop import train_stage
    from mllmcl_ray.train.mfu import estimate_mfu
    from mllmcl_ray.models.training import MLLMForTraining

    p = c.plan
    align = stage_name == "align"
    torch.manual_seed(0)
    mllm = build(c, model_spec(c.root, llm, p.vision, p, attn_implementation=attn))
    set_trainable(mllm.model, "projector" if align else "projector+llm")
    pr = parts(mllm.model)
    n_llm, n_proj = count_parameters(pr["language_model"]) + count_parameters(pr["lm_head"]), \
        count_parameters(pr["projector"])
    stage = stage_config(p.align_batch if align else p.ft_batch, p.warmup + p.steps + 1,
                         "shard_grad_op" if align else "full_shard",
                         "projector" if align else "projector+llm", 1e-3 if align else 2e-5)
    stage = replace(stage, group_by_length=group)
    ds = c.data(mllm, "caption" if align else "a", get_template("plain") if align else None)
    strategy = c.strategy(stage.parallel)
    features, fill_s = None, None
    if cache:
        from mllmcl_ray.data.feature_cache import FeatureCache

        t = time.perf_counter()
        features = FeatureCache(c.root / "features" / llm, mllm, device=c.device,
                                compute_dtype=torch.bfloat16 if c.bf16 else None)
        features.precompute(ds.image_paths())
        _sync(c.device)
        fill_s = time.perf_counter() - t
    collate = Collator(mllm.tokenizer.pad_token_id, mllm.image_processor,
                       load_pixels=features is None)
    if compile_layers:
        from mllmcl_ray.train.strategies.fsdp import decoder_layers

        for layer in decoder_layers(mllm.model):
            layer.compile()
    t = time.perf_counter()  # input work alone: a micro-batch read and collated on the CPU
    for k in range(3):
        collate([ds[(k * stage.per_device_batch_size + i) % len(ds)]
                 for i in range(stage.per_device_batch_size)])
    collate_s = (time.perf_counter() - t) / 3
    _reset_peak(c.device)
    tower_dtypes: set[str] = set()  # what the tower's matmuls computed in (fp32 = not cast)
    hook = next(x for x in pr["vision_tower"].modules() if isinstance(x, torch.nn.Linear)
                ).register_forward_hook(
        lambda _m, _i, out: tower_dtypes.add(str(out.dtype).replace("torch.", "")))
    module = strategy.wrap(MLLMForTraining(mllm.model))
    if tower_fp32:  # the old behaviour under FSDP: the tower outside the bf16 policy
        module.tower_autocast = None
    ctx = TaskContext(task_index=2, task_name=stage_name, stage=stage_name,
                      device=strategy.device, collate=collate)
    methods = MethodStack([]) if align else build_methods(MethodConfig(name="naive"))
    stamps, tokens = [], []

    def report(m):
        _sync(c.device)
        stamps.append(time.perf_counter())
        tokens.append(m["tokens_per_s"])

    res = train_stage(module, ds, stage, methods, strategy, ctx, collate, seed=0,
                      stage_name=stage_name, log_every=1, callbacks=ReportMetrics(report),
                      features=features,
                      progress=False)
    hook.remove()
    # stamps[i] closes step i; step i's time is stamps[i] - stamps[i-1] (step 0 has no
    # start stamp and is warm-up anyway)
    times = _step_times(stamps, p.warmup)
    step_s = statistics.median(times)
    tps = statistics.median(tokens[p.warmup + 1:] or tokens)
    n_mfu = n_llm + n_proj if not align else int(n_llm * 4 / 6) + n_proj
    row = {"model": llm, "stage": stage_name, "strategy": strategy.name,
           "precision": strategy.mixed_precision, "activation_checkpointing": strategy.activation_checkpointing,
           "attn": mllm.model.config.text_config._attn_implementation,
           "compile": compile_layers, "feature_cache": bool(cache), "group_by_length": group,
           "tower_dtype": ",".join(sorted(tower_dtypes)) or "not run",
           "collate_s_per_micro_batch": collate_s,
           "micro_batches_per_step": stage.global_batch_size // stage.per_device_batch_size,
           "global_batch": stage.global_batch_size, "per_device": stage.per_device_batch_size,
           "steps_measured": len(times), "step_s": step_s, "tokens_per_s": tps,
           "mean_tokens_per_sample": ds.num_tokens() / len(ds),
           "params_llm": n_llm, "params_projector": n_proj,
           "mfu": estimate_mfu(n_mfu, tps, c.peak), "peak_mem_gib": _peak_gib(c.device),
           "first_loss": res.losses[0], "last_loss": res.losses[-1], "losses": res.losses}
    if fill_s is not None:
        row["cache_fill_s"] = fill_s
        row["cache_images"] = len(ds.image_paths())
    print(f"[train] {llm:12s} {stage_name:8s} attn={row['attn']:5s} cache={int(bool(cache))} "
          f"group={int(group)} tower={row['tower_dtype']} "
          f"{tps:9.0f} tok/s  {step_s * 1000:7.1f} ms/step  MFU {row['mfu'] * 100:5.1f} %  "
          f"peak {row['peak_mem_gib'] or 0:.1f} GiB  collate {collate_s * 1000:.0f} ms/micro-batch",
          flush=True)
    del module, mllm, features
    _free()
    return row


# ---------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------
def section_train(c: Ctx, budget: Budget) -> dict:
    rows, skipped = [], []
    todo = [(llm, st, None, False, False) for llm in c.plan.llms for st in ("finetune", "align")]
    todo.append((c.plan.llms[0], "finetune", "eager", False, False))  # SDPA vs eager attention
    if c.args.cached_finetune:  # no pixel loading or tower in the step: how much is input work
        todo += [(llm, "finetune", None, False, True) for llm in c.plan.llms]
    if c.args.compile:
        todo.append((c.plan.llms[0], "finetune", None, True, False))
    for llm, st, attn, comp, cache in todo:
        if budget.left() < c.args.reserve_s:
            skipped.append(f"{llm}/{st}/attn={attn}/compile={comp}")
            continue
        rows.append(train_row(c, llm, st, attn=attn, compile_layers=comp, cache=cache))
    return {"rows": rows, "skipped": skipped}


def section_cache(c: Ctx, budget: Budget) -> dict:
    llm = c.plan.llms[0]
    off = train_row(c, llm, "align", cache=False)
    if budget.left() < c.args.reserve_s / 2:
        raise OutOfTime("no time left for the cached run")
    on = train_row(c, llm, "align", cache=True)
    fp32 = (train_row(c, llm, "align", cache=False, tower_fp32=True)
            if budget.left() >= c.args.reserve_s / 2 else None)
    return {"off": off, "on": on, "speedup": off["step_s"] / on["step_s"],
            "tower_fp32": fp32,
            "tower_bf16_speedup": fp32["step_s"] / off["step_s"] if fp32 else None,
            "same_first_loss": abs(off["first_loss"] - on["first_loss"])
            <= 1e-2 * abs(off["first_loss"])}


def section_generate(c: Ctx, budget: Budget) -> dict:
    from mllmcl_ray.data.images import pixel_values
    from mllmcl_ray.eval.engine.base import GenRequest
    from mllmcl_ray.eval.engine.hf import HFEngine

    p = c.plan
    torch.manual_seed(0)
    m = build(c, model_spec(c.root, p.llms[0], p.vision, p))
    with torch.no_grad():  # no end-of-text: both sides generate the full budget
        m.model.lm_head.weight[m.tokenizer.eos_token_id].zero_()
    recs = json.loads((c.root / "a.json").read_text())[:p.gen_prompts]
    reqs = []
    for i, r in enumerate(recs):
        first = r["conversations"][0]["value"]
        if i % 2:  # half of the prompts text-only
            reqs.append(GenRequest(m.template.prompt([{"from": "human", "value": first.replace(
                "<image>\n", "")}]), None, p.gen_tokens))
        else:
            reqs.append(GenRequest(m.template.prompt([{"from": "human", "value": first}]),
                                   str(c.root / r["image"]), p.gen_tokens))
    engine = HFEngine(m, batch_size=p.gen_batch, device=str(c.device),
                      dtype="bfloat16" if c.bf16 else None)
    engine.generate(reqs[:2])  # warm-up
    _sync(c.device)
    t = time.perf_counter()
    batched = engine.generate(reqs)
    _sync(c.device)
    t_batched = time.perf_counter() - t
    b_toks = [list(x) for x in engine.last_token_ids]
    eos = m.tokenizer.eos_token_id
    loop_toks = []
    t = time.perf_counter()
    with torch.inference_mode():
        for r in reqs:
            ids = torch.tensor([engine.encode_prompt(r.prompt, r.image is not None)],
                               device=c.device)
            kw = {}
            if r.image:
                kw["pixel_values"] = pixel_values(m.image_processor, [r.image]).to(
                    c.device, engine.model.dtype)
            out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=r.max_new_tokens, do_sample=False,
                                        pad_token_id=m.tokenizer.pad_token_id,
                                        eos_token_id=eos, **kw)
            new = out[0, ids.shape[1]:].tolist()
            loop_toks.append(new[:new.index(eos)] if eos in new else new)
    _sync(c.device)
    t_loop = time.perf_counter() - t
    n_b, n_l = sum(map(len, b_toks)), sum(map(len, loop_toks))
    same = sum(a == b for a, b in zip(b_toks, loop_toks))
    res = {"prompts": len(reqs), "with_image": sum(r.image is not None for r in reqs),
           "max_new_tokens": p.gen_tokens, "batch_size": p.gen_batch,
           "dtype": str(engine.model.dtype), "batched_tokens_per_s": n_b / t_batched,
           "per_sample_tokens_per_s": n_l / t_loop, "speedup": (n_b / t_batched) / (n_l / t_loop),
           "identical_answers": same, "answers": len(reqs),
           "note": "random weights: near-tied logits can flip a greedy token between "
                   "padded-batch and single-prompt kernels in bf16"}
    print(f"[generate] batched {res['batched_tokens_per_s']:.0f} tok/s, per-sample "
          f"{res['per_sample_tokens_per_s']:.0f} tok/s ({res['speedup']:.1f}x); identical "
          f"{same}/{len(reqs)}", flush=True)
    del engine, m, batched
    return res


def section_roundtrip(c: Ctx, budget: Budget) -> dict:
    from mllmcl_ray.data.collate import Collator
    from mllmcl_ray.models.build import load_mllm, save_mllm
    from mllmcl_ray.models.training import forward_batch
    from mllmcl_ray.models.training import MLLMForTraining

    p = c.plan
    torch.manual_seed(0)
    m = build(c, model_spec(c.root, p.llms[0], p.vision, p, dtype="bfloat16"))
    ds = c.data(m, "a")
    batch = Collator(m.tokenizer.pad_token_id, m.image_processor)([ds[i] for i in range(4)])

    def logits(model):
        mod = MLLMForTraining(model.to(c.device)).eval()
        with torch.no_grad():
            return forward_batch(mod, batch, c.device).float().cpu()

    before = logits(m.model)
    d = c.root / "roundtrip"
    t = time.perf_counter()
    save_mllm(m, d)
    save_s = time.perf_counter() - t
    m.model.to("cpu")
    del m
    _free()
    t = time.perf_counter()
    loaded = load_mllm(d)
    load_s = time.perf_counter() - t
    dtypes = sorted({str(q.dtype) for q in loaded.model.parameters()})
    after = logits(loaded.model)
    diff = float((before - after).abs().max())
    res = {"dtype": dtypes, "save_s": save_s, "load_s": load_s,
           "size_gib": sum(f.stat().st_size for f in d.glob("*.safetensors")) / 2 ** 30,
           "max_abs_logit_diff": diff, "identical": diff == 0.0}
    print(f"[roundtrip] {dtypes} save {save_s:.1f} s load {load_s:.1f} s max |Δlogit| {diff:g}",
          flush=True)
    if dtypes != ["torch.bfloat16"] or diff != 0.0:
        raise AssertionError(f"bf16 round trip: dtypes {dtypes}, max |Δlogit| {diff}")
    return res


def section_methods(c: Ctx, budget: Budget) -> dict:
    from mllmcl_ray.config import (DataSource, EvalConfig, MethodConfig, RunConfig,
                                   StagesConfig, TaskSpec, TrainerConfig)
    from mllmcl_ray.train.callbacks import ReportMetrics
    from mllmcl_ray.train.task import plan_steps, run_step

    p = c.plan
    rows, errors, skipped = {}, {}, []
    stage = stage_config(p.ft_batch, p.warmup + p.steps + 1, "full_shard", "projector+llm", 2e-5)
    for name in c.args.methods:
        if budget.left() < c.args.reserve_s:
            skipped.append(name)
            continue
        cfg = RunConfig(
            name=f"m-{name}", model=model_spec(c.root, p.method_llm, p.vision, p),
            stages=StagesConfig(finetune=stage), output_dir=str(c.root / "methods" / name),
            tasks=[TaskSpec(name=t, train=[DataSource(path=str(c.root / f"{t}.json"),
                                                      image_root=str(c.root))]) for t in "ab"],
            method=MethodConfig(name=name, params={name: METHODS[name]} if METHODS[name] else {}),
            trainer=TrainerConfig(num_workers=1, use_gpu=c.device.type == "cuda",
                                  feature_cache=False, log_every=1),
            eval=EvalConfig(nl=False, vl=False))
        try:
            steps = plan_steps(cfg)
            prev = None
            stamps: list[float] = []
            t0 = time.perf_counter()
            for i, st in enumerate(steps):
                stamps.clear()
                out = Path(cfg.output_dir) / st.key

                def report(m, _s=stamps):
                    _sync(c.device)
                    _s.append(time.perf_counter())

                run_step(cfg, st, prev, out, strategy=c.strategy("full_shard"),
                         callbacks=[ReportMetrics(report)],
                         cache_dir=Path(cfg.output_dir) / "cache", progress=False)
                prev = str(out)
                _free()
            times = _step_times(stamps, p.warmup)
            import shutil

            shutil.rmtree(cfg.output_dir, ignore_errors=True)  # two checkpoints per method
            rows[name] = {"step_s": statistics.median(times), "steps_measured": len(times),
                          "two_tasks_wall_s": time.perf_counter() - t0,
                          "params": METHODS[name]}
            print(f"[methods] {name:12s} {rows[name]['step_s'] * 1000:8.1f} ms/step (task b)",
                  flush=True)
        except Exception as e:  # noqa: BLE001  (one method failing does not stop the others)
            errors[name] = {"error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc(limit=12)}
            print(f"[methods] {name} FAILED: {type(e).__name__}: {e}", flush=True)
        _free()
    base = rows.get("naive", {}).get("step_s")
    for r in rows.values():
        r["relative_to_naive"] = r["step_s"] / base if base else None
    if errors and not rows:
        raise RuntimeError(f"every method failed: {sorted(errors)}")
    return {"model": p.method_llm, "rows": rows, "errors": errors, "skipped": skipped}


SECTIONS = {"train": section_train, "cache": section_cache, "generate": section_generate,
            "roundtrip": section_roundtrip, "methods": section_methods}


# ---------------------------------------------------------------------------------------
# table and main
# ---------------------------------------------------------------------------------------
def format_table(res: dict) -> str:
    out = [f"gpu_check on {res['device']} ({res['date']}, torch {res['torch']}, transformers "
           f"{res['transformers']}, peft {res['peft']}); total {res['total_s']:.0f} s"]
    s = res["sections"]
    for name in s:
        st = s[name]
        status = "ok" if st.get("ok") else ("SKIPPED: " + st["skipped"] if "skipped" in st
                                            else "FAILED: " + st.get("error", "?"))
        out.append(f"\n[{name}] {status} ({st.get('seconds', 0):.0f} s)")
        r = st.get("result") or {}
        if name == "train":
            out.append(f"  {'model':12s} {'stage':8s} {'attn':6s} {'tok/s':>9s} {'ms/step':>8s} "
                       f"{'MFU %':>6s} {'peak GiB':>8s} {'tower':>8s}")
            for row in r.get("rows", []):
                out.append(f"  {row['model']:12s} {row['stage']:8s} {row['attn']:6s} "
                           f"{row['tokens_per_s']:9.0f} {row['step_s'] * 1000:8.1f} "
                           f"{row['mfu'] * 100:6.1f} {row['peak_mem_gib'] or 0:8.1f} "
                           f"{row.get('tower_dtype', '-'):>8s}"
                           + ("  (compiled)" if row["compile"] else "")
                           + ("  (feature cache)" if row["feature_cache"] else ""))
            if r.get("skipped"):
                out.append(f"  skipped (budget): {', '.join(r['skipped'])}")
        elif name == "cache" and r:
            out.append(f"  align step {r['off']['step_s'] * 1000:.1f} ms without, "
                       f"{r['on']['step_s'] * 1000:.1f} ms with the cache: {r['speedup']:.2f}x "
                       f"(fill {r['on'].get('cache_fill_s', 0):.1f} s for "
                       f"{r['on'].get('cache_images', 0)} images)")
            if r.get("tower_fp32"):
                out.append(f"  align step with the tower in {r['tower_fp32']['tower_dtype']}: "
                           f"{r['tower_fp32']['step_s'] * 1000:.1f} ms; in "
                           f"{r['off']['tower_dtype']}: {r['off']['step_s'] * 1000:.1f} ms "
                           f"({r['tower_bf16_speedup']:.2f}x)")
        elif name == "generate" and r:
            out.append(f"  batched {r['batched_tokens_per_s']:.0f} tok/s vs per-sample "
                       f"{r['per_sample_tokens_per_s']:.0f} tok/s = {r['speedup']:.1f}x; "
                       f"identical answers {r['identical_answers']}/{r['answers']}")
        elif name == "roundtrip" and r:
            out.append(f"  {r['dtype']} {r['size_gib']:.2f} GiB, save {r['save_s']:.1f} s, "
                       f"load {r['load_s']:.1f} s, max |Δlogit| {r['max_abs_logit_diff']:g}")
        elif name == "methods" and r:
            for m, row in r.get("rows", {}).items():
                rel = row["relative_to_naive"]
                out.append(f"  {m:12s} {row['step_s'] * 1000:8.1f} ms/step  "
                           f"{'%.2fx' % rel if rel else '-':>6s} naive")
            for m, e in r.get("errors", {}).items():
                out.append(f"  {m:12s} FAILED: {e['error']}")
            if r.get("skipped"):
                out.append(f"  skipped (budget): {', '.join(r['skipped'])}")
    return "\n".join(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (CI)")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/gpu_check.json;"
                    " --smoke: a temp dir)")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop starting new work after this many seconds (default 420; "
                         "smoke 50)")
    ap.add_argument("--reserve-s", type=float, default=None,
                    help="a training row starts only with this much budget left (default 30; "
                         "smoke 0)")
    ap.add_argument("--compile", action="store_true",
                    help="also train the first model with torch.compile'd decoder layers")
    ap.add_argument("--cached-finetune", action="store_true",
                    help="also fine-tune each model from the feature cache (no image loading "
                         "or tower in the step), to see how much of a step is input work")
    ap.add_argument("--fp32", action="store_true", help="no bf16 (debugging)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = ap.parse_args(argv)
    plan = SMOKE if args.smoke else REAL
    args.budget_s = args.budget_s if args.budget_s is not None else (50.0 if args.smoke else 420.0)
    args.reserve_s = args.reserve_s if args.reserve_s is not None else (0.0 if args.smoke else 30.0)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke
                                          else "cpu"))
    if device.type == "cuda":
        if device.index is None:  # set_device needs an index ("cuda" alone is refused)
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.smoke:
        torch.set_num_threads(1)  # tiny shapes: threads only add synchronisation
    budget = Budget(args.budget_s)
    t0 = time.time()
    import peft
    import torch.distributed as dist
    import transformers

    tmp = Path(tempfile.mkdtemp(prefix="mllmcl-gpu-check-"))
    os.environ.setdefault("HF_HOME", str(tmp / "hf"))
    results: dict = {}
    res = {"device": (f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda"
                      else "cpu"), "smoke": args.smoke, "date": time.strftime("%Y-%m-%d"),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "python": platform.python_version(), "plan": plan.__dict__,
           "budget_s": args.budget_s, "sections": results}
    own_pg = False
    try:
        vision = VISION_SHAPES[plan.vision]
        make_world(tmp, plan, vision["image_size"])
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0,
                                    world_size=1,
                                    init_method=f"tcp://127.0.0.1:{_free_port()}")
            own_pg = True
        c = Ctx(args, plan, tmp, device)
        res["peak_flops"], res["peak_label"] = c.peak, c.peak_label
        run_sections({n: (lambda b, f=SECTIONS[n]: f(c, b)) for n in args.sections}, budget,
                     results)
    finally:
        if own_pg:
            dist.destroy_process_group()
        res["total_s"] = time.time() - t0
        out = Path(args.out) if args.out else (tmp / "gpu_check_smoke.json" if args.smoke
                                               else HERE / "gpu_check.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_suffix(".json.tmp")
        part.write_text(json.dumps(res, indent=1, default=str))
        os.replace(part, out)
        print(format_table(res))
        print(f"wrote {out}")
        if not args.out or args.smoke:
            import shutil

            shutil.rmtree(tmp / "images", ignore_errors=True)
            shutil.rmtree(tmp / "methods", ignore_errors=True)
            shutil.rmtree(tmp / "roundtrip", ignore_errors=True)
    return res


if __name__ == "__main__":
    r = main()
    sys.exit(0 if all(s.get("ok") for s in r["sections"].values()) else 1)
