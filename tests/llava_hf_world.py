"""A tiny LLaVA saved exactly as llava-hf checkpoints are (shared by tests/emt and
tests/models): config, LlavaProcessor with its own image processor and a llava-1.5-style
chat template, no project metadata; beside it the random tiny CLIP its tower comes from."""
from __future__ import annotations

from pathlib import Path

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
