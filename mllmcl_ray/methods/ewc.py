"""Elastic Weight Consolidation (Kirkpatrick et al.; as CoIN Sec. 5 / Tab. 9 uses it).

At each VL task's end the diagonal Fisher information is estimated on a seeded sample
of that task (default 1000 samples, CoIN): the mean over samples of the squared gradient
of the sample's log-likelihood of its answer tokens (the mean token log-likelihood, the
same scale as the training loss), taken per sample (``fisher_batch_size: 1``; larger
batches square batch-mean gradients: cheaper, smaller). The parameters covered are those
that trained in the task (``requires_grad`` at its end; the vision tower never). While
later tasks train, the penalty

    λ/2 · Σ_t Σ_j F_t,j (θ_j − θ*_t,j)²       (λ = 0.1, CoIN)

is added to the loss, summed over all finished tasks t. It is kept exactly in constant
memory: with A = Σ_t F_t and μ = Σ_t F_t θ*_t / A (the Fisher-weighted anchor) it equals
λ/2 · (Σ_j A_j (θ_j − μ_j)² + c), c a scalar that only shifts the value; one task gives
A = F, μ = θ*, c = 0 (0 at the anchor). A and μ (float32) are the method state
(``method_state/ewc/ewc.safetensors`` + ``ewc.json``) and travel with every checkpoint.

Memory and distribution: A and μ are two float32 copies of the trained parameters,
held on CPU between tasks and on the training device while training. The Fisher is
estimated on rank 0 in `finish_task`, after the strategy has gathered the full
parameters into the model on rank 0: under FSDP the full model is gathered on rank 0 at
task end (into host memory) and, by default, moved to rank 0's training device for the
estimate (``fisher_device: cpu`` keeps it on the host: no accelerator memory, slow).
During training each rank holds A and μ sharded like its parameters and penalises its
local shard, which gives the exact gradient; the logged penalty is then the rank's
share. How a parameter is sharded is the strategy's business: EWC asks the task
context's `layout` (`ParamLayout`; FSDP2's DTensor shards) and never sees a DTensor.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..models.build import unwrap
from ..models.training import ParamLayout, answer_positions, llava_of
from ._util import forward, seeded_sample, training_module
from .base import ContinualMethod, TaskContext, register_method

STATE_FILE = "ewc.safetensors"
META_FILE = "ewc.json"


@dataclass
class EWCParams:
    """Settings of EWC (method.params.ewc)."""

    lam: float = 0.1  # λ: penalty weight, λ/2 Σ F (θ − θ*)²
    fisher_samples: int = 1000  # samples of each finished task for the Fisher (seeded)
    fisher_batch_size: int = 1  # samples per Fisher gradient (1: per-sample empirical Fisher)
    fisher_device: str = ""  # where the Fisher is computed: "" = the training device, or e.g. "cpu"

    def __post_init__(self):
        if self.lam < 0:
            raise ConfigError(f"method.params.ewc.lam {self.lam} must be >= 0")
        if self.fisher_samples < 1 or self.fisher_batch_size < 1:
            raise ConfigError("method.params.ewc.fisher_samples and fisher_batch_size must be >= 1")


def estimate_fisher(model, dataset, collate, *, samples: int, seed: int, key: str,
                    batch_size: int = 1) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of `model`'s trainable parameters on a seeded sample of `dataset`.

    F_j = mean over batches of (∂ log-likelihood of the answer tokens / ∂θ_j)², in float32
    on CPU, keyed by parameter name in the LlavaForConditionalGeneration.
    """
    llava = unwrap(model)
    params = {n: p for n, p in llava.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros(p.shape, dtype=torch.float32) for n, p in params.items()}
    if not params:
        return fisher
    device = next(iter(params.values())).device
    module = training_module(model)
    was = model.training
    model.eval()  # no dropout: the Fisher of the model as it is
    idx = seeded_sample(len(dataset), samples, seed, key)
    names, tensors = list(params), list(params.values())
    count = 0
    try:
        for start in range(0, len(idx), batch_size):
            batch = collate([dataset[i] for i in idx[start:start + batch_size]])
            with torch.enable_grad():
                logits = forward(module, batch, device)
                sel, targets = answer_positions(logits, batch["labels"].to(logits.device))
                if targets.numel() == 0:
                    continue
                nll = F.cross_entropy(sel.float(), targets)  # −(mean log-likelihood)
                grads = torch.autograd.grad(nll, tensors, allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    fisher[n] += g.detach().float().pow(2).cpu()
            count += 1
    finally:
        model.train(was)
    for f in fisher.values():
        f /= max(count, 1)
    return fisher


def ewc_penalty(pairs, lam: float, const: float = 0.0,
                layout: ParamLayout | None = None) -> torch.Tensor:
    """λ/2 (Σ A (θ − μ)² + c) over (param, A, μ) triples; A and μ are this process's part
    of the parameter as `layout` gives it (the whole parameter by default)."""
    layout = layout or ParamLayout()
    total = None
    for p, a, mu in pairs:
        term = (a * (layout.local(p).float() - mu).pow(2)).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.tensor(0.0)
    return 0.5 * lam * (total + const)


@register_method("ewc")
class EWC(ContinualMethod):
    Params = EWCParams

    def __init__(self, params: EWCParams | None = None):
        super().__init__(params or EWCParams())
        self.fisher: dict[str, torch.Tensor] = {}  # A = Σ_t F_t
        self.anchor: dict[str, torch.Tensor] = {}  # μ = Σ_t F_t θ*_t / A
        self.const = 0.0  # c
        self.tasks: list[str] = []
        self._data = None
        self._live: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # -- training ------------------------------------------------------------------------
    def train_data(self, datasets, ctx: TaskContext):
        self._data = datasets[0]  # the task's own data (rehearsal samples come after it)
        return datasets

    def before_training(self, module, ctx: TaskContext) -> None:
        self._live = []
        if not self.fisher:
            return
        for name, p in llava_of(module).named_parameters():
            if p.requires_grad and name in self.fisher:
                self._live.append((p, ctx.layout.shard_like(self.fisher[name], p),
                                   ctx.layout.shard_like(self.anchor[name], p)))

    def penalty(self, module, batch, logits, ctx: TaskContext):
        if not self._live or self.params.lam == 0:
            return None
        return ewc_penalty(self._live, self.params.lam, self.const, ctx.layout)

    def finish_task(self, mllm, ctx: TaskContext) -> None:
        self._live = []
        if self._data is None:
            return
        model = mllm.model
        home = next(model.parameters()).device
        device = torch.device(self.params.fisher_device or ctx.device)
        model.to(device)
        try:
            fisher = estimate_fisher(model, self._data, ctx.pixel_collate(),
                                     samples=self.params.fisher_samples, seed=ctx.seed,
                                     key=f"ewc/{ctx.task_name}",
                                     batch_size=self.params.fisher_batch_size)
        finally:
            model.to(home)
        params = dict(unwrap(mllm.model).named_parameters())
        for name, f in fisher.items():
            self.add_task(name, f, params[name].detach().float().cpu())
        self.tasks.append(ctx.task_name)
        self._data = None

    def add_task(self, name: str, f: torch.Tensor, theta: torch.Tensor) -> None:
        """Fold one task's Fisher `f` and optimum `theta` of parameter `name` into (A, μ, c)."""
        if name not in self.fisher:
            self.fisher[name] = f.clone()
            self.anchor[name] = theta.clone()
            return
        a, mu = self.fisher[name], self.anchor[name]
        total = a + f
        pos = total > 0
        new_mu = torch.where(pos, (a * mu + f * theta) / total.clamp_min(1e-30), theta)
        self.const += float((a.double() * f.double() * (mu.double() - theta.double()).pow(2)
                             / total.double().clamp_min(1e-300)).masked_fill(~pos, 0).sum())
        self.fisher[name], self.anchor[name] = total, new_mu

    # -- state ---------------------------------------------------------------------------
    def save_state(self, path: Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {}
        for n in self.fisher:
            tensors[f"fisher::{n}"] = self.fisher[n].contiguous()
            tensors[f"anchor::{n}"] = self.anchor[n].contiguous()
        save_file(tensors, str(path / STATE_FILE))
        (path / META_FILE).write_text(json.dumps({"const": self.const, "tasks": self.tasks}))

    def load_state(self, path: Path) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / STATE_FILE).exists():
            return
        tensors = load_file(str(path / STATE_FILE))
        self.fisher = {k[len("fisher::"):]: v for k, v in tensors.items()
                       if k.startswith("fisher::")}
        self.anchor = {k[len("anchor::"):]: v for k, v in tensors.items()
                       if k.startswith("anchor::")}
        meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
        self.const = float(meta.get("const", 0.0))
        self.tasks = list(meta.get("tasks", []))
