"""Model FLOPs utilisation (MFU), nanoGPT / PaLM style.

Training a decoder costs about 6·N FLOPs per token (2·N forward, 4·N backward) for N
parameters, plus the attention score/value products, 12·L·H·T per token for L layers,
hidden size H and sequence length T (PaLM appendix B; nanoGPT's `estimate_mfu`). MFU is
the achieved model FLOPs per second over the hardware's peak; activation checkpointing's
recomputation is *not* counted (that would be hardware FLOPs utilisation).

Peak bf16 dense throughput defaults: H100 SXM 989 TFLOP/s, H100 PCIe 756, A100 312,
H200 989 (same compute as H100 SXM).
"""
from __future__ import annotations

PEAK_BF16 = {"h100-sxm": 989e12, "h100-pcie": 756e12, "h200": 989e12, "a100": 312e12}


def flops_per_token(n_params: int, n_layers: int = 0, hidden: int = 0, seq_len: int = 0) -> float:
    """Training FLOPs per token: 6·N, plus 12·L·H·T for attention when L, H, T are given."""
    if n_params <= 0:
        raise ValueError(f"n_params must be positive, got {n_params}")
    return 6.0 * n_params + 12.0 * n_layers * hidden * seq_len


def estimate_mfu(n_params: int, tokens_per_s: float, peak_flops: float = PEAK_BF16["h100-sxm"],
                 *, n_layers: int = 0, hidden: int = 0, seq_len: int = 0) -> float:
    """MFU in [0, 1]: flops_per_token · tokens/s / peak FLOP/s.

    With only `n_params` this is the 6·N·tokens/s / peak rule; passing `n_layers`,
    `hidden` and `seq_len` adds the attention term.
    """
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    if tokens_per_s < 0:
        raise ValueError(f"tokens_per_s must be >= 0, got {tokens_per_s}")
    return flops_per_token(n_params, n_layers, hidden, seq_len) * tokens_per_s / peak_flops


__all__ = ["PEAK_BF16", "estimate_mfu", "flops_per_token"]
