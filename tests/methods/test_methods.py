"""Continual-learning methods: each method's defining property on tiny models, then one
battery that runs every registered method through a 2-task continual run and reloads its
final checkpoint."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from mllmcl_ray.config import (
    ConfigError,
    DataSource,
    MethodConfig,
    ModelSpec,
    RunConfig,
    StageConfig,
    StagesConfig,
    TaskSpec,
    TrainerConfig,
)
from mllmcl_ray.data.collate import Collator
from mllmcl_ray.data.tokenized import build_tokenized
from mllmcl_ray.methods import METHODS, ContinualMethod, TaskContext, build_methods
from mllmcl_ray.methods._util import training_module
from mllmcl_ray.methods.ewc import EWC, EWCParams, estimate_fisher, ewc_penalty
from mllmcl_ray.methods.lora import LoRA, LoRAParams, lora_modules
from mllmcl_ray.methods.lwf import LwF, LwFParams, distill_loss, record_teacher
from mllmcl_ray.methods.moelora import (
    MoELoRAParams,
    is_moelora_checkpoint,
    load_moelora_checkpoint,
    moelora_modules,
    wrap_moelora,
)
from mllmcl_ray.methods.rehearsal import Rehearsal, RehearsalParams
from mllmcl_ray.methods.soft_targets import soft_target_loss
from mllmcl_ray.models.build import build_mllm, unwrap
from mllmcl_ray.models.tokenizers import train_bpe_tokenizer

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


# ---------------------------------------------------------------------------------------
# a tiny world: tokenizer, model spec, two VL tasks and captions
# ---------------------------------------------------------------------------------------
def _records(root, task: str, n: int, question: str) -> str:
    out = []
    for i in range(n):
        c = list(COLOURS)[i % 3]
        rel = f"images/{c}.png"
        out.append({"id": f"{task}{i}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": c}]})
    path = root / f"{task}.json"
    path.write_text(json.dumps(out))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    (root / "images").mkdir()
    for c, rgb in COLOURS.items():
        Image.new("RGB", (16, 16), rgb).save(root / "images" / f"{c}.png")
    tok = train_bpe_tokenizer(["What colour is the image? red green blue Name the colour. "
                               "A picture."] * 20, vocab_size=300)
    tok.save_pretrained(str(root / "tok"))
    spec = ModelSpec(name="tiny", tokenizer=str(root / "tok"), template="micro", max_seq_len=64,
                     llm_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, vocab_size=len(tok),
                                     max_position_embeddings=128),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=16, patch_size=8))
    data = {"caption": _records(root, "caption", 16, "Describe."),
            "colour": _records(root, "colour", 32, "What colour is the image?"),
            "name": _records(root, "name", 32, "Name the colour.")}
    return {"root": root, "tok": tok, "spec": spec, "data": data}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def tiny_mllm(world, seed: int = 0):
    torch.manual_seed(seed)
    return build_mllm(world["spec"], tokenizer=world["tok"])


def tiny_llama(world):
    """A tiny Llama LLaVA: its attention has q_proj/k_proj/v_proj, like CLIP's."""
    tok = world["tok"]
    spec = ModelSpec(name="tiny-llama", family="llama", template="micro", max_seq_len=64,
                     llm_config=dict(model_type="llama", hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=2, vocab_size=len(tok),
                                     max_position_embeddings=128),
                     vision_config=world["spec"].vision_config)
    torch.manual_seed(0)
    return build_mllm(spec, tokenizer=tok)


def ids_batch(world, n: int = 2, length: int = 7):
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, len(world["tok"]) - 1, (n, length), generator=g)


def randomise_adapters(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# ---------------------------------------------------------------------------------------
# Soft Targets
# ---------------------------------------------------------------------------------------
def test_soft_targets_closed_form():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 0.0, 1.0]])
    targets = torch.tensor([0, 3])
    # log-softmax rows: [-0.440190, -1.440190, -2.440190, -3.440190]
    #                   [-1.448154, -1.448154, -1.948154, -0.948154]
    # α = 0.1, N = 4: target 0.9, each other token 0.1/3
    # token 1: 0.9·0.440190 + (0.1/3)·(1.440190 + 2.440190 + 3.440190) = 0.640190
    # token 2: 0.9·0.948154 + (0.1/3)·(1.448154 + 1.448154 + 1.948154) = 1.014821
    expected = (0.640190 + 1.014821) / 2  # 0.827505
    loss = soft_target_loss(logits, targets, 0.1)
    assert float(loss) == pytest.approx(expected, abs=2e-6)
    # against the smoothed distribution written out
    q = torch.full((2, 4), 0.1 / 3)
    q[0, 0] = q[1, 3] = 0.9
    by_hand = -(q * F.log_softmax(logits, -1)).sum(-1).mean()
    assert float(loss) == pytest.approx(float(by_hand), abs=1e-6)
    # α = 0 is plain cross-entropy; torch's label_smoothing (target 1 − α + α/N) is not this
    assert float(soft_target_loss(logits, targets, 0.0)) == pytest.approx(
        float(F.cross_entropy(logits, targets)), abs=1e-6)
    torch_ls = float(F.cross_entropy(logits, targets, label_smoothing=0.1))  # 0.794172
    assert abs(torch_ls - expected) > 0.03
    with pytest.raises(ConfigError):
        build_methods(MethodConfig("soft_targets", {"soft_targets": {"alpha": 1.5}}))


def test_soft_targets_stable_for_large_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0]])
    loss = soft_target_loss(logits, torch.tensor([1]), 0.01)
    assert math.isfinite(float(loss))


# ---------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------
def test_lora_merge_equals_wrapped_and_changes_weights(world):
    mllm = tiny_mllm(world)
    before = {k: v.clone() for k, v in mllm.model.state_dict().items()}
    wrapped = LoRA(LoRAParams(rank=4, alpha=8, dropout=0.0)).wrap(mllm.model)
    randomise_adapters(wrapped)
    wrapped.eval()
    ids = ids_batch(world)
    with torch.no_grad():
        out_wrapped = wrapped(input_ids=ids).logits
        merged = wrapped.merge_and_unload()
        out_merged = merged(input_ids=ids).logits
    assert type(merged).__name__ == "LlavaForConditionalGeneration"
    assert torch.allclose(out_wrapped, out_merged, atol=1e-5)
    after = merged.state_dict()
    assert set(after) == set(before)  # plain LLaVA names again
    key = "model.language_model.layers.0.attention.query_key_value.weight"
    assert not torch.equal(after[key], before[key])
    vision = [k for k in after if k.startswith("model.vision_tower.")]
    assert all(torch.equal(after[k], before[k]) for k in vision)


def test_lora_scaling_rank_fraction_and_targets(world):
    def first_layer(params):
        w = LoRA(params).wrap(tiny_mllm(world).model)
        return w, lora_modules(w)[0]

    _, layer = first_layer(LoRAParams(rank=16, alpha=8, use_rslora=True))
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(16))
    _, layer = first_layer(LoRAParams(rank=16, alpha=8, use_rslora=False))
    assert layer.scaling["default"] == pytest.approx(8 / 16)
    # fractions of the hidden size (32): Srivastava's 1/2 and 1/4 "full rank"
    _, layer = first_layer(LoRAParams(rank=0.5))
    assert layer.r["default"] == 16 and layer.lora_A["default"].out_features == 16
    _, layer = first_layer(LoRAParams(rank=0.25))
    assert layer.r["default"] == 8
    with pytest.raises(ConfigError):
        LoRAParams(rank=2.5)
    # targets: only the LLM, never CLIP (Llama and CLIP both name q_proj/k_proj/v_proj)
    for target, expect in (("attention_qkv", {"q_proj", "k_proj", "v_proj"}),
                           ("all_linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                           "up_proj", "down_proj"})):
        w = LoRA(LoRAParams(target=target, rank=4)).wrap(tiny_llama(world).model)
        names = [n for n, m in unwrap(w).named_modules() if m in set(lora_modules(w))]
        assert names and all(n.startswith("model.language_model.") for n in names)
        assert {n.rsplit(".", 1)[1] for n in names} == expect
        assert not any("lora_" in n for n, _ in unwrap(w).model.vision_tower.named_parameters())
        trainable = {n.split(".")[1] for n, p in unwrap(w).named_parameters() if p.requires_grad}
        assert trainable == {"language_model", "multi_modal_projector"}
    w = LoRA(LoRAParams(rank=4, train_projector=False)).wrap(tiny_mllm(world).model)
    assert not any(p.requires_grad for p in unwrap(w).model.multi_modal_projector.parameters())


# ---------------------------------------------------------------------------------------
# MoELoRA
# ---------------------------------------------------------------------------------------
def test_moelora_one_expert_is_lora(world):
    base = tiny_mllm(world)
    lora = LoRA(LoRAParams(rank=8, alpha=16, dropout=0.0, use_rslora=False)).wrap(
        copy.deepcopy(base.model))
    moe = wrap_moelora(copy.deepcopy(base.model),
                       MoELoRAParams(num_experts=1, rank=8, alpha=16, dropout=0.0))
    randomise_adapters(lora)
    adapter = {k: v for k, v in lora.state_dict().items() if "lora_" in k}
    missing, unexpected = moe.load_state_dict(adapter, strict=False)
    assert not unexpected and all("lora_gate" in k for k in missing if "lora_" in k)
    lora.eval(), moe.eval()
    ids = ids_batch(world)
    with torch.no_grad():
        assert torch.allclose(lora(input_ids=ids).logits, moe(input_ids=ids).logits, atol=1e-6)


def test_moelora_gate_and_parameter_count(world):
    def count(model, gate: bool):
        return sum(p.numel() for n, p in model.named_parameters()
                   if p.requires_grad and "lora_" in n and (("lora_gate" in n) == gate))

    lora = LoRA(LoRAParams(rank=8, alpha=16)).wrap(tiny_mllm(world).model)
    for experts in (1, 2, 4, 8):
        moe = wrap_moelora(tiny_mllm(world).model, MoELoRAParams(num_experts=experts, rank=8))
        assert count(moe, gate=False) == count(lora, gate=False)
        layers = moelora_modules(moe)
        assert count(moe, gate=True) == sum(m.in_features * experts for m in layers)
    randomise_adapters(moe)
    g = layers[0].gate_weights(torch.randn(3, 5, 32))
    assert g.shape == (3, 5, 8) and torch.allclose(g.sum(-1), torch.ones(3, 5), atol=1e-6)
    assert (g > 0).all()
    # each expert counts: zeroing all experts but one changes the output
    moe.eval()
    ids = ids_batch(world)
    with torch.no_grad():
        full = moe(input_ids=ids).logits
        for m in layers:
            m.lora_B["default"].weight[:, 1:] = 0
        assert not torch.allclose(full, moe(input_ids=ids).logits)


def test_moelora_rank_not_divisible(world):
    with pytest.raises(ConfigError, match="divisible"):
        MoELoRAParams(num_experts=4, rank=6)
    with pytest.raises(ConfigError, match="divisible"):
        build_methods(MethodConfig("moelora", {"moelora": {"num_experts": 3, "rank": 128}}))
    with pytest.raises(ConfigError, match="divisible"):  # 0.5 × 32 = 16, not a multiple of 3
        wrap_moelora(tiny_mllm(world).model, MoELoRAParams(num_experts=3, rank=0.5))


# ---------------------------------------------------------------------------------------
# EWC and LwF
# ---------------------------------------------------------------------------------------
def test_ewc_penalty_zero_at_anchor_and_grows():
    torch.manual_seed(0)
    anchor = torch.randn(20)
    fisher = torch.rand(20)
    direction = torch.randn(20)
    ewc = EWC(EWCParams(lam=0.1))
    ewc.add_task("w", fisher, anchor)
    values = []
    for d in (0.0, 0.5, 1.0, 2.0):
        p = anchor + d * direction
        values.append(float(ewc_penalty([(p, ewc.fisher["w"], ewc.anchor["w"])], 0.1, ewc.const)))
    assert values[0] == 0.0
    assert values[1] < values[2] < values[3]
    assert values[2] == pytest.approx(0.05 * float((fisher * direction ** 2).sum()), rel=1e-5)


def test_ewc_accumulates_tasks_exactly():
    torch.manual_seed(1)
    ewc = EWC(EWCParams(lam=0.1))
    tasks = [(torch.rand(10), torch.randn(10)) for _ in range(3)]
    for f, theta in tasks:
        ewc.add_task("w", f, theta)
    theta = torch.randn(10)
    explicit = sum(0.05 * float((f * (theta - t) ** 2).sum()) for f, t in tasks)
    folded = float(ewc_penalty([(theta, ewc.fisher["w"], ewc.anchor["w"])], 0.1, ewc.const))
    assert folded == pytest.approx(explicit, rel=1e-5)


def test_ewc_fisher_nonnegative_and_state_roundtrip(world, tmp_path):
    mllm = tiny_mllm(world)
    data = build_tokenized([DataSource(world["data"]["colour"])], mllm.tokenizer, mllm.template,
                           n_image_tokens=mllm.n_image_tokens, max_len=64, seed=0,
                           cache_dir=tmp_path / "cache")
    collate = Collator(mllm.tokenizer.pad_token_id, mllm.image_processor)
    fisher = estimate_fisher(mllm.model, data, collate, samples=4, seed=0, key="colour")
    assert set(fisher) == {n for n, p in mllm.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("model.vision_tower.") for n in fisher)
    assert all((f >= 0).all() for f in fisher.values())
    assert sum(float(f.sum()) for f in fisher.values()) > 0
    ewc = EWC()
    for n, f in fisher.items():
        ewc.add_task(n, f, dict(mllm.model.named_parameters())[n].detach())
    ewc.save_state(tmp_path)
    back = EWC()
    back.load_state(tmp_path)
    assert set(back.fisher) == set(fisher)
    assert all(torch.equal(back.anchor[n], ewc.anchor[n]) for n in fisher)


def test_lwf_loss_zero_when_student_is_teacher():
    torch.manual_seed(0)
    logits = torch.randn(5, 11) * 3
    for top_k in (0, 3):
        logp, index = record_teacher(logits, 2.0, top_k)
        assert float(distill_loss(logits, logp, index, 2.0)) == pytest.approx(0.0, abs=1e-6)
        assert float(distill_loss(logits + torch.randn(5, 11), logp, index, 2.0)) > 1e-3
    # full distributions: T² · KL at T, by hand
    student = torch.randn(5, 11)
    p = F.softmax(logits / 2, -1)
    kl = (p * (F.log_softmax(logits / 2, -1) - F.log_softmax(student / 2, -1))).sum(-1).mean()
    logp, _ = record_teacher(logits, 2.0)
    assert float(distill_loss(student, logp, None, 2.0)) == pytest.approx(4 * float(kl), rel=1e-5)


def test_lwf_penalty_zero_before_training_moves(world, tmp_path):
    mllm = tiny_mllm(world)
    data = build_tokenized([DataSource(world["data"]["colour"])], mllm.tokenizer, mllm.template,
                           n_image_tokens=mllm.n_image_tokens, max_len=64, seed=0,
                           cache_dir=tmp_path / "cache")
    ctx = TaskContext(task_index=3, task_name="name", stage="finetune", previous_tasks=["colour"],
                      previous_data={"colour": data},
                      collate=Collator(mllm.tokenizer.pad_token_id, mllm.image_processor, False))
    lwf = LwF(LwFParams(samples_per_task=4, top_k=5))
    module = training_module(mllm.model)
    lwf.before_training(module, ctx)
    assert len(lwf.records) == 4
    module.eval()
    pen = lwf.penalty(module, {"input_ids": torch.zeros(2, 3)}, None, ctx)
    assert float(pen.detach()) == pytest.approx(0.0, abs=1e-6)
    pen.backward()  # differentiable through the replayed forward


# ---------------------------------------------------------------------------------------
# Rehearsal
# ---------------------------------------------------------------------------------------
class _Ids:
    def __init__(self, task: str, n: int):
        self.task, self.n = task, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"id": f"{self.task}-{i}"}


def _run_rehearsal(seed: int, fraction: float = 0.01):
    reh = Rehearsal(RehearsalParams(fraction=fraction))
    caps, a, b = _Ids("cap", 500), _Ids("a", 130), _Ids("b", 250)
    align = TaskContext(2, "a", "align", seed=seed)
    assert reh.train_data([caps], align) == [caps]
    reh.finish_task(None, align)
    assert reh.buffer == {}  # never the alignment captions (nor task 1, which has no data)
    ctx_a = TaskContext(2, "a", "finetune", seed=seed)
    assert reh.train_data([a], ctx_a) == [a]
    reh.finish_task(None, ctx_a)
    ctx_b = TaskContext(3, "b", "finetune", seed=seed, previous_tasks=["a"], previous_data={"a": a})
    mixed = reh.train_data([b], ctx_b)
    reh.finish_task(None, ctx_b)
    return reh, mixed


def test_rehearsal_buffer(tmp_path):
    reh, mixed = _run_rehearsal(seed=0, fraction=0.01)
    assert {k: len(v["indices"]) for k, v in reh.buffer.items()} == {"a": 1, "b": 2}  # 1.3, 2.5
    reh, mixed = _run_rehearsal(seed=0, fraction=0.1)
    assert {k: len(v["indices"]) for k, v in reh.buffer.items()} == {"a": 13, "b": 25}
    assert len(mixed) == 2 and len(mixed[1]) == 13
    assert [s["id"] for s in mixed[1]] == reh.buffer["a"]["ids"]
    assert all(i.startswith("a-") for i in reh.buffer["a"]["ids"])
    assert len(set(reh.buffer["a"]["ids"])) == 13
    same, _ = _run_rehearsal(seed=0, fraction=0.1)
    other, _ = _run_rehearsal(seed=1, fraction=0.1)
    assert same.buffer == reh.buffer and other.buffer != reh.buffer
    reh.save_state(tmp_path)
    back = Rehearsal(RehearsalParams(fraction=0.1))
    back.load_state(tmp_path)
    assert back.buffer == reh.buffer
    # rebuilt from the previous task's data by id, even if its order changed
    ctx_c = TaskContext(4, "c", "finetune", previous_tasks=["a", "b"],
                        previous_data={"a": _Ids("a", 130), "b": _Ids("b", 250)})
    out = back.train_data([_Ids("c", 10)], ctx_c)
    assert [len(d) for d in out] == [10, 13, 25]


def test_rehearsal_task2_buffer_includes_the_alignment_captions(tmp_path):
    # Srivastava Table 4: task 2 = CC-LAION-SBU captions + the first instruction set, so
    # its 1 % buffer holds 1 % of each: round(0.01 × 558) = 6 captions, round(1.3) = 1
    reh = Rehearsal(RehearsalParams(fraction=0.01))
    caps, a, b = _Ids("cap", 558), _Ids("a", 130), _Ids("b", 250)
    ctx_a = TaskContext(2, "a", "finetune", align_data=caps)
    assert reh.train_data([a], ctx_a) == [a]  # nothing to rehearse in task 2 itself
    reh.finish_task(None, ctx_a)
    assert {k: len(v["indices"]) for k, v in reh.buffer.items()} == {"a": 1, "a/align": 6}
    assert reh.buffer["a/align"]["size"] == 558
    assert all(i.startswith("cap-") for i in reh.buffer["a/align"]["ids"])
    ctx_b = TaskContext(3, "b", "finetune", previous_tasks=["a"], previous_data={"a": a},
                        previous_align_data={"a": caps})
    mixed = reh.train_data([b], ctx_b)
    assert [len(d) for d in mixed] == [250, 1, 6]
    assert [s["id"] for s in mixed[2]] == reh.buffer["a/align"]["ids"]
    reh.finish_task(None, ctx_b)  # task 3 keeps 1 % of its own data only: round(2.5) = 2
    assert {k: len(v["indices"]) for k, v in reh.buffer.items()} == {"a": 1, "a/align": 6, "b": 2}
    # task 4 rehearses all three parts: 250 + 1 + 6 + 2
    ctx_c = TaskContext(4, "c", "finetune", previous_tasks=["a", "b"],
                        previous_data={"a": a, "b": b}, previous_align_data={"a": caps})
    assert [len(d) for d in reh.train_data([_Ids("c", 10)], ctx_c)] == [10, 1, 6, 2]
    reh.save_state(tmp_path)
    back = Rehearsal(RehearsalParams(fraction=0.01))
    back.load_state(tmp_path)
    assert back.buffer == reh.buffer


# ---------------------------------------------------------------------------------------
# registry and composition
# ---------------------------------------------------------------------------------------
def test_registry_and_composites():
    assert {"naive", "linear", "lora", "soft_targets", "rehearsal", "msgm", "moelora", "ewc",
            "lwf"} <= set(METHODS)
    stack = build_methods(MethodConfig("msgm+rehearsal", {"soft_targets": {"alpha": 0.001},
                                                          "lora": {"rank": 0.25},
                                                          "rehearsal": {"fraction": 0.02}}))
    assert [m.name for m in stack.methods] == ["soft_targets", "lora", "rehearsal"]
    assert stack.methods[0].params.alpha == 0.001 and stack.methods[1].params.rank == 0.25
    with pytest.raises(ConfigError):
        build_methods(MethodConfig("msgm", {"msgm": {"alpha": 0.1}}))
    with pytest.raises(ConfigError):
        build_methods(MethodConfig("lora", {"lora": {"rnak": 4}}))
    with pytest.raises(ConfigError):  # two methods replacing the loss
        build_methods(MethodConfig("msgm+soft_targets"))
    assert not build_methods(MethodConfig("moelora")).plain_checkpoints


# ---------------------------------------------------------------------------------------
# the contract: every hook the trainer calls is declared on the base and forwarded
# ---------------------------------------------------------------------------------------
HOOKS = ("prepare_model", "train_data", "before_training", "token_loss", "penalty",
         "finish_task", "save_state", "load_state", "save_model", "load_model",
         "snapshot_model")


def test_every_hook_is_declared_on_the_base_and_forwarded_by_the_stack():
    from mllmcl_ray.methods.base import MethodStack

    for hook in HOOKS:
        assert hook in vars(ContinualMethod), hook  # a no-op default, never probed
        assert hook in vars(MethodStack), hook  # the stack calls its methods' hook
    assert "expand" in vars(ContinualMethod) and ContinualMethod.components == ()
    ctx = TaskContext(2, "t", "finetune")
    base = ContinualMethod()
    assert base.train_data(["d"], ctx) == ["d"]
    assert base.token_loss(None, None, ctx) is None and base.penalty(None, {}, None, ctx) is None
    assert base.save_model(None, None) is False and base.load_model(None, None) is None
    assert base.snapshot_model("m") == "m"
    with pytest.raises(AttributeError):  # frozen: the trainer builds it complete
        ctx.collate = object()


class _Calls(ContinualMethod):
    """Records the hooks a stack calls, in order."""

    def __init__(self, log):
        super().__init__(None)
        self.log = log
        for hook in HOOKS:
            setattr(self, hook, self._rec(hook, getattr(self, hook)))

    def _rec(self, hook, fn):
        def call(*a, **k):
            self.log.append(hook)
            return fn(*a, **k)
        return call


def test_method_stack_forwards_every_hook_in_order(world, tmp_path):
    from mllmcl_ray.methods.base import MethodStack

    log = []
    a, b = _Calls(log), _Calls(log)
    a.name, b.name = "a", "b"
    stack = MethodStack([a, b])
    ctx = TaskContext(2, "t", "finetune")
    logits, targets = torch.randn(3, 5), torch.tensor([0, 1, 2])
    stack.prepare_model(tiny_mllm(world), ctx)
    stack.train_data([], ctx)
    stack.before_training(None, ctx)
    loss = stack.token_loss(logits, targets, ctx)  # nobody replaces it: cross-entropy
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, targets)))
    assert stack.penalty(None, {}, logits, ctx) is None
    stack.finish_task(None, ctx)
    stack.save_state(tmp_path)
    stack.load_state(tmp_path)
    assert stack.save_model(None, tmp_path) is False and stack.load_model(tmp_path, None) is None
    assert stack.snapshot_model("m") == "m"
    assert log == [h for h in HOOKS for _ in "ab"]


# ---------------------------------------------------------------------------------------
# the battery: every registered method through the same 2-task continual run and checks
# ---------------------------------------------------------------------------------------
class _Probe(ContinualMethod):
    """Runs first in every battery run: records the hooks the trainer calls, the model it
    prepares, and the trained model's logits on a fixed batch at each task's end."""

    seen: dict = {}
    prepared: dict = {}
    calls: list = []

    def prepare_model(self, mllm, ctx):
        _Probe.calls.append((ctx.task_name, ctx.stage, "prepare_model"))
        adapter = {k: v.detach().clone() for k, v in unwrap(mllm.model).state_dict().items()
                   if "lora_" in k}
        _Probe.prepared[ctx.task_name] = (type(mllm.model).__name__, adapter)

    def train_data(self, datasets, ctx):
        _Probe.calls.append((ctx.task_name, ctx.stage, "train_data"))
        self._samples = [datasets[0][i] for i in range(3)]
        return datasets

    def before_training(self, module, ctx):
        _Probe.calls.append((ctx.task_name, ctx.stage, "before_training"))

    def finish_task(self, mllm, ctx):
        _Probe.calls.append((ctx.task_name, ctx.stage, "finish_task"))
        collate = Collator(mllm.tokenizer.pad_token_id, mllm.image_processor)
        batch = collate(self._samples)
        with torch.no_grad():
            logits = training_module(mllm.model)(batch["input_ids"], batch["attention_mask"],
                                                 pixel_values=batch["pixel_values"])
        _Probe.seen[ctx.task_name] = (self._samples, logits)


BATTERY_PARAMS = {
    "lora": {"rank": 0.5},
    "moelora": {"rank": 8, "num_experts": 2, "alpha": 16},
    "ewc": {"fisher_samples": 6},
    "lwf": {"samples_per_task": 4},
    "rehearsal": {"fraction": 0.1},
}
BATTERY = sorted(METHODS) + ["msgm+rehearsal"]
_RUNS: dict = {}


@pytest.fixture(scope="module")
def probe():
    METHODS["test_probe"] = _Probe
    _Probe.name = "test_probe"
    yield _Probe
    METHODS.pop("test_probe", None)


def battery_config(method, world):
    names = method.split("+")
    expanded = set(names) | {c for n in names for c in METHODS[n].components}
    params = {k: v for k, v in BATTERY_PARAMS.items() if k in expanded}
    stage = StageConfig(lr=3e-3, global_batch_size=8, per_device_batch_size=4, max_steps=4,
                        warmup_ratio=0.0, schedule="constant")
    return RunConfig(
        name=f"battery-{method}", model=world["spec"],
        output_dir=str(world["root"] / "runs"),  # shared: tokenised data and features are cached
        stages=StagesConfig(align=StageConfig(lr=1e-3, global_batch_size=8, per_device_batch_size=8,
                                              max_steps=1, train="projector"), finetune=stage),
        align=[DataSource(world["data"]["caption"])],
        tasks=[TaskSpec("colour", [DataSource(world["data"]["colour"])]),
               TaskSpec("name", [DataSource(world["data"]["name"])])],
        method=MethodConfig("test_probe+" + method, params),
        trainer=TrainerConfig(num_workers=0, log_every=100))


def battery_run(method, world, probe):
    """The battery's run of `method` (cached: the per-method tests below read it too)."""
    from mllmcl_ray.train.continual import ContinualRun

    if method not in _RUNS:
        _Probe.seen, _Probe.prepared, _Probe.calls = {}, {}, []
        cfg = battery_config(method, world)
        outcomes = ContinualRun(cfg, log=lambda s: None).run()
        _RUNS[method] = {"cfg": cfg, "outcomes": outcomes, "seen": dict(_Probe.seen),
                         "prepared": dict(_Probe.prepared), "calls": list(_Probe.calls)}
    return _RUNS[method]


@pytest.mark.parametrize("method", BATTERY)
def test_method_battery(method, world, probe, tmp_path):
    from mllmcl_ray.train.task import load_step_model

    run = battery_run(method, world, probe)
    cfg, outcomes = run["cfg"], run["outcomes"]
    assert [o.step.key for o in outcomes] == ["02-align", "02-colour", "03-name"]
    # the trainer called the hooks of each fine-tuning task in order, none at alignment
    hooks = ["prepare_model", "train_data", "before_training", "finish_task"]
    assert run["calls"] == [(t, "finetune", h) for t in ("colour", "name") for h in hooks]
    # it learns the first task
    first = outcomes[1].summary["losses"]
    assert len(first) == 4 and np.mean(first[-2:]) < np.mean(first[:2]), first
    # the final checkpoint opens the way evaluation opens it, with the trainer's logits
    back = load_step_model(cfg, outcomes[-1].checkpoint, build_methods(cfg.method))
    samples, logits = run["seen"]["name"]
    batch = Collator(back.tokenizer.pad_token_id, back.image_processor)(samples)
    with torch.no_grad():
        again = training_module(back.model)(batch["input_ids"], batch["attention_mask"],
                                            pixel_values=batch["pixel_values"])
    assert torch.allclose(again, logits, atol=1e-4), float((again - logits).abs().max())
    # the method state survives a save/load round trip byte for byte
    state = outcomes[-1].checkpoint + "/method_state"
    methods = build_methods(cfg.method)
    methods.load_state(state)
    methods.save_state(tmp_path)
    saved = sorted(p.relative_to(state).as_posix() for p in Path(state).rglob("*") if p.is_file())
    again_files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                         if p.is_file())
    assert saved == again_files
    for rel in saved:
        assert (tmp_path / rel).read_bytes() == open(f"{state}/{rel}", "rb").read(), rel


def test_battery_rehearsal_keeps_task2_alignment_and_instructions(world, probe):
    run = battery_run("rehearsal", world, probe)
    outcomes = run["outcomes"]
    # task 3 trains on its 32 samples + 10 % of task 2: round(3.2) instructions + round(1.6)
    # alignment captions (task 2 = captions + instructions, Srivastava Table 4)
    assert outcomes[2].summary["samples"] == 32 + 3 + 2
    buffer = json.loads(open(outcomes[-1].checkpoint + "/method_state/rehearsal/buffer.json").read())
    assert {k: len(v["ids"]) for k, v in buffer.items()} == {"colour": 3, "colour/align": 2,
                                                           "name": 3}
    assert all(i.startswith("caption") for i in buffer["colour/align"]["ids"])
    assert buffer["colour/align"]["size"] == 16


def test_battery_ewc_consolidates_both_tasks(world, probe):
    run = battery_run("ewc", world, probe)
    state = run["outcomes"][-1].checkpoint + "/method_state"
    assert json.loads(open(state + "/ewc/ewc.json").read())["tasks"] == ["colour", "name"]


def test_battery_moelora_continues_its_experts(world, probe):
    run = battery_run("moelora", world, probe)
    outcomes = run["outcomes"]
    model_dir = outcomes[-1].checkpoint + "/model"
    assert is_moelora_checkpoint(model_dir)
    assert len(moelora_modules(load_moelora_checkpoint(model_dir).model)) == 8
    # task 3 continued task 2's experts: its model came in wrapped, with task 2's adapter
    kind, adapter = run["prepared"]["name"]
    saved = load_file(outcomes[1].checkpoint + "/model/moelora/adapter.safetensors")
    assert kind == "PeftModel" and set(adapter) == set(saved)
    assert all(torch.equal(adapter[k], saved[k]) for k in saved)
    assert run["prepared"]["colour"][1] == {}  # after alignment: a plain model


@pytest.mark.parametrize("method", BATTERY)
def test_battery_checkpoint_format_is_the_declared_one(method, world, probe):
    run = battery_run(method, world, probe)
    model_dir = run["outcomes"][-1].checkpoint + "/model"
    # plain_checkpoints: a plain LLaVA dir; otherwise the method's own format (MoELoRA)
    assert is_moelora_checkpoint(model_dir) == (not build_methods(run["cfg"].method).plain_checkpoints)
    assert (Path(model_dir) / "config.json").exists()
