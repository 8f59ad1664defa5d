"""What a run will cost, before it runs: tokens, FLOPs, memory per worker, GPU-hours.

`estimate_run_cost(cfg)` walks the run's steps (`train.task.plan_steps`: alignment, then
each task's fine-tune) and for each stage computes

- **samples and tokens trained on**: optimizer steps (`schedule.num_optimizer_steps`: the
  data's record count × epochs ÷ global batch, capped by `max_steps`) × global batch
  samples, × the mean tokenised length of the stage's data (image tokens included, as the
  LLM processes them). Lengths come from the tokenised Parquet cache when the run has
  already built it (`<output_dir>/cache/tok-*.parquet`, exact), otherwise from encoding
  up to `sample_records` evenly spaced records with the model's tokenizer and template
  (exact when the data has no more records than that). Data a CL method adds (rehearsal
  replay) is not counted.
- **FLOPs** (the 6·N rule of `train/mfu.py`, attention products not counted):
  trained parameters cost 6·N per token they process (LLM: every token; projector: every
  image token); a frozen LLM that gradients flow through (the align stage) costs 4·N per
  token (forward 2·N + backward to its inputs 2·N, no weight gradients); the frozen
  tower costs 2·N per patch position ((image_size/patch)² + 1 with CLS) per image
  forward — once per image seen, or, with `trainer.feature_cache`, once per distinct
  image of the whole run (charged to the first stage that needs it).
- **memory per worker** for the stage's `parallel` strategy over `trainer.num_workers`
  (one worker: the plain loop), in bytes: weights in `model.dtype` (sharded by
  full_shard / shard_grad_op, whole for ddp / none; shard_grad_op also keeps the
  gathered compute-dtype copy between forward and backward; FSDP holds two gathered
  layers in flight), fp32 gradients and AdamW's two fp32 moments for the trained
  parameters (sharded under FSDP; DDP holds its reducer buckets beside the gradients),
  the tower whole on every worker, and activations of one micro-batch of
  `per_device_batch_size` samples at the stage's longest sample (≤ max_seq_len):
  34·s·b·H bytes per layer at 16-bit (Korthikanti et al. 2022, attention scores left
  out: SDPA/flash do not store them), only one layer's worth plus each layer's input
  (2·s·b·H) with activation checkpointing, scaled ×2 for fp32, plus the logits and
  their gradient (2·s·b·V elements). An estimate: allocator slack, CUDA context
  (~0.5 GiB) and communication buffers are not counted.
- **GPU-hours** = FLOPs ÷ (MFU × peak) ÷ 3600, at the fine-tune MFU measured by
  `benchmarks/gpu_check.py` (its largest model, SDPA, not compiled) when
  `benchmarks/gpu_check.json` holds a GPU measurement, else at 35 %; peak = H100 SXM dense bf16, 989 TFLOP/s (`train/mfu.PEAK_BF16`).

`format_cost_table(costs)` prints one row per stage, a total per run and a grand total.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, DataSource, ModelSpec, RunConfig, StageConfig

DEFAULT_MFU = 0.35
GIB = 2 ** 30
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
BENCH_JSON = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.json"


@dataclass
class ParamCounts:
    """Parameter counts and the shapes the estimates need."""

    llm: int  # causal LM incl. embeddings and LM head (tied ones counted once)
    tower: int  # CLIP vision tower
    projector: int  # 2-layer MLP
    hidden: int  # LLM hidden size
    layers: int  # LLM decoder layers
    vocab: int  # LM vocabulary (after the tokenizer's resize)
    layer_params: int  # parameters of one decoder layer
    vision_hidden: int
    patches: int  # image tokens per image ((image_size / patch)^2)


@dataclass
class StageCost:
    """One stage of one run."""

    key: str  # step key, e.g. "02-align"
    stage: str  # "align" or "finetune"
    strategy: str  # parallel strategy actually used (one worker: "none")
    workers: int
    optimizer_steps: int
    samples: int  # samples trained on (steps × global batch)
    tokens: int  # LLM tokens trained on (non-padding, image tokens included)
    images: int  # images seen
    tower_images: int  # images run through the tower (fewer with the feature cache)
    flops: float
    flops_parts: dict[str, float] = field(default_factory=dict)  # llm, projector, tower
    memory_bytes: float = 0.0  # per worker
    memory_parts: dict[str, float] = field(default_factory=dict)
    gpu_hours: float = 0.0
    length_source: str = ""  # "tokenized cache", "all N records", "sample of N records"


@dataclass
class RunCost:
    """A run's stages and totals."""

    run: str
    model: str
    params: ParamCounts
    stages: list[StageCost]
    mfu: float
    mfu_source: str
    peak_flops: float

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.stages)

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.stages)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def peak_memory_bytes(self) -> float:
        return max((s.memory_bytes for s in self.stages), default=0.0)


# ---------------------------------------------------------------------------------------
# parameters (meta-device models: exact counts, no memory)
# ---------------------------------------------------------------------------------------
def _llm_config(spec: ModelSpec):
    from transformers import AutoConfig

    from .models.families import get_family

    if spec.llm_config:
        kw = dict(spec.llm_config)
        return AutoConfig.for_model(kw.pop("model_type", get_family(spec.family).model_type), **kw)
    if spec.llm:
        try:
            return AutoConfig.from_pretrained(spec.llm, trust_remote_code=spec.trust_remote_code)
        except OSError as e:
            raise ConfigError(f"model.llm {spec.llm!r}: no config available offline to count "
                              f"its parameters; download it first ({e})") from e
    raise ConfigError(f"model {spec.name!r}: set model.llm or model.llm_config")


def _vision_config(spec: ModelSpec):
    from transformers import CLIPVisionConfig

    if spec.vision_config:
        return CLIPVisionConfig(**spec.vision_config)
    if spec.vision:
        try:
            return CLIPVisionConfig.from_pretrained(spec.vision)
        except OSError as e:
            raise ConfigError(f"model.vision {spec.vision!r}: no config available offline to "
                              f"count its parameters; download it first ({e})") from e
    raise ConfigError(f"model {spec.name!r}: set model.vision or model.vision_config")


def _count(module) -> int:
    seen, n = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def parameter_counts(spec: ModelSpec, vocab_size: int | None = None) -> ParamCounts:
    """Exact parameter counts of the MLLM `build_mllm(spec)` makes (built on the meta
    device); `vocab_size`: the tokenizer's length when it is larger than the config's."""
    import torch
    from transformers import AutoModelForCausalLM, CLIPVisionModel

    lcfg, vcfg = _llm_config(spec), _vision_config(spec)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(lcfg)
        if vocab_size and vocab_size > llm.get_input_embeddings().weight.shape[0]:
            llm.resize_token_embeddings(vocab_size)
        tower = CLIPVisionModel(vcfg)
    from torch import nn

    layers = next(m for m in llm.modules() if isinstance(m, nn.ModuleList) and len(m))
    h, hv = lcfg.hidden_size, vcfg.hidden_size
    return ParamCounts(llm=_count(llm), tower=_count(tower), projector=hv * h + h + h * h + h,
                       hidden=h, layers=len(layers), vocab=llm.get_input_embeddings().weight.shape[0],
                       layer_params=_count(layers[0]), vision_hidden=hv,
                       patches=(vcfg.image_size // vcfg.patch_size) ** 2)


# ---------------------------------------------------------------------------------------
# data: records, images, token lengths
# ---------------------------------------------------------------------------------------
@dataclass
class DataStats:
    records: int
    mean_tokens: float
    max_tokens: int
    image_fraction: float
    images: set = field(default_factory=set)  # distinct image paths
    source: str = ""


def data_stats(sources: list[DataSource], tok, template, *, n_image_tokens: int, max_len: int,
               seed: int, cache_dir: Path, sample_records: int = 2000) -> DataStats:
    """Record count, mean/max token length and images of a stage's sources."""
    from .data.instruct import read_instructions
    from .data.tokenized import TokenizedDataset, dataset_key
    from .models.tokenizers import encode_conversation

    recs = [r for s in sources for r in read_instructions(s, seed=seed)]
    images = {r["image"] for r in recs if r.get("image")}
    n = len(recs)
    if n == 0:
        raise ConfigError(f"{', '.join(s.path for s in sources)}: no training records")
    with_image = sum(1 for r in recs if r.get("image"))
    cached = Path(cache_dir) / f"tok-{dataset_key(sources, tok, template, n_image_tokens, max_len, seed)}.parquet"
    if cached.exists():
        import pyarrow.compute as pc

        ds = TokenizedDataset(cached)
        lens = pc.list_value_length(ds.table.column("input_ids"))
        return DataStats(len(ds), ds.num_tokens() / max(1, len(ds)), int(pc.max(lens).as_py()),
                         with_image / n, images, "tokenized cache")
    idx = range(n) if n <= sample_records else \
        sorted({int(i * n / sample_records) for i in range(sample_records)})
    lengths = [len(encode_conversation(tok, template, recs[i]["conversations"],
                                       n_image_tokens=n_image_tokens, max_len=max_len)[0])
               for i in idx]
    src = f"all {n} records" if len(lengths) == n else f"sample of {len(lengths)} of {n} records"
    return DataStats(n, sum(lengths) / len(lengths), max(lengths), with_image / n, images, src)


# ---------------------------------------------------------------------------------------
# memory and MFU
# ---------------------------------------------------------------------------------------
def worker_memory(p: ParamCounts, stage: StageConfig, strategy: str, workers: int, *,
                  weight_bytes: int, bf16: bool, checkpointing: bool, seq_len: int
                  ) -> dict[str, float]:
    """Bytes per worker by part (see the module docstring for the rules)."""
    trained = p.projector + (p.llm if stage.train == "projector+llm" else 0)
    model = p.llm + p.projector
    shard = workers if strategy in ("full_shard", "shard_grad_op") else 1
    compute_bytes = 2 if bf16 else 4
    out = {"weights": model * weight_bytes / shard, "tower": p.tower * weight_bytes,
           "gradients": 4 * trained / shard, "optimizer": 8 * trained / shard}
    if strategy == "ddp":
        out["gradients"] *= 2  # reducer buckets beside .grad
    if strategy == "full_shard":
        out["gathered"] = 2 * p.layer_params * compute_bytes  # this layer + the prefetched one
    elif strategy == "shard_grad_op":
        out["gathered"] = model * compute_bytes  # kept gathered from forward to backward
    s, b, h = seq_len, stage.per_device_batch_size, p.hidden
    per_layer = 34 * s * b * h * compute_bytes / 2
    out["activations"] = (p.layers * 2 * s * b * h * compute_bytes / 2 + per_layer
                          if checkpointing else p.layers * per_layer)
    out["logits"] = 2 * s * b * p.vocab * compute_bytes
    return out


def measured_mfu(path: Path = BENCH_JSON) -> tuple[float, str] | None:
    """The fine-tune MFU of a GPU run of benchmarks/gpu_check.py, if recorded: of its
    largest model (`params_llm`), with the default attention and no torch.compile (the
    eager-attention and compiled rows are comparisons, not the run's settings); the mean
    where several rows qualify. MFU grows with model size, so the largest measured model
    is the closest (and still a pessimistic) stand-in for the paper's 1B–7B runs."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if "cuda" not in str(data.get("device", "")) and "H100" not in str(data.get("device", "")):
        return None
    rows = (data.get("sections", {}).get("train", {}).get("result") or {}).get("rows", [])
    rows = [r for r in rows if r.get("stage") == "finetune" and r.get("mfu")
            and r.get("attn") != "eager" and not r.get("compile")]
    if not rows:
        return None
    largest = max(r.get("params_llm", 0) for r in rows)
    vals = [r["mfu"] for r in rows if r.get("params_llm", 0) == largest]
    name = rows[[r.get("params_llm", 0) for r in rows].index(largest)].get("model", "?")
    return sum(vals) / len(vals), (f"measured ({path.name}, {name} fine-tune, "
                                   f"{data.get('device')}, {data.get('date')})")


# ---------------------------------------------------------------------------------------
# the estimate
# ---------------------------------------------------------------------------------------
def estimate_run_cost(cfg: RunConfig, *, mfu: float | None = None, peak_flops: float = 989e12,
                      sample_records: int = 2000, bench_json: Path = BENCH_JSON) -> RunCost:
    """Tokens, FLOPs, memory per worker and GPU-hours of every stage of `cfg`."""
    from .models.templates import get_template
    from .models.tokenizers import ensure_special_tokens, load_tokenizer
    from .train.schedule import num_optimizer_steps
    from .train.task import plan_steps, stage_path

    spec = cfg.model
    if spec.dtype not in _DTYPE_BYTES:
        raise ConfigError(f"model.dtype {spec.dtype!r} must be one of {sorted(_DTYPE_BYTES)}")
    src = spec.tokenizer or spec.llm
    if not src:
        raise ConfigError(f"model {spec.name!r}: set model.tokenizer (a tokenizer dir)")
    tok = ensure_special_tokens(load_tokenizer(src, spec.trust_remote_code))
    p = parameter_counts(spec, vocab_size=len(tok))
    if mfu is None:
        got = measured_mfu(bench_json)
        mfu, mfu_source = got if got else (DEFAULT_MFU, "assumed: no GPU measurement in benchmarks/")
    else:
        mfu_source = "given"
    if not 0 < mfu <= 1:
        raise ConfigError(f"MFU {mfu} must be in (0, 1]")
    t = cfg.trainer
    gpu = t.use_gpu
    bf16 = t.mixed_precision == "bf16" or (t.mixed_precision == "auto" and gpu)
    ckpt = t.activation_checkpointing == "on" or (t.activation_checkpointing == "auto" and gpu)
    workers = max(1, t.num_workers)
    seen_images: set = set()
    stages = []
    for step in plan_steps(cfg):
        stage = stage_path(step).config(cfg)
        template = get_template("plain") if step.stage == "align" else get_template(spec.template)
        ds = data_stats(step.sources, tok, template, n_image_tokens=p.patches,
                        max_len=spec.max_seq_len, seed=cfg.seed,
                        cache_dir=Path(cfg.output_dir) / "cache", sample_records=sample_records)
        n_steps = num_optimizer_steps(stage, ds.records)
        samples = n_steps * stage.global_batch_size
        tokens = round(samples * ds.mean_tokens)
        images = round(samples * ds.image_fraction)
        if t.feature_cache:
            tower_images = len(ds.images - seen_images)
            seen_images |= ds.images
        else:
            tower_images = images
        llm_rate = 6 if stage.train == "projector+llm" else 4
        parts = {"llm": llm_rate * p.llm * tokens,
                 "projector": 6 * p.projector * images * p.patches,
                 "tower": 2 * p.tower * (p.patches + 1) * tower_images}
        flops = float(sum(parts.values()))
        strategy = stage.parallel if workers > 1 else "none"
        mem = worker_memory(p, stage, strategy, workers, weight_bytes=_DTYPE_BYTES[spec.dtype],
                            bf16=bf16, checkpointing=ckpt, seq_len=min(ds.max_tokens, spec.max_seq_len))
        stages.append(StageCost(step.key, step.stage, strategy, workers, n_steps, samples, tokens,
                                images, tower_images, flops, parts, sum(mem.values()), mem,
                                flops / (mfu * peak_flops) / 3600.0, ds.source))
    return RunCost(cfg.name, spec.name, p, stages, mfu, mfu_source, peak_flops)


def _si(x: float) -> str:
    if x == 0:
        return "0"
    units = ["", "K", "M", "G", "T", "P", "E", "Z"]
    k = min(len(units) - 1, int(math.log10(abs(x)) // 3))
    return f"{x / 10 ** (3 * k):.3g}{units[k]}"


def _bytes(x: float) -> str:
    for unit, k in (("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if x >= 1024 ** k:
            return f"{x / 1024 ** k:.3g} {unit}"
    return f"{x:.0f} B"


def format_cost_table(costs: list[RunCost]) -> str:
    """A plain-text table: one row per stage, a total per run, a grand total."""
    head = ["run", "step", "strategy", "steps", "samples", "tokens", "FLOPs", "mem/worker",
            "GPU-h"]
    rows = []
    for c in costs:
        for s in c.stages:
            rows.append([c.run, s.key, f"{s.strategy}×{s.workers}", str(s.optimizer_steps),
                         _si(s.samples), _si(s.tokens), _si(s.flops),
                         _bytes(s.memory_bytes), f"{s.gpu_hours:.3g}"])
        rows.append([c.run, "total", "", "", "", _si(c.tokens), _si(c.flops),
                     _bytes(c.peak_memory_bytes), f"{c.gpu_hours:.3g}"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    line = lambda r: "  ".join(v.ljust(w) if i < 3 else v.rjust(w)  # noqa: E731
                               for i, (v, w) in enumerate(zip(r, widths)))
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if costs:
        total_h = sum(c.gpu_hours for c in costs)
        total_f = sum(c.flops for c in costs)
        c0 = costs[0]
        out.append(f"{len(costs)} run(s): {_si(total_f)} FLOPs, {total_h:.3g} GPU-hours at MFU "
                   f"{c0.mfu * 100:.0f} % ({c0.mfu_source}) of {c0.peak_flops / 1e12:.0f} "
                   "TFLOP/s (H100 SXM bf16 dense)")
    return "\n".join(out)


def main(argv=None) -> int:
    """`python -m mllmcl_ray.cost RUN.yaml [...]`: print the cost table of run configs."""
    import argparse

    from .config import RunConfig, from_dict, load_yaml, parse_override, set_dotted

    ap = argparse.ArgumentParser(prog="python -m mllmcl_ray.cost",
                                 description="Tokens, FLOPs, memory per worker and GPU-hours "
                                             "of run configs (RunConfig YAML), before running.")
    ap.add_argument("configs", nargs="+", help="RunConfig YAML files")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (dotted path), e.g. trainer.num_workers=8")
    ap.add_argument("--mfu", type=float, default=None,
                    help="MFU in (0, 1] (default: measured in benchmarks/gpu_check.json, else 0.35)")
    ap.add_argument("--peak-flops", type=float, default=989e12,
                    help="peak FLOP/s of one GPU (default H100 SXM dense bf16)")
    args = ap.parse_args(argv)
    costs = []
    for path in args.configs:
        data = load_yaml(path)
        for o in args.set:
            k, v = parse_override(o)
            set_dotted(data, k, v)
        costs.append(estimate_run_cost(from_dict(RunConfig, data), mfu=args.mfu,
                                       peak_flops=args.peak_flops))
    print(format_cost_table(costs))
    return 0


__all__ = ["DEFAULT_MFU", "DataStats", "ParamCounts", "RunCost", "StageCost", "data_stats",
           "estimate_run_cost", "format_cost_table", "measured_mfu", "parameter_counts",
           "worker_memory"]


if __name__ == "__main__":
    raise SystemExit(main())
