"""Engines: batched greedy generation equals per-sample generation (with and without
images, GPT-NeoX and Llama), log-likelihoods equal a hand computation from the logits
(lm-eval's definition), peft-wrapped models and checkpoint dirs work, the registry and
the vLLM backend's error without vllm."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mllmcl_ray.config import ModelSpec
from mllmcl_ray.eval.engine.base import (
    EngineUnavailable,
    GenRequest,
    encode_pair,
    get_engine,
    make_engine,
    split_context_continuation,
)
from mllmcl_ray.eval.engine.hf import HFEngine
from mllmcl_ray.models.build import build_mllm, save_mllm
from mllmcl_ray.models.tokenizers import train_bpe_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


TEXTS = ["a red circle on the left and a blue square", "what colour is the circle? red",
         "the cat sat on the mat with a green hat", "Question: who has the ball?\nAnswer: Anna"] * 40


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TEXTS, vocab_size=320)


def tiny(tok, family: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               vocab_size=len(tok), max_position_embeddings=256)
    if family == "llama":
        cfg["num_key_value_heads"] = 2
    spec = ModelSpec(name=f"tiny-{family}", family=family, llm_config=cfg, template="micro",
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8))
    return build_mllm(spec, tokenizer=tok)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(32, 32), (40, 24), (24, 48)]):
        p = d / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def requests(mllm, images):
    t = mllm.template
    text = [t.prompt([{"from": "human", "value": q}]) for q in
            ["what colour is the circle?", "the cat sat", "hi",
             "a red circle on the left and a blue square and what is it"]]
    vis = [t.prompt([{"from": "human", "value": "<image>\n" + q}]) for q in
           ["what colour?", "the cat sat on the mat with", "a"]]
    return ([GenRequest(p, None, n) for p, n in zip(text, [8, 5, 8, 3])]
            + [GenRequest(p, img, n) for p, img, n in zip(vis, images, [6, 4, 6])])


def reference_generate(mllm, req: GenRequest, engine: HFEngine) -> str:
    """Plain per-sample `model.generate` (no padding, no batching)."""
    ids = torch.tensor([engine.encode_prompt(req.prompt, req.image is not None)])
    kw = {}
    if req.image is not None:
        from mllmcl_ray.data.images import pixel_values

        kw["pixel_values"] = pixel_values(mllm.image_processor, [req.image])
    out = mllm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                              max_new_tokens=req.max_new_tokens, do_sample=False,
                              pad_token_id=mllm.tokenizer.pad_token_id,
                              eos_token_id=mllm.tokenizer.eos_token_id, **kw)
    new = out[0, ids.shape[1]:].tolist()
    if mllm.tokenizer.eos_token_id in new:
        new = new[:new.index(mllm.tokenizer.eos_token_id)]
    return mllm.tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_batched_equals_unbatched(tok, images, family):
    m = tiny(tok, family)
    reqs = requests(m, images)
    batched = HFEngine(m, batch_size=8)
    single = HFEngine(m, batch_size=1)
    a = batched.generate(reqs)
    b = single.generate(reqs)
    assert a == b
    assert batched.last_token_ids == single.last_token_ids
    assert [len(t) <= r.max_new_tokens for t, r in zip(batched.last_token_ids, reqs)] == [True] * len(reqs)
    ref = [reference_generate(m, r, batched) for r in reqs]
    assert a == ref
    # images matter: the same prompt with two different images is fed two different inputs
    assert any(x for x in a[4:])


def hand_loglikelihood(model, tok, ctx: str, cont: str) -> tuple[float, bool]:
    c, k = encode_pair(tok, ctx, cont, tok.bos_token_id)
    ids = torch.tensor([c + k])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    pos = range(len(c) - 1, len(c) + len(k) - 1)
    total = sum(logp[p, t].item() for p, t in zip(pos, k))
    greedy = all(logp[p].argmax().item() == t for p, t in zip(pos, k))
    return total, greedy


def greedy_pair(model, tok, contexts):
    """A (context, continuation) whose continuation is the model's argmax token."""
    for ctx in contexts:
        ids = tok(ctx, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            t = model(input_ids=torch.tensor([ids])).logits[0, -1].argmax().item()
        cont = tok.decode([t])
        if cont.isprintable() and cont.strip() and encode_pair(tok, ctx, cont, None)[1] == [t]:
            return ctx, cont
    return None


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_loglikelihood_matches_hand_computation(tok, family):
    m = tiny(tok, family, seed=1)
    eng = HFEngine(m, batch_size=3, max_batch_tokens=64)
    contexts = ["the cat sat on", "what colour is the circle?", "a red", "Question: who",
                "the mat with a", "blue", "on the left and", "circle"]
    pairs = [("the cat sat on", " the mat"), ("", "hello there"),
             ("what colour is the circle? ", "red"), ("a", " b c d e f"),
             ("Question: who has the ball?\nAnswer:", " Anna")]
    gp = greedy_pair(m.model, tok, contexts)
    assert gp is not None
    pairs.append(gp)
    got = eng.loglikelihood(pairs)
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        h_ll, h_greedy = hand_loglikelihood(m.model, tok, ctx, cont)
        assert ll == pytest.approx(h_ll, abs=1e-4)
        assert greedy == h_greedy
    assert got[-1][1] is True
    # order-independent and batch-size-independent
    again = HFEngine(m, batch_size=1).loglikelihood(pairs[::-1])[::-1]
    assert [g for _, g in again] == [g for _, g in got]
    assert [v for v, _ in again] == pytest.approx([v for v, _ in got], abs=1e-4)


def test_encode_pair_is_lm_eval_rule(tok):
    assert split_context_continuation("Answer: ", "Paris") == ("Answer:", " Paris")
    c, k = encode_pair(tok, "the cat sat on ", "the mat", None)
    assert tok.decode(k) == " the mat"
    assert encode_pair(tok, "", "red", 7)[0] == [7]


def test_peft_wrapped_and_checkpoint_dir(tok, images, tmp_path):
    from peft import LoraConfig, get_peft_model

    m = tiny(tok, "gpt_neox", seed=2)
    reqs = requests(m, images)
    plain = HFEngine(m, batch_size=8).generate(reqs)
    ll = HFEngine(m).loglikelihood([("the cat", " sat on")])
    save_mllm(m, tmp_path / "ckpt")
    from_dir = make_engine("transformers", str(tmp_path / "ckpt"), batch_size=4)
    assert from_dir.generate(reqs) == plain
    assert from_dir.prompt_version == "micro-v1"
    # LoRA with B = 0 leaves outputs unchanged; the engine runs through the peft wrapper
    m.model = get_peft_model(m.model, LoraConfig(r=4, target_modules=["query_key_value"]))
    wrapped = HFEngine(m, batch_size=8)
    assert wrapped.generate(reqs) == plain
    assert wrapped.loglikelihood([("the cat", " sat on")])[0][0] == pytest.approx(ll[0][0], abs=1e-5)
    assert wrapped.embed(["red", "the cat"]).shape == (2, 32)


def test_registry_and_vllm_error():
    assert get_engine("transformers") is HFEngine
    with pytest.raises(ValueError, match="unknown eval engine"):
        get_engine("nope")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(EngineUnavailable, match=r"pip install 'mllmcl-ray\[vllm\]'.*GPU"):
            make_engine("vllm", "/nonexistent")
    else:  # pragma: no cover - GPU machines
        pytest.skip("vllm is installed")


def test_prompt_image_mismatch_is_an_error(tok, images):
    eng = HFEngine(tiny(tok, "gpt_neox"))
    with pytest.raises(ValueError, match="no image"):
        eng.generate([GenRequest("<image> hi", None, 2)])
    with pytest.raises(ValueError, match="exactly one"):
        eng.generate([GenRequest("hi", images[0], 2)])


def test_sampling_requests_reach_the_generation_config(tok):
    """The CoIN judge samples (temperature 0.7, top-p 0.8, repetition penalty 1.05); a
    greedy request keeps do_sample=False; one batch never mixes the two."""
    m = tiny(tok, "gpt_neox")
    eng = HFEngine(m, batch_size=4)
    greedy = eng._generation_config(8, GenRequest("x", None, 8))
    assert greedy.do_sample is False
    sampled = eng._generation_config(20, GenRequest("x", None, 20, temperature=0.7, top_p=0.8,
                                                    repetition_penalty=1.05))
    assert (sampled.do_sample, sampled.temperature, sampled.top_p, sampled.repetition_penalty) == (
        True, 0.7, 0.8, 1.05)
    with pytest.raises(ValueError, match="mixes sampling"):
        eng._generate_batch([[1, 2], [3]], [GenRequest("a", None, 2),
                                            GenRequest("b", None, 2, temperature=0.7)])
    torch.manual_seed(0)
    out = eng.generate([GenRequest(m.template.prompt([{"from": "human", "value": "hi"}]), None, 4,
                                   temperature=0.7, top_p=0.8, repetition_penalty=1.05)])
    assert len(out) == 1 and len(eng.last_token_ids[0]) <= 4


def test_chat_prompt_is_the_engine_base_contract(tok):
    from mllmcl_ray.eval.engine.base import Engine

    m = tiny(tok, "gpt_neox")
    assert HFEngine(m).chat_prompt("hi", system="sys") == m.template.text_prompt("hi")

    class Bare(Engine):  # no template, no tokenizer chat template: system + message
        def generate(self, requests):
            return []

        def loglikelihood(self, pairs):
            return []

    assert Bare().chat_prompt("hi", system="sys") == "sys\n\nhi"
    assert Bare().chat_prompt("hi") == "hi"


def test_vllm_serves_plain_checkpoints_and_falls_back_once(tmp_path, capsys):
    """vLLM is chosen for plain LLaVA checkpoints; MoELoRA's (unmerged experts) and the
    base model (built from its spec) go to transformers, said once per reason."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from spine_world import tiny_run_config

    from mllmcl_ray.eval.service import EngineWorker, ModelRef

    cfg = tiny_run_config(tmp_path)
    assert ModelRef("step", cfg, "/c").vllm_servable() == (True, "")
    assert not ModelRef("base", cfg).vllm_servable()[0]
    cfg.method.name = "lora"
    assert ModelRef("step", cfg, "/c").vllm_servable()[0]  # merged at every task end
    cfg.method.name = "moelora"
    ok, why = ModelRef("step", cfg, "/c").vllm_servable()
    assert not ok and "moelora" in why
    for k in ("a", "b"):  # MoELoRA checkpoints without experts yet: plain LLaVA weights
        save_mllm(build_mllm(cfg.model), tmp_path / k / "model")
    cfg.eval.backend = "vllm"
    worker = EngineWorker(cfg.eval, str(tmp_path / "res"))
    engines = [worker._engine(ModelRef("step", cfg, str(tmp_path / k))) for k in ("a", "b")]
    assert all(isinstance(e, HFEngine) for e in engines)
    assert capsys.readouterr().out.count("vLLM cannot serve it") == 1


@pytest.mark.parametrize("family", ["gpt_neox", "phi", "llama"])
def test_vllm_llava_equals_transformers(tok, images, tmp_path, family):
    """The project's LLaVA checkpoints served by vLLM: greedy answers equal the
    transformers engine's, with and without images (GPU machines with the vllm extra)."""
    pytest.importorskip("vllm", reason="vLLM is the GPU-cluster extra (it pins a CUDA torch); "
                                       "not installed beside the CPU torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM's LLaVA needs a CUDA GPU here")
    m = tiny(tok, family)
    save_mllm(m, tmp_path / "ckpt")
    reqs = requests(m, images)
    want = HFEngine(m, batch_size=8).generate(reqs)
    got = make_engine("vllm", str(tmp_path / "ckpt"), gpu_memory_utilization=0.3,
                      enforce_eager=True).generate(reqs)
    assert got == want
