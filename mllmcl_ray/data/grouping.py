"""Length-grouped batching: micro-batches of samples of similar length, modalities apart.

A micro-batch is padded to its longest sample (`data/collate.py`), so a batch that mixes
a 90-token answer with a 700-token conversation spends most of its compute on padding.
LLaVA's trainer (`group_by_modality_length`, `LengthGroupedSampler` in
`llava/train/llava_trainer.py`) shuffles, cuts the order into mega-batches, sorts each
mega-batch by length and keeps image and text-only samples in separate mega-batches.

`group_order` does the same on the loop's per-step sample order
(`train/loop.py::step_indices`, a seeded [steps, global_batch] array): for each window of
`window_steps` optimizer steps it

1. takes the window's samples (the seeded shuffle decides which samples a window holds),
2. sorts them by (has image, length), longest first (stable: ties keep shuffle order),
3. cuts the sorted list into micro-batches of `per_device` samples, and
4. shuffles the micro-batches (seeded) and lays them back into the window's steps in the
   loop's layout (step row = workers × accumulation micro-batches of `per_device`).

So every window trains on exactly the samples it had before (with `window_steps=1`, every
optimizer step keeps its own samples and only their split into micro-batches changes);
a larger window groups more similar lengths at the price of mixing the order of nearby
steps. Which micro-batch lands on which worker is random, so workers of one step may get
micro-batches of different length (LLaVA balances the sum of lengths across workers; we
do not).

Lengths are signed as in LLaVA: positive for samples with an image, negative for
text-only samples (`sample_lengths`). `padding_stats` measures the padded fraction of an
order (benchmarks/train_throughput.py reports it before and after grouping).
"""
from __future__ import annotations

import numpy as np


def sample_lengths(dataset) -> np.ndarray:
    """Signed token lengths of a dataset's samples (+ with an image, - text-only).

    Reads the Parquet columns directly for a `TokenizedDataset`, recurses into
    `ConcatDataset` and `Subset`; any other dataset is read sample by sample.
    """
    from torch.utils.data import ConcatDataset, Subset

    if isinstance(dataset, ConcatDataset):
        return np.concatenate([sample_lengths(d) for d in dataset.datasets]) \
            if dataset.datasets else np.zeros(0, dtype=np.int64)
    if isinstance(dataset, Subset):
        return sample_lengths(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    table = getattr(dataset, "table", None)
    if table is not None and "input_ids" in table.column_names:
        import pyarrow.compute as pc

        n = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
        img = pc.fill_null(pc.not_equal(table.column("image"), ""), False
                           ).to_numpy(zero_copy_only=False)
        return np.where(img, n, -n).astype(np.int64)
    out = np.empty(len(dataset), dtype=np.int64)
    for i in range(len(dataset)):
        s = dataset[i]
        n = len(s["input_ids"])
        out[i] = n if s.get("image") else -n
    return out


def group_order(order: np.ndarray, lengths: np.ndarray, *, per_device: int,
                window_steps: int = 1, seed: int = 0) -> np.ndarray:
    """`order` ([steps, global_batch] sample indices) regrouped by length; same shape.

    `lengths[i]` is sample i's signed length (`sample_lengths`). The global batch must be
    a multiple of `per_device` (the loop's accumulation rule guarantees it).
    """
    order = np.asarray(order)
    lengths = np.asarray(lengths)
    if order.ndim != 2:
        raise ValueError(f"order must be [steps, global_batch], got shape {order.shape}")
    steps, gb = order.shape
    if per_device < 1 or gb % per_device:
        raise ValueError(f"global batch {gb} is not a multiple of per_device {per_device}")
    if window_steps < 1:
        from ..config import ConfigError

        raise ConfigError(f"stages.*.group_window_steps must be >= 1, got {window_steps}")
    rng = np.random.default_rng([seed, 0x6C656E])  # independent of the loop's own stream
    out = np.empty_like(order)
    for w0 in range(0, steps, window_steps):
        window = order[w0:w0 + window_steps].reshape(-1)
        lens = lengths[window]
        # lexsort: last key is primary. Image samples first, then longest first.
        pos = np.arange(len(window))
        ranked = window[np.lexsort((pos, -np.abs(lens), -(lens > 0).astype(np.int64)))]
        micro = ranked.reshape(-1, per_device)
        micro = micro[rng.permutation(len(micro))]
        out[w0:w0 + window_steps] = micro.reshape(-1, gb)
    return out


def padding_stats(order: np.ndarray, lengths: np.ndarray, per_device: int) -> dict:
    """Tokens and padding of the micro-batches an order makes (each padded to its longest).

    Returns {"tokens", "padded", "slots", "padding_fraction"} with slots = tokens + padded.
    """
    lens = np.abs(np.asarray(lengths))[np.asarray(order).reshape(-1, per_device)]
    slots = int(lens.max(axis=1).sum()) * per_device
    tokens = int(lens.sum())
    return {"tokens": tokens, "padded": slots - tokens, "slots": slots,
            "padding_fraction": (slots - tokens) / slots if slots else 0.0}


__all__ = ["group_order", "padding_stats", "sample_lengths"]
