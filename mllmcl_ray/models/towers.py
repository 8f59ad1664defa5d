"""Which full CLIP checkpoint (text + vision towers) an MLLM's vision tower comes from.

EMT compares an MLLM with the zero-shot accuracy of its own vision encoder and decides
nearest labels with that CLIP's text tower; a llava-hf checkpoint stores only the vision
tower's config, not its origin. `clip_for_tower` answers, in this order:

1. an explicit choice (``studies/emt.py --clip MODEL=CLIP``);
2. a project checkpoint's ``spec.vision`` (the CLIP it was built from);
3. the known off-the-shelf checkpoints (`KNOWN_MODELS`: hub id -> CLIP hub id);
4. the tower's shape (`KNOWN_TOWERS`: CLIP vision (hidden, layers, image, patch) ->
   the OpenAI CLIP of that shape, e.g. ViT-L/14-336 for LLaVA-1.5);
otherwise None (no CLIP row; the nearest-label decision is skipped).
"""
from __future__ import annotations

KNOWN_MODELS: dict[str, str] = {
    "llava-hf/llava-1.5-7b-hf": "openai/clip-vit-large-patch14-336",
    "llava-hf/llava-1.5-13b-hf": "openai/clip-vit-large-patch14-336",
    "llava-hf/bakLlava-v1-hf": "openai/clip-vit-large-patch14-336",
}

# (hidden_size, num_hidden_layers, image_size, patch_size) -> OpenAI CLIP hub id
KNOWN_TOWERS: dict[tuple[int, int, int, int], str] = {
    (1024, 24, 336, 14): "openai/clip-vit-large-patch14-336",
    (1024, 24, 224, 14): "openai/clip-vit-large-patch14",
    (768, 12, 224, 16): "openai/clip-vit-base-patch16",
    (768, 12, 224, 32): "openai/clip-vit-base-patch32",
}


def tower_key(vision_config) -> tuple[int, int, int, int]:
    vc = vision_config
    return (int(vc.hidden_size), int(vc.num_hidden_layers), int(vc.image_size), int(vc.patch_size))


def tower_name(vision_config) -> str:
    """A short name of a tower shape for grouping (Fig. 4 groups models by encoder)."""
    known = KNOWN_TOWERS.get(tower_key(vision_config))
    if known:
        return known.split("/")[-1]
    h, n, s, p = tower_key(vision_config)
    return f"clip-h{h}-l{n}-{s}px-p{p}"


def clip_for_tower(model_id: str, vision_config, *, explicit: str | None = None,
                   spec_vision: str | None = None) -> str | None:
    """The CLIP checkpoint of a model's vision tower (see the module doc), or None."""
    if explicit:
        return explicit
    if spec_vision:
        return spec_vision
    if model_id in KNOWN_MODELS:
        return KNOWN_MODELS[model_id]
    return KNOWN_TOWERS.get(tower_key(vision_config))
