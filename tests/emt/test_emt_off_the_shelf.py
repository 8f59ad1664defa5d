"""EMT on an off-the-shelf llava-hf checkpoint (Zhai §4.1, Fig. 4): a tiny LLaVA saved in
exactly the llava-hf layout (config, LlavaProcessor with its own image processor and a
llava-1.5-style chat template, no project metadata) runs through
`studies/emt.py --models DIR --preset micro` and yields EMT rows and its tower's CLIP
zero-shot rows."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mllmcl_ray.models.tokenizers import train_bpe_tokenizer

# llava-hf/llava-1.5-7b-hf's chat template, without its {% generation %} markers
LLAVA15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

WORDS = ("What is the number object in the image? Please only answer a single "
         "zero one two three four five six seven eight nine circle square triangle cross "
         "diamond star a USER: ASSISTANT: The")


def make_llava_hf(root: Path) -> tuple[Path, Path]:
    """(llava dir, clip dir): a random tiny CLIP (both towers, saved with a tokenizer) and
    a tiny LLaVA over its vision tower, saved as llava-hf checkpoints are."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessorPil, CLIPModel, LlamaConfig,
                              LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor)

    torch.manual_seed(0)
    tok = train_bpe_tokenizer([WORDS] * 20, vocab_size=300)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=32, patch_size=8)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=len(tok), max_position_embeddings=32,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=vision, projection_dim=16))
    clip_dir = root / "clip"
    clip.save_pretrained(clip_dir)
    tok.save_pretrained(clip_dir)
    CLIPImageProcessorPil(size={"shortest_edge": 32},
                          crop_size={"height": 32, "width": 32}).save_pretrained(clip_dir)
    cfg = LlavaConfig(vision_config=clip.config.vision_config,
                      text_config=LlamaConfig(hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=1, num_attention_heads=2,
                                              num_key_value_heads=2, vocab_size=len(tok),
                                              max_position_embeddings=512,
                                              eos_token_id=tok.eos_token_id,
                                              pad_token_id=tok.pad_token_id),
                      image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_select_strategy="default", vision_feature_layer=-2,
                      image_seq_length=16)
    model = LlavaForConditionalGeneration(cfg)
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    llava_dir = root / "llava-tiny-hf"
    model.save_pretrained(llava_dir)
    proc = LlavaProcessor(image_processor=CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        image_token="<image>", num_additional_image_tokens=1, chat_template=LLAVA15_TEMPLATE)
    proc.save_pretrained(llava_dir)
    return llava_dir, clip_dir


def load_emt_study():
    path = Path(__file__).resolve().parents[2] / "studies" / "emt.py"
    spec = importlib.util.spec_from_file_location("emt_study_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_llava_hf_checkpoint_through_emt_study(tmp_path):
    from mllmcl_ray.results import PredictionStore, ResultStore

    llava_dir, clip_dir = make_llava_hf(tmp_path)
    assert not (llava_dir / "mllmcl.json").exists()  # nothing of the project's
    out = tmp_path / "out"
    rc = load_emt_study().main(["--models", str(llava_dir), "--preset", "micro",
                                "--world-size", "tiny", "--clip", str(clip_dir),
                                "--eval-samples", "4", "--out", str(out), "--quiet"])
    assert rc == 0
    df = ResultStore(out / "results").read()
    emt = df[df.method == "off_the_shelf"]
    got = set(zip(emt.dataset, emt.metric))
    for ds in ("digits", "shapes"):
        assert {(ds, "emt_exact"), (ds, "emt_nearest"), (ds, "emt_exact_extrinsic")} <= got
    assert set(emt.trained_task) == {"zero_shot"} and (emt.n == 4).all()
    # the nearest-label decider embeds with the tower's own CLIP text model (EMT §7 (1))
    near = emt[emt.metric == "emt_nearest"]
    assert {json.loads(d)["embedder"] for d in near.decoding} == {f"clip-text:{clip_dir}"}
    assert set(emt.model) == {str(llava_dir)}
    assert json.loads(emt.method_params.iloc[0])["vision_tower"] == "clip-h32-l2-32px-p8"
    # the prompt is the checkpoint's own chat template, EMT's noun per dataset, no brackets
    assert all(v.startswith("chat_template:") for v in emt.prompt_version)
    preds = PredictionStore(out / "results").read()
    digit = preds[preds.dataset == "digits"].prompt.iloc[0]
    assert digit.startswith("USER: <image>\nWhat is the number in the image? Please only "
                            "answer a single number in zero, one, two,")
    assert digit.endswith("nine. ASSISTANT:")
    clip = df[df.metric == "clip_zero_shot"]
    assert set(clip.dataset) == {"digits", "shapes"} and (clip.n == 4).all()
    assert set(clip.model) == {str(clip_dir)}
    assert json.loads(clip.method_params.iloc[0])["vision_tower"] == "clip-h32-l2-32px-p8"
    assert (out / "emt_models-report.html").exists()
