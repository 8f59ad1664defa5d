"""The one table of named method configurations every study and the CLI use.

A *named method* is a `MethodConfig` (registered method name(s) + their params) with a
label, e.g. ``soft_targets`` = Soft Targets with Srivastava's α = 0.01. Studies name
entries of this table (or vary their params through a grid); nothing else spells a
method's settings.

Some entries scale with the preset: CoIN's and EMT's LoRA is rank 128, α 256 on the paper
models and rank 32, α 64 (the same α/r) on the micro models, whose hidden size is 128;
EWC's Fisher uses 1000 samples per task on paper data and 200 on the micro world's
smaller tasks. `micro` holds those differences as a mapping merged over `params`.

CoIN's "LoRA" is not peft LoRA merged after each task: CoIN trains one adapter through all
tasks (LLM and vision tower frozen), which this project implements as MoELoRA with one
expert (CoIN Sec. 4.3: "the 1 expert in the MoELoRA method is equivalent to the vanilla
LoRA fine-tuning method"). It is named ``coin-lora`` here and says so; ``coin-lora-merged``
is the other reading (peft LoRA merged after each task, Srivastava's practice).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..config import ConfigError, MethodConfig, to_dict

SOFT_TARGETS_ALPHA = 0.01  # Srivastava Table 3: the α chosen for Soft Targets (and mSGM)
REHEARSAL_FRACTION = 0.01  # Srivastava: 1 % of each finished task
COIN_RANK, COIN_RANK_MICRO = 128, 32  # CoIN / LLaVA-1.5 LoRA rank; micro: same α/r = 2


def srivastava_lora(rank: float = 0.5, alpha: float = 8.0, rslora: bool = True,
                    target: str = "all_linear") -> dict:
    """Srivastava's LoRA (Table 2): rank as a fraction of the LLM hidden size, α, rsLoRA,
    target layers. The defaults are Table 2's best row (½ full rank, rsLoRA, α 8)."""
    return {"rank": rank, "alpha": alpha, "use_rslora": rslora, "target": target}


def _coin_moe(experts: int, rank: int) -> dict:
    return {"num_experts": experts, "rank": rank, "alpha": 2.0 * rank, "use_rslora": False,
            "train_projector": False}


ST = {"alpha": SOFT_TARGETS_ALPHA}
REH = {"fraction": REHEARSAL_FRACTION}


@dataclass(frozen=True)
class NamedMethod:
    """One row of the method table."""

    label: str  # the table key, e.g. "soft_targets", "coin-lora"
    method: str  # registered method name(s) joined by '+' (methods/), e.g. "msgm+rehearsal"
    doc: str  # what it is and where it comes from (one line)
    params: dict = field(default_factory=dict)  # method.params for the paper preset
    micro: dict = field(default_factory=dict)  # merged over params on the micro preset

    def config(self, preset: str = "paper") -> MethodConfig:
        params = copy.deepcopy(self.params)
        if preset == "micro":
            for k, v in self.micro.items():
                params[k] = {**params.get(k, {}), **v}
        return MethodConfig(name=self.method, params=params)


METHODS: dict[str, NamedMethod] = {m.label: m for m in (
    NamedMethod("naive", "naive", "full fine-tuning of projector + LLM (LLaVA's recipe)"),
    NamedMethod("linear", "linear", "projector only (LLM frozen)"),
    NamedMethod("lora", "lora", "Srivastava's LoRA: ½ full rank, rsLoRA, α 8, merged after each task",
                {"lora": srivastava_lora()}),
    NamedMethod("soft_targets", "soft_targets", "Soft Targets, α 0.01 (Srivastava Table 3)",
                {"soft_targets": dict(ST)}),
    NamedMethod("msgm", "msgm", "mSGM: Soft Targets (α 0.01) + LoRA (Srivastava)",
                {"soft_targets": dict(ST), "lora": srivastava_lora()}),
    NamedMethod("moelora", "moelora", "MoELoRA, 8 experts, rank 128, α 256 (CoIN's defaults)"),
    NamedMethod("rehearsal", "rehearsal", "Rehearsal of 1 % of each finished task (Srivastava)",
                {"rehearsal": dict(REH)}),
    NamedMethod("ewc", "ewc", "EWC, λ 0.1, 1000 Fisher samples per task"),
    NamedMethod("lwf", "lwf", "LwF, λ 0.1, 100 samples per task"),
    NamedMethod("msgm+rehearsal", "msgm+rehearsal", "mSGM + Rehearsal 1 % (Srivastava Table 1, Fig. 5)",
                {"soft_targets": dict(ST), "lora": srivastava_lora(), "rehearsal": dict(REH)}),
    # CoIN (Chen et al.): adapters only, LLM and CLIP frozen, rank 128, α 256
    NamedMethod("coin-lora", "moelora",
                "CoIN's LoRA = MoELoRA with ONE expert: one adapter trained through all tasks, "
                "LLM and projector frozen, rank 128, α 256 (micro 32, 64)",
                {"moelora": _coin_moe(1, COIN_RANK)}, {"moelora": _coin_moe(1, COIN_RANK_MICRO)}),
    NamedMethod("coin-lora-merged", "lora",
                "peft LoRA rank 128, α 256 merged into the LLM after each task (Srivastava's practice)",
                {"lora": {"rank": COIN_RANK, "alpha": 2.0 * COIN_RANK, "use_rslora": False,
                          "train_projector": False}},
                {"lora": {"rank": COIN_RANK_MICRO, "alpha": 2.0 * COIN_RANK_MICRO}}),
    NamedMethod("coin-moelora", "moelora", "CoIN's MoELoRA, 8 experts (vary moelora.num_experts: Tab. 8)",
                {"moelora": _coin_moe(8, COIN_RANK)}, {"moelora": _coin_moe(8, COIN_RANK_MICRO)}),
    NamedMethod("coin-ewc", "moelora+ewc", "EWC (λ 0.1, 1000 Fisher samples; micro 200) on CoIN's LoRA (Tab. 9)",
                {"moelora": _coin_moe(1, COIN_RANK), "ewc": {"lam": 0.1, "fisher_samples": 1000}},
                {"moelora": _coin_moe(1, COIN_RANK_MICRO), "ewc": {"fisher_samples": 200}}),
    NamedMethod("coin-lwf", "moelora+lwf", "LwF (λ 0.1, 100 samples per task) on CoIN's LoRA (Tab. 9)",
                {"moelora": _coin_moe(1, COIN_RANK), "lwf": {"lam": 0.1, "samples_per_task": 100}},
                {"moelora": _coin_moe(1, COIN_RANK_MICRO)}),
    # EMT (Zhai et al. §5.1): projector + LoRA on every linear layer, LLaVA-1.5's LoRA setting
    NamedMethod("emt-lora", "lora", "EMT's LoRA: projector + LoRA rank 128, α 256 (micro 32, 64)",
                {"lora": {"rank": COIN_RANK, "alpha": 2.0 * COIN_RANK, "use_rslora": False,
                          "train_projector": True}},
                {"lora": {"rank": COIN_RANK_MICRO, "alpha": 2.0 * COIN_RANK_MICRO}}),
)}


def named_method(label: str) -> NamedMethod:
    try:
        return METHODS[label]
    except KeyError:
        raise ConfigError(f"unknown method {label!r}; the method table has: "
                          f"{', '.join(METHODS)}") from None


def method_config(label: str, preset: str = "paper", **params: dict) -> dict:
    """The named method as a plain mapping (a grid value for the `method` key), with
    `params` merged per method, e.g. ``method_config("coin-moelora", moelora={"num_experts": 2})``."""
    cfg = named_method(label).config(preset)
    for k, v in params.items():
        cfg.params[k] = {**cfg.params.get(k, {}), **v}
    return to_dict(cfg)


def method_configs(labels: list[str], preset: str = "paper") -> list[dict]:
    """Several named methods, identical configurations once (first label kept)."""
    return unique([method_config(m, preset) for m in labels])


def unique(configs: list) -> list:
    """Drop repeated configurations (compared as sorted JSON), keeping the first."""
    import json

    seen, out = set(), []
    for c in configs:
        key = json.dumps(c, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def methods_table() -> str:
    """The table as text (`mllmcl methods`)."""
    import json

    lines = []
    for m in METHODS.values():
        lines.append(f"{m.label:18s} {m.method:16s} {m.doc}")
        if m.params:
            lines.append(f"{'':18s} params {json.dumps(m.params, sort_keys=True)}")
        if m.micro:
            lines.append(f"{'':18s} micro  {json.dumps(m.micro, sort_keys=True)}")
    return "\n".join(lines)
