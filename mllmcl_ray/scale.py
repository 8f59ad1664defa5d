"""Scale rules: settings that follow the LLM's parameter count (as OLMo-core's ladder).

The papers train Pythia 160M–2.8B with lr 2e-5 (fine-tune) and 1e-3 (alignment) at
global batches 128/256. A ~1M-parameter micro model learns and forgets almost nothing at
2e-5 (PLATFORM-NOTES calibration). Measured here on the micro world (micro-s, 1.06M
parameters, global batch 32): one epoch of VQA at 1e-4 reached VQA accuracy 0.14; two
epochs at 5e-4 reached 0.44 (zero-shot 0.00) while Lambada-like accuracy fell 0.24 → 0.06.
The fine-tune lr therefore rises as parameters fall below 1e8, log-linearly from 2e-5 at
1e8 to 5e-4 at 1e6 (clamped), and per-device batch shrinks as models grow.
"""
from __future__ import annotations

import math

PAPER_FINETUNE_LR = 2e-5
PAPER_ALIGN_LR = 1e-3
SMALL_FINETUNE_LR = 5e-4


def finetune_lr(n_params: int) -> float:
    """Fine-tune lr: 2e-5 at ≥ 1e8 parameters, 5e-4 at ≤ 1e6, log-linear between."""
    if n_params >= 1e8:
        return PAPER_FINETUNE_LR
    if n_params <= 1e6:
        return SMALL_FINETUNE_LR
    t = (math.log10(n_params) - 6) / 2
    return 10 ** (math.log10(SMALL_FINETUNE_LR) + t * (math.log10(PAPER_FINETUNE_LR)
                                                         - math.log10(SMALL_FINETUNE_LR)))


def align_lr(n_params: int) -> float:
    """Alignment lr: the papers' 1e-3 at every scale (only the projector trains)."""
    return PAPER_ALIGN_LR


def stage_lr(stage: str, n_params: int) -> float:
    return align_lr(n_params) if stage == "align" else finetune_lr(n_params)


def per_device_batch(n_params: int, gpu_memory_gib: float = 80.0) -> int:
    """Per-device batch that fits a GPU of `gpu_memory_gib` (Srivastava: 16 up to ~3B)."""
    if n_params <= 3.5e9:
        return 16
    return max(1, int(16 * 3e9 / n_params * gpu_memory_gib / 80.0))


def pretrain_tokens(n_params: int) -> int:
    """Micro base-LLM pretraining budget: ~3.6M tokens at 1M parameters (the copy skill
    appears between 1.5M and 2M tokens on the micro world; micro_pretrain.LLM_SIZES),
    scaling linearly."""
    return int(3.6e6 * max(1.0, n_params / 1e6))
