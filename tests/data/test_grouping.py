"""Length-grouped batching (data/grouping.py) and its switch in train/loop.py::step_indices."""
import json

import numpy as np
import pytest
import torch

from mllmcl_ray.config import DataSource, StageConfig
from mllmcl_ray.data.grouping import group_order, padding_stats, sample_lengths
from mllmcl_ray.train.loop import step_indices


def _micro_sets(order, pd):
    return sorted(tuple(sorted(m)) for m in np.asarray(order).reshape(-1, pd).tolist())


def test_hand_example_sorts_one_step_into_micro_batches():
    # 8 image samples, one optimizer step of 8, micro-batches of 2.
    lengths = np.array([10, 1, 9, 2, 8, 3, 7, 4])
    order = np.arange(8).reshape(1, 8)
    grouped = group_order(order, lengths, per_device=2, window_steps=1, seed=0)
    # Longest first: 0(10) 2(9) 4(8) 6(7) 7(4) 5(3) 3(2) 1(1) -> pairs in that order,
    # then the four micro-batches are shuffled.
    assert _micro_sets(grouped, 2) == [(0, 2), (1, 3), (4, 6), (5, 7)]
    # 44 tokens. Before: micro-batches {0,1} {2,3} {4,5} {6,7} padded to 10, 9, 8, 7 ->
    # 2·34 = 68 slots, 24 padding. After: padded to 10, 8, 4, 2 -> 2·24 = 48 slots, 4 padding.
    assert padding_stats(order, lengths, 2) == {"tokens": 44, "padded": 24, "slots": 68,
                                                "padding_fraction": 24 / 68}
    assert padding_stats(grouped, lengths, 2) == {"tokens": 44, "padded": 4, "slots": 48,
                                                  "padding_fraction": 4 / 48}


def test_window_keeps_its_samples_and_modalities_apart():
    rng = np.random.default_rng(3)
    n = 96
    lengths = rng.integers(5, 200, n) * np.where(np.arange(n) % 3 == 0, -1, 1)  # 1/3 text-only
    order = np.stack([rng.permutation(n)[:32] for _ in range(6)])  # 6 steps of 32
    for window in (1, 2, 6):
        g = group_order(order, lengths, per_device=4, window_steps=window, seed=1)
        assert g.shape == order.shape
        for w0 in range(0, 6, window):
            assert sorted(g[w0:w0 + window].ravel()) == sorted(order[w0:w0 + window].ravel())
        # a micro-batch mixes modalities at most once per window (at the boundary)
        mixed = sum(len({bool(lengths[i] > 0) for i in m}) > 1 for m in g.reshape(-1, 4))
        assert mixed <= -(-6 // window)
        assert padding_stats(g, lengths, 4)["padded"] < padding_stats(order, lengths, 4)["padded"]
    # same seed, same order; another seed shuffles the micro-batches differently
    a = group_order(order, lengths, per_device=4, window_steps=2, seed=1)
    assert (a == group_order(order, lengths, per_device=4, window_steps=2, seed=1)).all()
    assert not (a == group_order(order, lengths, per_device=4, window_steps=2, seed=2)).all()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="multiple of per_device"):
        group_order(np.zeros((2, 6), dtype=int), np.ones(6), per_device=4)
    with pytest.raises(ValueError, match="window_steps"):
        group_order(np.zeros((2, 8), dtype=int), np.ones(8), per_device=4, window_steps=0)


def test_step_indices_switch():
    lengths = np.arange(1, 41)
    off = StageConfig(global_batch_size=8, per_device_batch_size=2)
    on = StageConfig(global_batch_size=8, per_device_batch_size=2, group_by_length=True)
    base = step_indices(40, off, 7, 5)
    assert (step_indices(40, off, 7, 5, lengths=lengths) == base).all()  # switch off: unchanged
    grouped = step_indices(40, on, 7, 5, lengths=lengths)
    assert (grouped == group_order(base, lengths, per_device=2, window_steps=1, seed=7)).all()
    for row, g in zip(base, grouped):  # window 1: every step keeps its samples
        assert sorted(row) == sorted(g)


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """A tiny model and 24 samples of varied length, half of them text-only."""
    from train_world import make_world, tiny_config

    from mllmcl_ray.data.tokenized import build_tokenized
    from mllmcl_ray.models.build import build_mllm

    root = make_world(tmp_path_factory.mktemp("grp"))
    words = ["red", "green", "blue", "white"]
    recs = []
    for i in range(24):
        ans = " ".join(words[j % 4] for j in range(1 + (i * 7) % 23))
        first = ("<image>\n" if i % 2 == 0 else "") + "Describe the image."
        rec = {"id": str(i), "conversations": [{"from": "human", "value": first},
                                               {"from": "gpt", "value": ans}]}
        if i % 2 == 0:
            rec["image"] = f"images/colour{i}.png"
        recs.append(rec)
    (root / "varied.json").write_text(json.dumps(recs))
    cfg = tiny_config(root, root / "out")
    torch.manual_seed(0)
    mllm = build_mllm(cfg.model)
    ds = build_tokenized([DataSource(path=str(root / "varied.json"), image_root=str(root))],
                         mllm.tokenizer, mllm.template, n_image_tokens=mllm.n_image_tokens,
                         max_len=cfg.model.max_seq_len, seed=0, cache_dir=root / "cache")
    return mllm, ds


def test_sample_lengths_of_tokenized_concat_and_subset(varied):
    _, ds = varied
    lens = sample_lengths(ds)
    expect = [len(ds[i]["input_ids"]) * (1 if ds[i]["image"] else -1) for i in range(len(ds))]
    assert lens.tolist() == expect
    assert (lens > 0).sum() == 12 and len(set(np.abs(lens).tolist())) > 5
    cat = torch.utils.data.ConcatDataset([ds, torch.utils.data.Subset(ds, [3, 0])])
    assert sample_lengths(cat).tolist() == expect + [expect[3], expect[0]]


def test_grouping_cuts_padding_with_identical_per_sample_losses(varied):
    """Right padding under a causal mask changes no sample's logits: the summed answer-token
    loss of every sample is the same whether its micro-batch is grouped or not."""
    from mllmcl_ray.data.collate import Collator
    from mllmcl_ray.train.loop import forward_batch
    from mllmcl_ray.models.training import MLLMForTraining

    mllm, ds = varied
    lengths = sample_lengths(ds)
    stage = StageConfig(global_batch_size=8, per_device_batch_size=4)
    order = step_indices(len(ds), stage, 0, 3)
    grouped = group_order(order, lengths, per_device=4, window_steps=3, seed=0)
    before, after = padding_stats(order, lengths, 4), padding_stats(grouped, lengths, 4)
    assert before["tokens"] == after["tokens"]
    assert after["padded"] <= 0.7 * before["padded"]  # >= 30 % fewer padded tokens

    module = MLLMForTraining(mllm.model).eval()
    collate = Collator(mllm.tokenizer.pad_token_id, mllm.image_processor)

    def per_sample_losses(o):
        out = {}
        for idx in np.asarray(o).reshape(-1, 4):
            batch = collate([ds[int(i)] for i in idx])
            with torch.no_grad():
                logits = forward_batch(module, batch, torch.device("cpu")).float()
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none",
                ignore_index=-100)
            for i, row in zip(idx, ce):
                out[int(i)] = float(row.sum())
        return out

    a, b = per_sample_losses(order), per_sample_losses(grouped)
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-4)
