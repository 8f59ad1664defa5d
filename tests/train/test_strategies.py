"""Parallel strategies without Ray: the global-batch rule, FSDP2/DDP in spawned gloo
processes against the single-process loop, gather_into's plain copy, MFU arithmetic."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from mllmcl_ray.config import ConfigError, StageConfig
from mllmcl_ray.methods.base import MethodStack, TaskContext
from mllmcl_ray.train.loop import train_stage
from mllmcl_ray.train.mfu import estimate_mfu, flops_per_token
from mllmcl_ray.train.schedule import accumulation_steps
from mllmcl_ray.train.strategies import STRATEGIES, make_strategy
from mllmcl_ray.train.strategies.base import Strategy
from mllmcl_ray.train.strategies.fsdp import _Skeleton

V = 17


# ---------------------------------------------------------------------------------------
# the global-batch rule
# ---------------------------------------------------------------------------------------
class _FakeWorld(Strategy):
    """A strategy that pretends to be rank r of W (no process group): the loop's slicing."""

    def __init__(self, rank: int, world: int):
        super().__init__("fake")
        self._rank, self._world = rank, world

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world

    def all_reduce_mean(self, value):
        return value


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(V, 8)
        self.out = nn.Linear(8, V)

    def forward(self, input_ids, attention_mask):
        return self.out(self.emb(input_ids))


def _samples_seen(world: int, rank: int, stage: StageConfig, n: int = 40):
    seen: list[list[int]] = []  # one list per forward pass (micro-batch)

    def collate(items):
        seen.append([it["id"] for it in items])
        ids = torch.tensor([[it["id"] % V, (it["id"] + 1) % V] for it in items])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    data = [{"id": i} for i in range(n)]
    ctx = TaskContext(task_index=2, task_name="t", stage="finetune")
    res = train_stage(_Tiny(), data, stage, MethodStack([]), _FakeWorld(rank, world), ctx, collate,
                      lr=1e-3, seed=7, progress=False)
    return seen, res


@pytest.mark.parametrize("per_device", [1, 2, 4])
def test_global_batch_rule_same_samples_for_1_and_2_workers(per_device):
    stage = StageConfig(global_batch_size=8, per_device_batch_size=per_device, max_steps=4,
                        warmup_ratio=0.0, schedule="constant")
    single, res1 = _samples_seen(1, 0, stage)
    r0, res_a = _samples_seen(2, 0, stage)
    r1, res_b = _samples_seen(2, 1, stage)
    assert res1.steps == res_a.steps == res_b.steps == 4
    assert res1.samples == res_a.samples == 4 * 8  # samples per optimizer step = global batch
    acc1, acc2 = accumulation_steps(stage, 1), accumulation_steps(stage, 2)
    assert acc1 == 8 // per_device and acc2 == 8 // (2 * per_device)
    assert len(single) == 4 * acc1 and len(r0) == len(r1) == 4 * acc2
    for s in range(4):
        batch = sorted(i for mb in single[s * acc1:(s + 1) * acc1] for i in mb)
        a = [i for mb in r0[s * acc2:(s + 1) * acc2] for i in mb]
        b = [i for mb in r1[s * acc2:(s + 1) * acc2] for i in mb]
        assert len(batch) == 8 and len(a) == len(b) == 4
        assert not set(a) & set(b)  # disjoint slices
        assert sorted(a + b) == batch  # whose union is the single worker's batch


def test_unreachable_global_batch_is_rejected_with_the_numbers():
    stage = StageConfig(global_batch_size=12, per_device_batch_size=4)
    assert accumulation_steps(stage, 1) == 3
    with pytest.raises(ConfigError, match=r"global_batch_size 12 .* 4 × 2 worker\(s\) = 8"):
        accumulation_steps(stage, 2, "finetune")
    with pytest.raises(ConfigError, match="stages.finetune"):
        accumulation_steps(StageConfig(global_batch_size=10, per_device_batch_size=4), 1,
                           "finetune")


def test_strategy_registry_and_auto_settings():
    from mllmcl_ray.config import TrainerConfig

    assert {"none", "single", "ddp", "full_shard", "shard_grad_op"} <= set(STRATEGIES)
    t = TrainerConfig()
    s = make_strategy("full_shard", t, torch.device("cpu"), world_size=2)
    assert s.name == "full_shard" and s.reshard_after_forward
    assert s.mixed_precision == "fp32" and not s.activation_checkpointing  # auto on CPU
    assert not make_strategy("shard_grad_op", t, world_size=2).reshard_after_forward
    assert make_strategy("full_shard", t, world_size=1).name == "none"  # one worker: plain loop
    g = make_strategy("ddp", t, torch.device("cuda", 0), world_size=2)
    assert g.mixed_precision == "bf16" and g.activation_checkpointing  # auto on GPU
    with pytest.raises(ConfigError, match="mixed_precision"):
        make_strategy("ddp", TrainerConfig(mixed_precision="fp8"))
    with pytest.raises(ConfigError, match="unknown"):
        make_strategy("zero9", t, world_size=2)


# ---------------------------------------------------------------------------------------
# gather_into's plain copy: peft wrappers and tied weights survive
# ---------------------------------------------------------------------------------------
def test_skeleton_copies_peft_wrapped_and_tied_models():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2,
                                        vocab_size=50, tie_word_embeddings=True))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    sk = _Skeleton(model)
    assert all(p.device.type == "meta" for p in sk.model.parameters())  # no memory held
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = sk.materialize(state)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, model(input_ids=ids).logits)
    inner = plain.get_base_model()
    assert inner.lm_head.weight is inner.model.embed_tokens.weight  # tie restored
    assert [n for n, p in plain.named_parameters() if p.requires_grad] == \
        [n for n, p in model.named_parameters() if p.requires_grad]
    merged = plain.merge_and_unload()  # what LoRA's finish_task does on rank 0
    assert type(merged).__name__ == "LlamaForCausalLM"


# ---------------------------------------------------------------------------------------
# FSDP2 / DDP in 2 spawned gloo processes vs the single-process loop
# ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RUNS = [  # (label, strategy, method, trainer overrides)
    ("full_shard", "full_shard", "naive", {}),
    ("shard_grad_op-ac", "shard_grad_op", "naive", {"activation_checkpointing": "on"}),
    ("ddp", "ddp", "naive", {}),
    ("full_shard-lora", "full_shard", "lora", {}),
]
LORA = {"lora": {"rank": 4, "dropout": 0.0, "alpha": 8.0}}


def _cfg(root, out, method, **trainer):
    from train_world import tiny_config

    from mllmcl_ray.config import MethodConfig

    cfg = tiny_config(root, out, tasks=("colour",), max_steps=5, **trainer)
    cfg.method = MethodConfig(name=method, params=LORA if method == "lora" else {})
    return cfg


def _probe_batch(root: Path) -> dict:
    from mllmcl_ray.data.images import pixel_values
    from mllmcl_ray.models.build import make_image_processor
    from mllmcl_ray.models.tokenizers import image_token_id, load_tokenizer

    torch.manual_seed(3)
    ids = torch.randint(3, 200, (2, 24))
    ids[:, 2:18] = image_token_id(load_tokenizer(str(root / "tok")))  # 16 image tokens
    pv = pixel_values(make_image_processor(32), [str(root / "images/colour0.png"),
                                                 str(root / "images/colour1.png")])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pv}


def _dist_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    import torch.distributed as dist

    from mllmcl_ray.train.strategies import make_strategy
    from mllmcl_ray.train.task import plan_steps, run_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from train_world import SaveLogits

    torch.save(_probe_batch(Path(root)), Path(out) / f"batch-{rank}.pt")
    for label, parallel, method, trainer in RUNS:
        cfg = _cfg(root, out, method, parallel=parallel, **trainer)
        strategy = make_strategy(parallel, cfg.trainer, world_size=world)
        # the trainer's (sharded) model as it ends the task, before the gather
        probe = SaveLogits(Path(out) / f"batch-{rank}.pt", Path(out) / f"probe-{label}.pt")
        summary = run_step(cfg, plan_steps(cfg)[0], None, Path(out) / label, strategy=strategy,
                           callbacks=[probe], progress=False)
        if rank == 0:
            (Path(out) / f"{label}.json").write_text(json.dumps(summary["losses"]))
    dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_and_ddp_in_two_processes_match_single_process(tmp_path):
    import torch.multiprocessing as mp
    from train_world import make_world
    from transformers import LlavaForConditionalGeneration

    from mllmcl_ray.train.task import plan_steps, run_step

    root = make_world(tmp_path / "world")
    out = tmp_path / "out"
    out.mkdir()
    ref = {}
    for method in ("naive", "lora"):
        cfg = _cfg(root, out, method, parallel="none", num_workers=1)
        ref[method] = run_step(cfg, plan_steps(cfg)[0], None, out / f"single-{method}",
                               progress=False)["losses"]
    mp.spawn(_dist_worker, args=(2, _free_port(), str(root), str(out)), nprocs=2)

    batch = _probe_batch(root)
    for label, parallel, method, _ in RUNS:
        losses = json.loads((out / f"{label}.json").read_text())
        assert len(losses) == 5
        assert losses == pytest.approx(ref[method], abs=2e-4), label
        assert losses[-1] < losses[0], label  # it learns
        # the task checkpoint opens in plain transformers with the trainer's logits
        model = LlavaForConditionalGeneration.from_pretrained(str(out / label / "model"))
        model.eval()
        with torch.no_grad():
            got = model(**batch).logits
        want = torch.load(out / f"probe-{label}.pt")
        if method == "naive":
            assert torch.allclose(got, want, atol=1e-5), (label, (got - want).abs().max())
        else:  # LoRA merged into the weights at the task end: equal up to merge rounding
            assert torch.allclose(got, want, atol=1e-4), (label, (got - want).abs().max())


# ---------------------------------------------------------------------------------------
# MFU arithmetic
# ---------------------------------------------------------------------------------------
def test_estimate_mfu_nanogpt_rule():
    # 6·N·tokens/s / peak: a 1e9-parameter model at 10k tokens/s on 989 TFLOP/s
    assert estimate_mfu(10**9, 1e4, 989e12) == pytest.approx(6e13 / 989e12)
    assert estimate_mfu(10**9, 0.0, 989e12) == 0.0
    # twice the tokens, twice the utilisation; a faster chip, proportionally lower
    assert estimate_mfu(10**8, 2e4, 1e15) == pytest.approx(2 * estimate_mfu(10**8, 1e4, 1e15))
    assert estimate_mfu(10**8, 1e4, 2e15) == pytest.approx(estimate_mfu(10**8, 1e4, 1e15) / 2)
    # the attention term (PaLM / nanoGPT): 12·L·H·T per token on top of 6·N
    assert flops_per_token(100, 2, 8, 16) == 600 + 12 * 2 * 8 * 16
    assert estimate_mfu(100, 1.0, 1.0, n_layers=2, hidden=8, seq_len=16) == 600 + 3072
    with pytest.raises(ValueError):
        estimate_mfu(10, 1.0, 0.0)
    with pytest.raises(ValueError):
        estimate_mfu(0, 1.0, 1.0)


# ---------------------------------------------------------------------------------------
# ParamLayout: how a method (EWC) reaches FSDP2 shards without knowing about DTensors
# ---------------------------------------------------------------------------------------
def _layout_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from mllmcl_ray.methods.ewc import ewc_penalty
    from mllmcl_ray.train.strategies.fsdp import FSDPStrategy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    theta, fisher, anchor = (torch.randn(4, 3, generator=g) for _ in range(3))
    fisher = fisher.abs()
    mesh = init_device_mesh("cpu", (world,))
    p = nn.Parameter(distribute_tensor(theta, mesh, [Shard(0)]))
    layout = FSDPStrategy("full_shard")
    rows = slice(2 * rank, 2 * rank + 2)  # Shard(0) of 4 rows over 2 ranks
    ok = torch.equal(layout.local(p).detach(), theta[rows])
    ok &= torch.equal(layout.shard_like(fisher, p), fisher[rows])
    pen = ewc_penalty([(p, layout.shard_like(fisher, p), layout.shard_like(anchor, p))], 0.1,
                      layout=layout)
    pen.backward()  # differentiable through the local shard
    ok &= p.grad is not None
    total = pen.detach().clone()
    dist.all_reduce(total)  # the ranks' shares add up to the whole penalty
    (Path(out) / f"layout-{rank}.json").write_text(json.dumps(
        {"ok": bool(ok), "total": float(total)}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_param_layout_gives_methods_their_shards(tmp_path):
    import torch.multiprocessing as mp

    from mllmcl_ray.methods.ewc import ewc_penalty
    from mllmcl_ray.models.training import ParamLayout

    mp.spawn(_layout_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    g = torch.Generator().manual_seed(0)
    theta, fisher, anchor = (torch.randn(4, 3, generator=g) for _ in range(3))
    whole = float(ewc_penalty([(theta, fisher.abs(), anchor)], 0.1, layout=ParamLayout()))
    assert whole == pytest.approx(0.05 * float((fisher.abs() * (theta - anchor) ** 2).sum()))
    for rank in (0, 1):
        got = json.loads((tmp_path / f"layout-{rank}.json").read_text())
        assert got["ok"] and got["total"] == pytest.approx(whole, rel=1e-6)
