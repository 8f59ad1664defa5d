"""The evaluation engine interface: greedy generation and log-likelihoods.

Every suite (NL, VL, EMT, the judge) talks to a model only through `Engine`:

- ``generate(requests)``: one greedy answer per `GenRequest` (a prompt that may contain
  the ``<image>`` placeholder, an optional image path, a token budget);
- ``loglikelihood(pairs)``: for each ``(context, continuation)`` the summed log-probability
  of the continuation's tokens given the context, and whether the continuation is the
  greedy one (every continuation token is the argmax at its position). This is the
  definition of lm-evaluation-harness (``LM.loglikelihood``), including how the pair is
  tokenised (see `split_context_continuation`).

Engines are plain classes (no Ray); `actors.py` wraps them. Backends register themselves
by name (`register_engine`); `make_engine(name, model, **kwargs)` builds one, importing
the backend module lazily so that an optional backend (vLLM) costs nothing until chosen.
"""
from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class EngineUnavailable(RuntimeError):
    """A backend cannot run here (its package is not installed, or it needs a GPU)."""


@dataclass(frozen=True)
class GenRequest:
    """One generation: `prompt` is the full prompt text (template applied); it holds the
    ``<image>`` placeholder exactly once when `image` is given and never otherwise."""

    prompt: str
    image: str | None = None  # image file path
    max_new_tokens: int = 16
    temperature: float = 0.0  # 0: greedy; > 0: sample (the CoIN judge samples, judge.py)
    top_p: float = 1.0  # nucleus sampling mass (only when temperature > 0)
    repetition_penalty: float = 1.0  # HF/vLLM repetition penalty (1: none)

    @property
    def sampling(self) -> tuple[float, float, float]:
        return (self.temperature, self.top_p, self.repetition_penalty)


class Engine(ABC):
    """A model that answers prompts greedily and scores continuations."""

    name: str = "engine"
    template = None  # the model's ConversationTemplate when it is an MLLM

    @abstractmethod
    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        """Greedy answers, one per request, in request order (special tokens removed)."""

    @abstractmethod
    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation tokens | context), is_greedy) per pair, in order."""

    # -- optional capabilities ----------------------------------------------------------
    tokenizer = None  # the model's tokenizer, where the engine has one

    def chat_prompt(self, message: str, system: str | None = None) -> str:
        """A single-turn prompt for `message` in the model's own chat format (the judge).

        MLLMs: their conversation template (its own system prompt); plain LMs: the
        tokenizer's chat template when it has one, else system + message as text."""
        if self.template is not None:
            return self.template.text_prompt(message)
        if getattr(self.tokenizer, "chat_template", None):
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": message}]
            return self.tokenizer.apply_chat_template(msgs, tokenize=False,
                                                      add_generation_prompt=True)
        return f"{system}\n\n{message}" if system else message

    def conversation_prompt(self, conversations: list[dict]) -> str:
        """The generation prompt of a LLaVA-JSON conversation (``from``/``value`` turns,
        ``<image>`` inline; a last ``gpt`` turn is dropped) in the model's own format: its
        project template, or an off-the-shelf checkpoint's chat template."""
        if self.template is None:
            raise NotImplementedError(f"engine {self.name!r} has no conversation format")
        return self.template.prompt(conversations)

    @property
    def clip_source(self) -> str | None:
        """Hub id or dir of the full CLIP model (text + vision towers) whose vision tower
        the MLLM uses, or None when unknown (EMT's CLIP-text nearest-label decision and
        the tower's zero-shot reference need it)."""
        return None

    def embed(self, texts: Sequence[str]):
        """(N, D) text embeddings (EMT's embedding-nearest decision); optional."""
        raise NotImplementedError(f"engine {self.name!r} cannot embed texts")

    @property
    def model_id(self) -> str:
        """What model this engine runs (a path or a name), for result rows."""
        return getattr(self, "_model_id", self.name)

    @property
    def prompt_version(self) -> str:
        """Version of the conversation template the engine's model uses ('' if none)."""
        return ""

    def decoding(self, **extra: Any) -> dict:
        """The decoding settings, for the `decoding` column (JSON)."""
        d = {"backend": self.name, "greedy": True, "do_sample": False, "num_beams": 1}
        d.update(extra)
        return d

    def close(self) -> None:
        """Free the model (optional)."""


def decoding_json(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def split_context_continuation(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's `_encode_pair` rule: trailing spaces of the context move to the start of
    the continuation (so "Answer: " + "Paris" is scored as "Answer:" + " Paris")."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    return context, continuation


def encode_pair(tokenizer, context: str, continuation: str, prefix_token_id: int | None
                ) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-evaluation-harness makes them.

    The whole string is tokenised once and the continuation is what follows the
    context's own tokens (so merges across the boundary go to the continuation); an empty
    context becomes the prefix token (end-of-text), as in lm-eval's HFLM.
    """
    context, continuation = split_context_continuation(context, continuation)
    if not context:
        whole = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        return [prefix_token_id if prefix_token_id is not None else tokenizer.eos_token_id], whole
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return whole[:len(ctx)], whole[len(ctx):]


# ---------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------
ENGINES: dict[str, Callable[..., Engine]] = {}
_LAZY = {"transformers": "mllmcl_ray.eval.engine.hf", "hf": "mllmcl_ray.eval.engine.hf",
         "vllm": "mllmcl_ray.eval.engine.vllm"}


def register_engine(name: str) -> Callable:
    """Decorator: register an engine class/factory `f(model, **kwargs) -> Engine`."""

    def deco(factory):
        ENGINES[name] = factory
        return factory

    return deco


def get_engine(name: str) -> Callable[..., Engine]:
    if name not in ENGINES and name in _LAZY:
        importlib.import_module(_LAZY[name])
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown eval engine {name!r}; known: "
                         f"{', '.join(sorted(set(ENGINES) | set(_LAZY)))}") from None


def make_engine(name: str, model: Any, **kwargs: Any) -> Engine:
    """Build engine `name` over `model` (an MLLM, a checkpoint dir, or a causal-LM dir)."""
    return get_engine(name)(model, **kwargs)


def engine_factory(name: str, **kwargs: Any) -> Callable[[Any], Engine]:
    """A picklable `model -> Engine` factory (for the Evaluator and Ray actors)."""
    return _Factory(name, kwargs)


@dataclass
class _Factory:
    name: str
    kwargs: dict

    def __call__(self, model: Any) -> Engine:
        return make_engine(self.name, model, **self.kwargs)
