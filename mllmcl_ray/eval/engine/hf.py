"""The transformers backend: batched, left-padded, greedy, KV-cached generation and
batched lm-eval-style log-likelihoods, on any MLLM (or a plain causal LM, e.g. a judge).

Works on what `MLLM.model` holds, wrapped or not: a `LlavaForConditionalGeneration`, a
peft model around it (LoRA, MoELoRA checkpoints), or a plain causal LM opened from a
directory. Prompts are tokenised the way training tokenised them
(`models/tokenizers.encode_conversation`): the text around the ``<image>`` placeholder is
tokenised piecewise and the placeholder becomes `n_image_tokens` image tokens.

Batching: requests are grouped by whether they carry an image, sorted by prompt length
(longest first, so padding is small), left-padded, and generated together with the
KV cache; each request's answer is cut at its own `max_new_tokens` (greedy decoding makes
the first k tokens independent of the budget) and at the first end-of-text.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .base import Engine, GenRequest, encode_pair, register_engine

IMAGE_PLACEHOLDER = "<image>"


def _load(model: Any):
    """(mllm or None, model, tokenizer, image_processor, template) from an MLLM, a project
    checkpoint dir, an off-the-shelf llava-hf checkpoint (dir or hub id) or a causal LM."""
    from ...models.build import MLLM, load_hf_llava, load_mllm

    if isinstance(model, MLLM):
        return model, model.model, model.tokenizer, model.image_processor, model.template
    path = Path(str(model))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
        cfg = json.loads((path / "config.json").read_text())
        model_type = cfg.get("model_type")
        project = (path / "mllmcl.json").exists()
    else:  # a hub id: its config says what it is
        from transformers import AutoConfig

        try:
            model_type = AutoConfig.from_pretrained(str(model)).model_type
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{model!r} is neither a model directory nor a hub id "
                                    f"available offline: {e}") from e
        project = False
    if project:
        m = load_mllm(path)
        return m, m.model, m.tokenizer, m.image_processor, m.template
    if model_type == "llava":
        m = load_hf_llava(str(model))
        return m, m.model, m.tokenizer, m.image_processor, None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(str(model))
    lm.eval()
    tok = AutoTokenizer.from_pretrained(str(model))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return None, lm, tok, None, None


@register_engine("transformers")
@register_engine("hf")
class HFEngine(Engine):
    """Greedy batched generation and log-likelihoods with transformers.

    Args:
        model: an `MLLM`, an MLLM checkpoint dir (`save_mllm`), an off-the-shelf llava-hf
            checkpoint (dir or hub id: its own processor, image preprocessing and chat
            template), or a causal-LM dir.
        clip: the full CLIP checkpoint of the vision tower (`clip_source`); default
            `models.towers.clip_for_tower`.
        batch_size: requests per forward pass (generation and log-likelihood).
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ...
        dtype: None keeps the model's dtype; "bfloat16"/"float16"/"float32" casts.
        max_length: longest input (tokens); default the LM's max_position_embeddings.
        max_batch_tokens: log-likelihood batches hold at most this many padded tokens.

    The engine puts the model in eval mode (a training loop that evaluates in-process
    calls ``model.train()`` again afterwards) and moves it to `device`.
    """

    name = "transformers"

    def __init__(self, model: Any, *, batch_size: int = 32, device: str = "auto",
                 dtype: str | None = None, max_length: int | None = None,
                 max_batch_tokens: int = 16384, model_id: str | None = None,
                 clip: str | None = None):
        self.mllm, self.model, self.tokenizer, self.image_processor, self.template = _load(model)
        # off-the-shelf: the checkpoint's own processor makes prompts, tokens and pixels
        self.processor = getattr(self.mllm, "processor", None) if self.template is None else None
        self._clip = clip
        self._model_id = model_id or (str(model) if isinstance(model, (str, Path)) else
                                      getattr(getattr(self.mllm, "spec", None), "name", "model"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype is not None:
            self.model.to(getattr(torch, dtype))
        self.model.to(self.device)
        self.model.eval()
        self.batch_size = int(batch_size)
        self.max_batch_tokens = int(max_batch_tokens)
        self.tokenizer.padding_side = "left"
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.stop_ids = self._stop_ids()
        self.last_token_ids: list[list[int]] = []  # generated ids of the last generate()
        self.max_length = max_length or self._model_max_length()
        if self.processor is not None:
            self.image_token = getattr(self.processor, "image_token", IMAGE_PLACEHOLDER)
            self.n_image_tokens = self.mllm.n_image_tokens
            self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        elif self.mllm is not None:
            from ...models.tokenizers import image_token_id

            self.image_token = IMAGE_PLACEHOLDER
            self.n_image_tokens = self.mllm.n_image_tokens
            self.image_token_id = image_token_id(self.tokenizer)
        else:
            self.n_image_tokens = 0
            self.image_token_id = None

    # ----------------------------------------------------------------------------------
    # helpers
    # ----------------------------------------------------------------------------------
    @property
    def prompt_version(self) -> str:
        return self.template.version if self.template is not None else ""

    def conversation_prompt(self, conversations: list[dict]) -> str:
        """Project MLLMs: their template; off-the-shelf: the checkpoint's chat template
        (`processor.apply_chat_template`, add_generation_prompt) over the turns as HF
        messages (``<image>`` becomes an image part)."""
        if self.template is not None:
            return self.template.prompt(conversations)
        if self.processor is None:
            return super().conversation_prompt(conversations)
        from ...models.chat_template import llava_json_to_messages

        convs = list(conversations)
        if convs and convs[-1]["from"] == "gpt":
            convs = convs[:-1]
        return self.processor.apply_chat_template(llava_json_to_messages(convs),
                                                  add_generation_prompt=True, tokenize=False)

    @property
    def clip_source(self) -> str | None:
        if self.mllm is None:
            return None
        from ...models.towers import clip_for_tower

        spec = getattr(self.mllm, "spec", None)
        return clip_for_tower(str(self.model_id), self.mllm.llava_config.vision_config,
                              explicit=self._clip,
                              spec_vision=getattr(spec, "vision", None) if self.template else None)

    def _stop_ids(self) -> list[int]:
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        if self.template is not None and self.template.turn_end:
            tid = self.tokenizer.convert_tokens_to_ids(self.template.turn_end)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return sorted(ids)

    def _model_max_length(self) -> int:
        cfg = getattr(self.model, "config", None)
        cfg = getattr(cfg, "text_config", None) or cfg
        n = getattr(cfg, "max_position_embeddings", None)
        return int(n) if n else 2048

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode_prompt(self, prompt: str, has_image: bool) -> list[int]:
        """Token ids of a prompt; its ``<image>`` becomes `n_image_tokens` image tokens."""
        n_ph = prompt.count(IMAGE_PLACEHOLDER)
        if has_image and n_ph != 1:
            raise ValueError(f"a request with an image needs exactly one {IMAGE_PLACEHOLDER!r} "
                             f"in its prompt, found {n_ph}: {prompt[:80]!r}")
        if not has_image and n_ph:
            raise ValueError(f"prompt has {IMAGE_PLACEHOLDER!r} but the request has no image: "
                             f"{prompt[:80]!r}")
        if has_image and self.mllm is None:
            raise ValueError("this engine runs a text-only LM: it cannot take images")
        if self.processor is not None:
            # as LlavaProcessor does: the image token repeated, the whole text tokenised, and
            # special tokens added unless the prompt starts with BOS (apply_chat_template's rule)
            text = prompt.replace(IMAGE_PLACEHOLDER, self.image_token * self.n_image_tokens)
            bos = self.tokenizer.bos_token
            return list(self.tokenizer(text, add_special_tokens=not (bos and text.startswith(bos))
                                       )["input_ids"])
        ids: list[int] = []
        for j, part in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
            if j > 0:
                ids.extend([self.image_token_id] * self.n_image_tokens)
            if part:
                ids.extend(self.tokenizer(part, add_special_tokens=False)["input_ids"])
        return ids

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[i, n - len(s):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _pixels(self, paths: list[str]) -> torch.Tensor:
        """Project MLLMs: LLaVA-1.5 letterbox + CLIP preprocessing, as in training;
        off-the-shelf: the checkpoint's own image processor on the image as it is."""
        from ...data.images import load_image, pixel_values

        if self.processor is not None:
            out = self.image_processor(images=[load_image(p) for p in paths],
                                       return_tensors="pt")["pixel_values"]
            return out.to(self.device, self._dtype())
        return pixel_values(self.image_processor, paths).to(self.device, self._dtype())

    def _generation_config(self, max_new_tokens: int, req: GenRequest | None = None):
        from transformers import GenerationConfig

        sample = {}
        if req is not None and req.temperature > 0:  # the judge's sampling (judge.py)
            sample = dict(do_sample=True, temperature=req.temperature, top_p=req.top_p,
                          repetition_penalty=req.repetition_penalty)
        elif req is not None and req.repetition_penalty != 1.0:
            sample = dict(repetition_penalty=req.repetition_penalty)
        return GenerationConfig(max_new_tokens=max_new_tokens, **{"do_sample": False, **sample},
                                num_beams=1, use_cache=True, pad_token_id=self.pad_id,
                                eos_token_id=self.stop_ids or None)

    def decoding(self, **extra: Any) -> dict:
        return super().decoding(batch_size=self.batch_size, stop_token_ids=self.stop_ids,
                                **extra)

    # ----------------------------------------------------------------------------------
    # generation
    # ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        requests = list(requests)
        out: list[str | None] = [None] * len(requests)
        self.last_token_ids: list[list[int]] = [[] for _ in requests]
        enc = [self.encode_prompt(r.prompt, r.image is not None) for r in requests]
        for has_image in (False, True):
            idx = [i for i, r in enumerate(requests) if (r.image is not None) == has_image]
            idx.sort(key=lambda i: -len(enc[i]))  # stable: equal lengths keep their order
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                texts, toks = self._generate_batch([enc[i] for i in chunk],
                                                   [requests[i] for i in chunk])
                for i, text, t in zip(chunk, texts, toks):
                    out[i] = text
                    self.last_token_ids[i] = t
        return out  # type: ignore[return-value]

    def _generate_batch(self, seqs: list[list[int]], reqs: list[GenRequest]
                        ) -> tuple[list[str], list[list[int]]]:
        budget = max(r.max_new_tokens for r in reqs)
        if len({r.sampling for r in reqs}) > 1:
            raise ValueError("one generate() batch mixes sampling settings; send them apart")
        room = self.max_length - budget
        if room <= 0:
            raise ValueError(f"max_new_tokens {budget} leaves no room in max_length "
                             f"{self.max_length}")
        seqs = [s[-room:] for s in seqs]  # keep the end (the question) of over-long prompts
        input_ids, mask = self._left_pad(seqs)
        kwargs: dict[str, Any] = {}
        if reqs[0].image is not None:
            kwargs["pixel_values"] = self._pixels([r.image for r in reqs])
        gen = self.model.generate(input_ids=input_ids, attention_mask=mask,
                                  generation_config=self._generation_config(budget, reqs[0]),
                                  **kwargs)
        new = gen[:, input_ids.shape[1]:].tolist()
        texts, toks = [], []
        for row, r in zip(new, reqs):
            row = row[:r.max_new_tokens]
            for k, t in enumerate(row):
                if t in self.stop_ids:
                    row = row[:k]
                    break
            toks.append(row)
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts, toks

    # ----------------------------------------------------------------------------------
    # log-likelihood
    # ----------------------------------------------------------------------------------
    def _prefix_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @torch.inference_mode()
    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        items = []
        for i, (ctx, cont) in enumerate(pairs):
            ctx_ids, cont_ids = encode_pair(self.tokenizer, ctx, cont, self._prefix_token_id())
            if not cont_ids:
                raise ValueError(f"pair {i}: the continuation {cont!r} has no tokens")
            # lm-eval: the last max_length+1 tokens, minus the final one (it is predicted)
            inp = (ctx_ids + cont_ids)[-(self.max_length + 1):][:-1]
            items.append((i, inp, cont_ids))
        items.sort(key=lambda t: (-len(t[1]), t[0]))
        out: list[tuple[float, bool] | None] = [None] * len(items)
        s = 0
        while s < len(items):
            longest = len(items[s][1])
            rows = max(1, min(self.batch_size, self.max_batch_tokens // max(longest, 1)))
            chunk = items[s:s + rows]
            s += len(chunk)
            for (i, _, _), res in zip(chunk, self._loglik_batch(chunk)):
                out[i] = res
        return out  # type: ignore[return-value]

    def _loglik_batch(self, chunk) -> list[tuple[float, bool]]:
        input_ids, mask = self._left_pad([inp for _, inp, _ in chunk])
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(c) for _, _, c in chunk)  # continuation tokens sit at the right end
        try:
            logits = self.model(input_ids=input_ids, attention_mask=mask,
                                position_ids=position_ids, logits_to_keep=keep).logits
        except TypeError:  # a wrapper without logits_to_keep
            logits = self.model(input_ids=input_ids, attention_mask=mask,
                                position_ids=position_ids).logits[:, -keep:]
        logp = torch.log_softmax(logits[:, -keep:].float(), dim=-1)
        res = []
        for j, (_, _, cont) in enumerate(chunk):
            lp = logp[j, keep - len(cont):]
            target = torch.tensor(cont, device=lp.device)
            total = lp.gather(-1, target[:, None]).sum().item()
            greedy = bool((lp.argmax(-1) == target).all().item())
            res.append((float(total), greedy))
        return res

    # ----------------------------------------------------------------------------------
    # embeddings (EMT's offline embedding-nearest fallback)
    # ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, texts: Sequence[str]):
        """Mean of the LM's input-embedding vectors over each text's tokens (numpy)."""
        import numpy as np

        emb = self.model.get_input_embeddings()
        out = []
        for t in texts:
            ids = self.tokenizer(t, add_special_tokens=False)["input_ids"] or [self.pad_id]
            v = emb(torch.tensor(ids, device=self.device)).float().mean(0)
            out.append(v.cpu().numpy())
        return np.stack(out) if out else np.zeros((0, emb.weight.shape[1]), dtype=np.float32)

    def close(self) -> None:
        self.model = None
        self.mllm = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
