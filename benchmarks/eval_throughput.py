"""Generated tokens/s of the batched transformers engine vs a per-sample generate loop.

Same tiny LLaVA model (random GPT-NeoX LM + random CLIP tower, micro template), same
prompts (half with an image), greedy decoding, one process. The per-sample loop is what
a naive evaluation does: one `model.generate` per prompt, no padding. Prints the ratio and
whether the answers are identical, and writes JSON to --out.

    python benchmarks/eval_throughput.py [--out benchmarks/eval_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mllmcl_ray.config import ModelSpec
from mllmcl_ray.data.images import pixel_values
from mllmcl_ray.eval.engine.base import GenRequest
from mllmcl_ray.eval.engine.hf import HFEngine
from mllmcl_ray.models.build import build_mllm
from mllmcl_ray.models.tokenizers import train_bpe_tokenizer

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "ball", "box", "cup", "hat"]
NAMES = ["Anna", "Tom", "Mia", "Ben", "Sam", "Lea"]


def make_prompts(n: int, seed: int, image_dir: Path, template) -> list[GenRequest]:
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(n):
        c, s, a, b = (rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(NAMES), rng.choice(NAMES))
        story = " ".join(f"{a} gave the {rng.choice(COLOURS)} {rng.choice(SHAPES)} to {b}."
                         for _ in range(int(rng.integers(1, 6))))
        if i % 2:
            p = image_dir / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
            q = f"<image>\nWhat colour is the {s}? Answer the question using a single word."
            reqs.append(GenRequest(template.prompt([{"from": "human", "value": q}]), str(p), 0))
        else:
            q = f"{story} Who has the {c} {s} now?"
            reqs.append(GenRequest(template.prompt([{"from": "human", "value": q}]), None, 0))
    return reqs


def per_sample_loop(m, engine: HFEngine, reqs: list[GenRequest]) -> tuple[list[str], list[list[int]]]:
    """The naive baseline: one plain `generate` per prompt."""
    texts, toks = [], []
    eos = m.tokenizer.eos_token_id
    with torch.inference_mode():
        for r in reqs:
            ids = torch.tensor([engine.encode_prompt(r.prompt, r.image is not None)])
            kw = {"pixel_values": pixel_values(m.image_processor, [r.image])} if r.image else {}
            out = m.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   max_new_tokens=r.max_new_tokens, do_sample=False,
                                   pad_token_id=m.tokenizer.pad_token_id, eos_token_id=eos, **kw)
            new = out[0, ids.shape[1]:].tolist()
            new = new[:new.index(eos)] if eos in new else new
            toks.append(new)
            texts.append(m.tokenizer.decode(new, skip_special_tokens=True).strip())
    return texts, toks


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is steadier on a shared 2-core machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/eval_throughput.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    corpus = [f"{a} gave the {c} {s} to {b}. What colour is the {s}? {c}"
              for a in NAMES for b in NAMES for c in COLOURS for s in SHAPES]
    tok = train_bpe_tokenizer(corpus, vocab_size=1024)
    spec = ModelSpec(name="bench-tiny", family="gpt_neox", template="micro",
                     llm_config=dict(hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                     num_hidden_layers=args.layers, num_attention_heads=4,
                                     vocab_size=len(tok), max_position_embeddings=1024),
                     vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8))
    m = build_mllm(spec, tokenizer=tok)
    # no end-of-text: every answer runs the full budget, so both sides generate the same count
    with torch.no_grad():
        m.model.lm_head.weight[tok.eos_token_id].zero_()
    with tempfile.TemporaryDirectory() as d:
        reqs = [GenRequest(r.prompt, r.image, args.max_new_tokens)
                for r in make_prompts(args.n_prompts, args.seed, Path(d), m.template)]
        engine = HFEngine(m, batch_size=args.batch_size)
        engine.generate(reqs[:2])  # warm-up
        per_sample_loop(m, engine, reqs[:2])

        t0 = time.perf_counter()
        loop_texts, loop_toks = per_sample_loop(m, engine, reqs)
        t_loop = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched_texts = engine.generate(reqs)
        t_batched = time.perf_counter() - t0
        batched_toks = engine.last_token_ids

    n_loop = sum(map(len, loop_toks))
    n_batched = sum(map(len, batched_toks))
    result = {
        "device": "cpu", "threads": args.threads, "platform": platform.processor() or platform.machine(),
        "torch": torch.__version__, "model": {"family": "gpt_neox", "hidden": args.hidden,
                                              "layers": args.layers, "vocab": len(tok),
                                              "n_image_tokens": m.n_image_tokens},
        "n_prompts": args.n_prompts, "with_image": sum(r.image is not None for r in reqs),
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "per_sample": {"seconds": t_loop, "tokens": n_loop, "tokens_per_s": n_loop / t_loop},
        "batched": {"seconds": t_batched, "tokens": n_batched, "tokens_per_s": n_batched / t_batched},
        "speedup": (n_batched / t_batched) / (n_loop / t_loop),
        "identical_answers": batched_texts == loop_texts,
        "identical_tokens": [list(t) for t in batched_toks] == loop_toks,
    }
    print(f"per-sample loop: {n_loop} tokens in {t_loop:.2f} s = {n_loop / t_loop:.0f} tok/s")
    print(f"batched engine : {n_batched} tokens in {t_batched:.2f} s = {n_batched / t_batched:.0f} tok/s")
    print(f"speedup {result['speedup']:.1f}x; identical answers: {result['identical_answers']}; "
          f"identical tokens: {result['identical_tokens']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
