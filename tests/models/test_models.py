"""MLLM builder: build, forward, backward, generate, freezing, save/load, label masking."""
import json

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from mllmcl_ray.config import ConfigError, ModelSpec
from mllmcl_ray.models.build import (build_mllm, load_mllm, parts, save_mllm, set_trainable)
from mllmcl_ray.models.templates import IGNORE_INDEX, get_template
from mllmcl_ray.models.tokenizers import encode_conversation, load_tokenizer
from spine_world import make_tokenizer, tiny_spec

CONV = [{"from": "human", "value": "<image>\nWhat colour is the image?"},
        {"from": "gpt", "value": "red"}]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    make_tokenizer(d)
    return d


def _inputs(m, conv=CONV):
    ids, labels = encode_conversation(m.tokenizer, m.template, conv, n_image_tokens=m.n_image_tokens,
                                      max_len=64)
    torch.manual_seed(0)
    return torch.tensor([ids]), torch.tensor([labels]), torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("family", ["gpt_neox", "llama", "phi"])
def test_build_forward_backward_generate(tok_dir, family):
    torch.manual_seed(0)
    tok = load_tokenizer(str(tok_dir))
    m = build_mllm(tiny_spec(tok_dir, family, len(tok)))
    assert isinstance(m.model, LlavaForConditionalGeneration)
    assert m.model.config.text_config.model_type == family
    assert m.n_image_tokens == 16
    # the projector is LLaVA-1.5's 2-layer GELU MLP
    proj = parts(m.model)["projector"]
    assert type(proj.act).__name__ == "GELUActivation"
    ids, labels, pv = _inputs(m)
    out = m.model(input_ids=ids, pixel_values=pv, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert proj.linear_1.weight.grad is not None and proj.linear_1.weight.grad.abs().sum() > 0
    # the tower is frozen: no gradient
    assert all(p.grad is None for p in parts(m.model)["vision_tower"].parameters())
    prompt_ids, _ = encode_conversation(m.tokenizer, m.template, CONV,
                                        n_image_tokens=m.n_image_tokens, max_len=64,
                                        for_generation=True)
    g = m.model.generate(input_ids=torch.tensor([prompt_ids]), pixel_values=pv, max_new_tokens=4,
                         do_sample=False)
    assert g.shape[1] == len(prompt_ids) + 4


def test_save_load_identical_logits(tok_dir, tmp_path):
    torch.manual_seed(1)
    tok = load_tokenizer(str(tok_dir))
    m = build_mllm(tiny_spec(tok_dir, "gpt_neox", len(tok)))
    ids, _, pv = _inputs(m)
    save_mllm(m, tmp_path / "ck")
    assert (tmp_path / "ck" / "model.safetensors").exists()
    # plain transformers opens it
    plain = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "ck"))
    m2 = load_mllm(tmp_path / "ck")
    with torch.no_grad():
        a = m.model(input_ids=ids, pixel_values=pv).logits
        b = m2.model(input_ids=ids, pixel_values=pv).logits
        c = plain(input_ids=ids, pixel_values=pv).logits
    assert torch.equal(a, b) and torch.equal(a, c)
    assert m2.template.name == "micro"


def test_phi_lm_head_bias_survives_round_trip(tok_dir, tmp_path):
    tok = load_tokenizer(str(tok_dir))
    m = build_mllm(tiny_spec(tok_dir, "phi", len(tok)))
    with torch.no_grad():
        m.model.lm_head.bias.fill_(0.25)
    save_mllm(m, tmp_path / "phi")
    m2 = load_mllm(tmp_path / "phi")
    assert m2.model.lm_head.bias is not None
    assert torch.allclose(m2.model.lm_head.bias, torch.full_like(m2.model.lm_head.bias, 0.25))


def test_freezing_policies(tok_dir):
    tok = load_tokenizer(str(tok_dir))
    m = build_mllm(tiny_spec(tok_dir, "gpt_neox", len(tok)))
    p = parts(m.model)

    def trains(mod):
        return any(x.requires_grad for x in mod.parameters())

    set_trainable(m.model, "projector")
    assert trains(p["projector"]) and not trains(p["language_model"]) and not trains(p["vision_tower"])
    set_trainable(m.model, "projector+llm")
    assert trains(p["projector"]) and trains(p["language_model"]) and trains(p["lm_head"])
    assert not trains(p["vision_tower"])
    with pytest.raises(ConfigError, match="train policy"):
        set_trainable(m.model, "everything")


def test_label_masking_only_answers(tok_dir):
    tok = load_tokenizer(str(tok_dir))
    t = get_template("micro")
    conv = CONV + [{"from": "human", "value": "And again?"}, {"from": "gpt", "value": "blue"}]
    ids, labels = encode_conversation(tok, t, conv, n_image_tokens=16, max_len=128)
    assert len(ids) == len(labels)
    kept = [i for i, l in zip(ids, labels) if l != IGNORE_INDEX]
    # exactly the two answers and their end-of-turn tokens are trained on
    assert tok.decode(kept) == "red<|endoftext|>blue<|endoftext|>"
    img = tok.convert_tokens_to_ids("<image>")
    assert ids.count(img) == 16
    assert all(l == IGNORE_INDEX for i, l in zip(ids, labels) if i == img)


def test_templates_render_paper_formats():
    conv = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    p = get_template("pythia").prompt(conv)
    assert p.startswith("<|endoftext|>A chat between") and p.endswith(" USER: Hi ASSISTANT: ")
    v = get_template("vicuna_v1").segments(conv)
    assert v[0][0].endswith("USER: Hi ASSISTANT: ") and v[1] == ("Hello</s>", True)
    plain = get_template("plain").segments([{"from": "human", "value": "<image>"},
                                             {"from": "gpt", "value": "a red image"}])
    assert plain == [("<image>", False), ("a red image\n", True)]


def test_unknown_family_and_missing_model_are_clear(tok_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown LLM family 'mamba'"):
        build_mllm(ModelSpec(family="mamba", tokenizer=str(tok_dir)))
    with pytest.raises(FileNotFoundError, match="model.llm"):
        build_mllm(ModelSpec(name="x", llm=str(tmp_path / "nope"), tokenizer=str(tok_dir),
                             vision_config={"image_size": 32, "patch_size": 8}))


def test_tower_autocast_runs_the_frozen_tower_in_bf16(tok_dir):
    """FSDP2's bf16 policy skips the tower (it is not sharded): `tower_autocast` makes it
    compute in bf16 while its weights stay fp32; None leaves it in its weights' dtype."""
    from mllmcl_ray.models.training import MLLMForTraining

    torch.manual_seed(0)
    tok = load_tokenizer(str(tok_dir))
    m = build_mllm(tiny_spec(tok_dir, "gpt_neox", len(tok)))
    ids, _, pix = _inputs(m)
    seen = []  # the dtype the tower's first matmul computed in (residual sums stay fp32)
    first_linear = next(x for x in parts(m.model)["vision_tower"].modules()
                        if isinstance(x, torch.nn.Linear))
    first_linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    mod = MLLMForTraining(m.model).eval()
    with torch.no_grad():
        fp32 = mod(ids, torch.ones_like(ids), pixel_values=pix)
        mod.tower_autocast = torch.bfloat16
        bf16 = mod(ids, torch.ones_like(ids), pixel_values=pix)
    assert seen == [torch.float32, torch.bfloat16]
    assert {p.dtype for p in parts(m.model)["vision_tower"].parameters()} == {torch.float32}
    assert bf16.dtype == fp32.dtype == torch.float32  # only the tower was cast
    assert not torch.equal(bf16, fp32) and torch.allclose(bf16, fp32, atol=0.1)
