"""Build, freeze, save and load LLaVA-1.5-style MLLMs as plain transformers models.

The model is a `transformers.LlavaForConditionalGeneration`: a CLIP vision tower (always
frozen; penultimate-layer patch features without CLS), the 2-layer GELU MLP projector
(`multi_modal_projector`: linear -> GELU -> linear), and any causal LM. Nothing here is a
hand-written transformer: the LM and the tower are loaded with `from_pretrained` (hub id
or local dir) or built from a config (tests, the micro preset), then placed into the LLaVA
container. Checkpoints are `save_pretrained` directories (safetensors) in exactly the
llava-hf layout: the model, and a `LlavaProcessor` (tokenizer, a `LlavaImageProcessorPil`
with ``do_pad=True`` — LLaVA-1.5's letterbox with the CLIP mean colour, the same pixels
as `data.images.pixel_values` —, ``patch_size``, ``num_additional_image_tokens=1``,
``vision_feature_select_strategy`` and the project's conversation template as a Jinja
chat template, models/chat_template.py), beside `mllmcl.json` (template, spec). A plain
transformers user prompts a saved checkpoint with ``AutoProcessor`` +
``apply_chat_template`` + ``AutoModelForImageTextToText.generate`` and gets the project
engine's answer (tests/models/test_emt_layout.py). `load_hf_llava` opens any llava-hf
checkpoint (hub id or dir) with its own processor and chat template.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from ..config import ConfigError, ModelSpec
from .families import family_for_model_type, get_family
from .templates import ConversationTemplate, get_template
from .tokenizers import ensure_special_tokens, image_token_id, load_tokenizer

META_FILE = "mllmcl.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class MLLM:
    """A built MLLM with what it needs to read and write text and images."""

    model: Any  # LlavaForConditionalGeneration (possibly wrapped by a CL method, e.g. peft)
    tokenizer: Any  # PreTrainedTokenizerFast with the image token
    image_processor: Any  # CLIP image processor
    template: ConversationTemplate | None  # None: an off-the-shelf model (its chat template)
    spec: ModelSpec
    processor: Any = None  # the checkpoint's LlavaProcessor (None: built in memory)

    @property
    def n_image_tokens(self) -> int:
        """Image tokens per image: patches, plus the CLS token under the "full" strategy."""
        cfg = self.llava_config
        vc = cfg.vision_config
        full = getattr(cfg, "vision_feature_select_strategy", "default") == "full"
        return (vc.image_size // vc.patch_size) ** 2 + int(full)

    @property
    def llava_config(self) -> LlavaConfig:
        return unwrap(self.model).config

    @property
    def image_size(self) -> int:
        return self.llava_config.vision_config.image_size


def unwrap(model) -> LlavaForConditionalGeneration:
    """The LlavaForConditionalGeneration inside a DDP/FSDP/peft wrapper."""
    m = model
    for _ in range(6):
        if isinstance(m, LlavaForConditionalGeneration):
            return m
        if hasattr(m, "module"):
            m = m.module
        elif hasattr(m, "get_base_model"):
            m = m.get_base_model()
        elif hasattr(m, "base_model") and m.base_model is not m:
            m = m.base_model
        else:
            break
    if isinstance(m, LlavaForConditionalGeneration):
        return m
    raise TypeError(f"no LlavaForConditionalGeneration inside {type(model).__name__}")


def parts(model) -> dict[str, torch.nn.Module]:
    """The vision tower, projector, language model (decoder) and LM head."""
    m = unwrap(model)
    return {"vision_tower": m.model.vision_tower, "projector": m.model.multi_modal_projector,
            "language_model": m.model.language_model, "lm_head": m.lm_head}


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def llm_parameter_count(model) -> int:
    p = parts(model)
    n = count_parameters(p["language_model"])
    head = p["lm_head"].weight
    emb = p["language_model"].get_input_embeddings().weight
    return n + (0 if head.data_ptr() == emb.data_ptr() else head.numel())


# ---------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------
def _attn_kwargs(spec: ModelSpec) -> dict:
    """`attn_implementation` for transformers (empty: its default, sdpa where supported)."""
    return {"attn_implementation": spec.attn_implementation} if spec.attn_implementation else {}


def _load_llm(spec: ModelSpec, dtype: torch.dtype):
    if spec.llm:
        try:
            return AutoModelForCausalLM.from_pretrained(
                spec.llm, dtype=dtype, trust_remote_code=spec.trust_remote_code,
                **_attn_kwargs(spec))
        except OSError as e:
            raise _model_path_error(
                f"model.llm {spec.llm!r} for model {spec.name!r} is neither a local directory "
                "with a saved causal LM nor a hub id available offline. Download it on a "
                "machine with internet (huggingface-cli download) and point model.llm at the "
                f"local dir. Cause: {e}") from e
    if not spec.llm_config:
        raise ConfigError(f"model {spec.name!r}: set model.llm (hub id or dir) or model.llm_config")
    cfg_kwargs = dict(spec.llm_config)
    model_type = cfg_kwargs.pop("model_type", get_family(spec.family).model_type)
    config = AutoConfig.for_model(model_type, **cfg_kwargs)
    return AutoModelForCausalLM.from_config(config, dtype=dtype, **_attn_kwargs(spec))


def _load_vision(spec: ModelSpec, dtype: torch.dtype) -> CLIPVisionModel:
    if spec.vision:
        try:
            return CLIPVisionModel.from_pretrained(spec.vision, dtype=dtype, **_attn_kwargs(spec))
        except OSError as e:
            raise _model_path_error(
                f"model.vision {spec.vision!r} for model {spec.name!r} is neither a local "
                "directory with a CLIP model nor a hub id available offline. Cause: {e}"
                .replace("{e}", str(e))) from e
    if not spec.vision_config:
        raise ConfigError(f"model {spec.name!r}: set model.vision or model.vision_config")
    cfg = CLIPVisionConfig(**spec.vision_config)
    if spec.attn_implementation:
        cfg._attn_implementation = spec.attn_implementation
    return CLIPVisionModel(cfg).to(dtype)


def make_image_processor(image_size: int, source: str | None = None):
    """CLIP preprocessing (resize shortest edge, centre crop, CLIP mean/std)."""
    from transformers import CLIPImageProcessorPil

    if source:
        try:
            return CLIPImageProcessorPil.from_pretrained(source)
        except OSError:
            pass
    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size})


def llava_image_processor(image_processor):
    """A `LlavaImageProcessorPil` with the settings of a CLIP image processor and
    ``do_pad=True`` (LLaVA-1.5's pad-to-square with the CLIP mean colour before resizing)."""
    from transformers import LlavaImageProcessorPil

    keys = ("size", "crop_size", "resample", "image_mean", "image_std", "do_resize",
            "do_center_crop", "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb")
    d = {k: getattr(image_processor, k) for k in keys if getattr(image_processor, k, None) is not None}
    return LlavaImageProcessorPil(do_pad=True, **d)


def llava_processor(mllm: MLLM):
    """The llava-hf `LlavaProcessor` of a project MLLM (see the module doc)."""
    from transformers import LlavaProcessor

    from .chat_template import jinja_chat_template
    from .templates import IMAGE_PLACEHOLDER

    cfg = mllm.llava_config
    return LlavaProcessor(image_processor=llava_image_processor(mllm.image_processor),
                          tokenizer=mllm.tokenizer, patch_size=cfg.vision_config.patch_size,
                          vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                          image_token=IMAGE_PLACEHOLDER, num_additional_image_tokens=1,
                          chat_template=jinja_chat_template(mllm.template))


def build_mllm(spec: ModelSpec, tokenizer=None) -> MLLM:
    """Assemble an MLLM from a spec: LM + CLIP tower + fresh projector, tower frozen; or,
    with ``spec.init``, open that LLaVA-format checkpoint (a project checkpoint with its
    template, or an off-the-shelf one prompted with ``spec.template``)."""
    if spec.init:
        return _init_mllm(spec)
    get_family(spec.family)  # fail early on an unknown family
    if spec.attn_implementation not in (None, "eager", "sdpa", "flash_attention_2",
                                        "flash_attention_3", "flex_attention"):
        raise ConfigError(f"model.attn_implementation {spec.attn_implementation!r} must be "
                          "eager, sdpa, flash_attention_2, flash_attention_3 or flex_attention")
    if spec.dtype not in _DTYPES:
        raise ConfigError(f"model.dtype {spec.dtype!r} must be one of {sorted(_DTYPES)}")
    dtype = _DTYPES[spec.dtype]
    if tokenizer is None:
        src = spec.tokenizer or spec.llm
        if not src:
            raise ConfigError(f"model {spec.name!r}: set model.tokenizer (a tokenizer dir)")
        tokenizer = load_tokenizer(src, spec.trust_remote_code)
    tokenizer = ensure_special_tokens(tokenizer)
    llm = _load_llm(spec, dtype)
    fam = family_for_model_type(llm.config.model_type)
    if fam.name != spec.family:
        raise ConfigError(f"model {spec.name!r}: model.family is {spec.family!r} but the LLM "
                          f"is a {llm.config.model_type!r} model (family {fam.name!r})")
    if len(tokenizer) > llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tokenizer))
    vision = _load_vision(spec, dtype)
    config = LlavaConfig(vision_config=vision.config, text_config=llm.config,
                         image_token_index=image_token_id(tokenizer),
                         projector_hidden_act="gelu", vision_feature_layer=spec.vision_feature_layer,
                         vision_feature_select_strategy="default",
                         image_seq_length=(vision.config.image_size // vision.config.patch_size) ** 2,
                         tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)))
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = llm.get_decoder()
    model.lm_head = llm.get_output_embeddings()
    proj = model.model.multi_modal_projector.to_empty(device="cpu")
    for mod in proj.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.reset_parameters()
    proj.to(dtype)
    model.config.text_config = llm.config
    if spec.attn_implementation:  # the container's init reset the sub-configs to its default
        model.set_attn_implementation(spec.attn_implementation)
    set_trainable(model, "projector+llm")
    model.eval()
    image_processor = make_image_processor(vision.config.image_size, spec.vision)
    return MLLM(model, tokenizer, image_processor, get_template(spec.template), spec)


def _init_mllm(spec: ModelSpec) -> MLLM:
    path = Path(spec.init)
    if (path / META_FILE).exists():
        m = load_mllm(path, spec)
    else:
        m = load_hf_llava(spec.init, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code)
        m.template = get_template(spec.template)
        m.tokenizer = ensure_special_tokens(m.tokenizer)
        m.spec = spec
    set_trainable(m.model, "projector+llm")
    return m


# ---------------------------------------------------------------------------------------
# freezing
# ---------------------------------------------------------------------------------------
TRAIN_POLICIES = ("projector", "projector+llm", "none")


def set_trainable(model, what: str) -> None:
    """Freezing policy: the vision tower never trains; `what` says what else does.

    - ``projector``: alignment stage, and EMT's linear fine-tuning;
    - ``projector+llm``: LLaVA fine-tuning (projector + the whole LLM);
    - ``none``: nothing (methods such as LoRA then unfreeze their own parameters).
    """
    if what not in TRAIN_POLICIES:
        raise ConfigError(f"train policy {what!r} must be one of {TRAIN_POLICIES}")
    p = parts(model)
    p["vision_tower"].requires_grad_(False)
    p["projector"].requires_grad_(what != "none")
    p["language_model"].requires_grad_(what == "projector+llm")
    p["lm_head"].requires_grad_(what == "projector+llm")


# ---------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------
def save_mllm(mllm: MLLM, path: str | Path, state_dict: dict | None = None,
              extra_meta: dict | None = None) -> Path:
    """Write a llava-hf-layout checkpoint dir: model (safetensors) + LlavaProcessor
    (tokenizer, padded CLIP image processor, image-token settings, Jinja chat template)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = unwrap(mllm.model)
    model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
    if mllm.template is not None:
        llava_processor(mllm).save_pretrained(str(path))
    else:  # an off-the-shelf model: keep its own processor
        (mllm.processor or mllm.tokenizer).save_pretrained(str(path))
    meta = {"template": mllm.template.name, "spec": dataclasses.asdict(mllm.spec)}
    meta.update(extra_meta or {})
    (path / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
    return path


def load_mllm(path: str | Path, spec: ModelSpec | None = None) -> MLLM:
    """Open a checkpoint written by `save_mllm` (plain transformers loading)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a model checkpoint (no config.json)")
    meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
    if spec is None:
        spec = ModelSpec(**meta["spec"]) if "spec" in meta else ModelSpec(name=path.name)
    model = LlavaForConditionalGeneration.from_pretrained(str(path), **_attn_kwargs(spec))
    _restore_lm_head_bias(model, path)
    model.eval()
    tok = ensure_special_tokens(load_tokenizer(str(path)))
    processor = None
    if (path / "processor_config.json").exists():
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(path))
        proc = processor.image_processor
    else:  # a checkpoint saved before the llava-hf layout
        proc = make_image_processor(model.config.vision_config.image_size, str(path))
    template = get_template(meta.get("template", spec.template))
    return MLLM(model, tok, proc, template, spec, processor)


def load_hf_llava(source: str, *, dtype: str | None = None,
                  trust_remote_code: bool = False) -> MLLM:
    """An off-the-shelf HF LLaVA-format checkpoint (hub id or dir, e.g.
    ``llava-hf/llava-1.5-7b-hf``) with its own processor, image preprocessing and chat
    template (``MLLM.template`` is None). Offline: from_pretrained honours HF_HUB_OFFLINE."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kw = {"dtype": _DTYPES[dtype]} if dtype else {}
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            source, trust_remote_code=trust_remote_code, **kw)
    except OSError as e:
        raise FileNotFoundError(
            f"{source!r} is neither a local llava-hf checkpoint dir nor a hub id available "
            f"offline (download it with `hf download {source}` and pass the dir). Cause: {e}"
        ) from e
    if not isinstance(model, LlavaForConditionalGeneration):
        raise ConfigError(f"{source!r} is a {type(model).__name__}, not a LLaVA-format "
                          "(LlavaForConditionalGeneration) checkpoint")
    if not getattr(processor, "chat_template", None):
        raise ConfigError(f"{source!r} has no chat template in its processor; EMT prompts "
                          "an off-the-shelf model only in its own chat format")
    model.eval()
    tok = processor.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    spec = ModelSpec(name=str(source), family=family_for_model_type(
        model.config.text_config.model_type).name if _known_family(model) else "llama",
        vision=None, template="")
    return MLLM(model, tok, processor.image_processor, None, spec, processor)


def _known_family(model) -> bool:
    try:
        family_for_model_type(model.config.text_config.model_type)
        return True
    except ValueError:
        return False


def _restore_lm_head_bias(model, path: Path) -> None:
    """Phi's LM head has a bias that LLaVA's bias-free `lm_head` drops on loading: put it back."""
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            key = next((k for k in sf.keys() if k.endswith("lm_head.bias")), None)
            if key is not None:
                bias = sf.get_tensor(key)
                old = model.lm_head
                new = torch.nn.Linear(old.in_features, old.out_features, bias=True,
                                      dtype=old.weight.dtype)
                new.weight = old.weight
                with torch.no_grad():
                    new.bias.copy_(bias)
                model.lm_head = new
                return


def _model_path_error(message: str):
    """A model that cannot be loaded as configured: a user error (errors.ModelNotFoundError,
    also a FileNotFoundError)."""
    from ..errors import ModelNotFoundError

    return ModelNotFoundError(message)
