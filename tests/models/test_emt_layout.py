"""The llava-hf checkpoint layout (models/build.py save path, models/chat_template.py):
a project checkpoint answers a VQA prompt in plain transformers (no project import, in a
subprocess) exactly as the project's engine does; the Jinja chat template equals the
project's prompt format token for token; off-the-shelf llava-hf checkpoints go through
the same engine with their own processor and chat template."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from mllmcl_ray.models.chat_template import jinja_chat_template, llava_json_to_messages
from mllmcl_ray.models.templates import TEMPLATES
from spine_world import make_tokenizer, tiny_spec

CONVS = [
    [{"from": "human", "value": "<image>\nWhat colour is the image? "}],
    [{"from": "human", "value": "<image>\nWhat colour is the image?"},
     {"from": "gpt", "value": " red "},
     {"from": "human", "value": "Where is the 'box' \"now\"?"}],
    [{"from": "human", "value": "<image>\nWhere is the box?"}, {"from": "gpt", "value": "left"}],
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny project MLLM saved with save_mllm, and a non-square test image."""
    from mllmcl_ray.models.build import build_mllm, save_mllm

    root = tmp_path_factory.mktemp("layout")
    make_tokenizer(root / "tok")
    import torch

    torch.manual_seed(0)
    mllm = build_mllm(tiny_spec(root / "tok"))
    ckpt = save_mllm(mllm, root / "ckpt")
    img = Image.new("RGB", (40, 24), (200, 30, 30))
    for x in range(5, 15):
        for y in range(5, 15):
            img.putpixel((x, y), (255, 255, 255))
    img.save(root / "img.png")
    return mllm, ckpt, root / "img.png"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_jinja_template_equals_project_format(name, saved):
    """Rendered text and its tokens equal `ConversationTemplate.prompt` for every
    registered template on single- and multi-turn conversations (quotes, stray spaces)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = saved[0].tokenizer
    t = TEMPLATES[name]
    for conv in CONVS:
        want = t.prompt(conv)
        turns = conv[:-1] if conv[-1]["from"] == "gpt" else conv
        got, _ = render_jinja_template(conversations=[llava_json_to_messages(turns)],
                                       chat_template=jinja_chat_template(t),
                                       add_generation_prompt=True)
        assert got[0] == want
        assert tok(got[0], add_special_tokens=False)["input_ids"] == \
            tok(want, add_special_tokens=False)["input_ids"]


def test_saved_processor_config(saved):
    _, ckpt, _ = saved
    pc = json.loads((ckpt / "processor_config.json").read_text())
    assert pc["patch_size"] == 8
    assert pc["num_additional_image_tokens"] == 1
    assert pc["vision_feature_select_strategy"] == "default"
    assert (ckpt / "chat_template.jinja").exists() or "chat_template" in pc


PLAIN = textwrap.dedent('''
    import json, sys, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    ckpt, img, question = sys.argv[1], sys.argv[2], sys.argv[3]
    proc = AutoProcessor.from_pretrained(ckpt)
    model = AutoModelForImageTextToText.from_pretrained(ckpt).eval()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
    inputs = proc(text=prompt, images=Image.open(img).convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    eos = proc.tokenizer.eos_token_id
    new = new[:new.index(eos)] if eos in new else new
    print(json.dumps({"prompt": prompt, "ids": inputs["input_ids"][0].tolist(),
                      "pixels": inputs["pixel_values"][0].flatten().tolist()[:4000],
                      "tokens": new, "answer": proc.decode(new, skip_special_tokens=True).strip()}))
''')


@pytest.mark.slow
def test_plain_transformers_answers_as_the_engine(saved, tmp_path):
    """AutoProcessor + apply_chat_template + AutoModelForImageTextToText.generate in a
    fresh interpreter (no project import) gives the engine's prompt, input ids, pixels
    (letterboxed 40x24 image), generated tokens and answer."""
    import torch

    from mllmcl_ray.eval.engine.base import GenRequest
    from mllmcl_ray.eval.engine.hf import HFEngine

    _, ckpt, img = saved
    q = "What colour is the image?"
    script = tmp_path / "plain.py"
    script.write_text(PLAIN)
    res = subprocess.run([sys.executable, str(script), str(ckpt), str(img), q],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    plain = json.loads(res.stdout.strip().splitlines()[-1])
    eng = HFEngine(str(ckpt), device="cpu")
    prompt = eng.conversation_prompt([{"from": "human", "value": "<image>\n" + q}])
    assert plain["prompt"] == prompt
    assert plain["ids"] == eng.encode_prompt(prompt, True)
    px = eng._pixels([str(img)])[0].flatten()[:4000]
    assert torch.allclose(px, torch.tensor(plain["pixels"]), atol=1e-6)
    # ... and the pixels training saw (in-memory CLIP processor after the project letterbox)
    from mllmcl_ray.data.images import pixel_values

    trained = pixel_values(saved[0].image_processor, [str(img)])[0].flatten()[:4000]
    assert type(saved[0].image_processor).__name__ == "CLIPImageProcessorPil"
    assert torch.allclose(trained, torch.tensor(plain["pixels"]), atol=1e-6)
    [ans] = eng.generate([GenRequest(prompt, str(img), 8)])
    assert len(plain["tokens"]) > 0  # a real answer, not an immediate end-of-text
    assert eng.last_token_ids[0] == plain["tokens"]
    assert ans == plain["answer"]


def test_spec_init_starts_from_a_saved_checkpoint(saved, tmp_path):
    """ModelSpec.init (EMT starts from an instruction-tuned MLLM, issue 10 item 6b): the
    project checkpoint's weights and template, or an off-the-shelf llava-hf checkpoint
    prompted with spec.template; projector + LLM trainable, tower frozen."""
    import dataclasses

    import torch

    from mllmcl_ray.config import ModelSpec
    from mllmcl_ray.models.build import build_mllm, parts
    from llava_hf_world import make_llava_hf

    mllm, ckpt, _ = saved
    m = build_mllm(dataclasses.replace(mllm.spec, init=str(ckpt)))
    for (k, a), b in zip(mllm.model.state_dict().items(), m.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert m.template.name == "micro"
    p = parts(m.model)
    assert not any(x.requires_grad for x in p["vision_tower"].parameters())
    assert all(x.requires_grad for x in p["projector"].parameters())
    assert all(x.requires_grad for x in p["language_model"].parameters())
    hf_dir, _ = make_llava_hf(tmp_path)
    h = build_mllm(ModelSpec(name="hf", family="llama", init=str(hf_dir), template="vicuna_v1"))
    assert h.template.name == "vicuna_v1" and h.processor is not None
    assert h.n_image_tokens == 16
