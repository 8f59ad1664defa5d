"""The training forward: token embeddings with projected image patches merged in.

`MLLMForTraining` wraps the (possibly peft-wrapped) LLaVA model so that one `forward`
computes the frozen tower's patch features (or takes them from the feature cache), runs
the projector, scatters the result into the image-token positions and calls the model
with `inputs_embeds`. Keeping this in one module's forward lets FSDP/DDP wrap it as the
root. Vision features follow LLaVA-1.5: hidden states of `vision_feature_layer` (-2),
CLS dropped.

It lives in `models/` (not `train/`) because the trainer, the CL methods that run their
own batches (EWC's Fisher, LwF's teacher) and the feature cache all use it; none of them
may import `train/`. `ParamLayout` is the one thing a method may ask about how a
parameter is distributed (its local shard); the training strategies implement it.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .build import parts, unwrap


@torch.no_grad()
def tower_features(vision_tower, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
    """Frozen CLIP patch features (B, patches, hidden) of `layer`, CLS dropped."""
    out = vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[layer][:, 1:]


class MLLMForTraining(nn.Module):
    """`tower_autocast`: the dtype the frozen tower computes in under `torch.autocast`
    (None: its weights' dtype). A strategy whose mixed precision does not reach the tower
    sets it: FSDP2's MixedPrecisionPolicy covers only sharded modules, and the tower is
    left out of the shards, so without it the tower would run in fp32 on the GPU."""

    def __init__(self, model, tower_autocast: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.tower_autocast = tower_autocast
        cfg = unwrap(model).config
        self.image_token_id = cfg.image_token_index
        self.feature_layer = cfg.vision_feature_layer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None) -> torch.Tensor:
        p = parts(self.model)
        img_mask = input_ids == self.image_token_id
        embed = p["language_model"].get_input_embeddings()
        embeds = embed(input_ids.masked_fill(img_mask, 0))
        if bool(img_mask.any()):
            if image_features is None:
                if pixel_values is None:
                    raise ValueError("batch has image tokens but neither pixel_values nor "
                                     "image_features")
                tower = p["vision_tower"]
                amp = (torch.autocast(pixel_values.device.type, dtype=self.tower_autocast)
                       if self.tower_autocast is not None else contextlib.nullcontext())
                with amp:
                    image_features = tower_features(tower, pixel_values.to(
                        next(tower.parameters()).dtype), self.feature_layer)
            proj = p["projector"](image_features.to(embeds.dtype))
            n_tok = int(img_mask.sum())
            if proj.shape[0] * proj.shape[1] != n_tok:
                raise ValueError(f"{proj.shape[0] * proj.shape[1]} image features for {n_tok} "
                                 "image tokens: check n_image_tokens and the vision config")
            embeds = embeds.masked_scatter(img_mask.unsqueeze(-1), proj.reshape(-1, proj.shape[-1]))
        elif self.training and torch.is_grad_enabled():
            # A text-only batch: let the projector take part with a zero contribution, so
            # every rank produces projector gradients and FSDP/DDP reductions never wait
            # on a rank whose batch happened to have no image.
            proj = p["projector"]
            first = next(m for m in proj.modules() if isinstance(m, nn.Linear))
            dummy = torch.zeros(1, 1, first.in_features, dtype=embeds.dtype, device=embeds.device)
            embeds = embeds + 0.0 * proj(dummy).sum()
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask).logits


def answer_positions(logits: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits at answer positions and their targets: ([M, V], [M])."""
    shift_logits = logits[:, :-1]
    shift_labels = labels[:, 1:]
    sel = shift_labels != -100
    return shift_logits[sel], shift_labels[sel]


def forward_batch(module, batch: dict, device: torch.device) -> torch.Tensor:
    """Run a (wrapped) MLLMForTraining on a collated batch -> logits [B, L, V]: cached
    image features when the batch has them, else pixel values, else text only."""
    kwargs = {"input_ids": batch["input_ids"].to(device),
              "attention_mask": batch["attention_mask"].to(device)}
    if "image_features" in batch:
        kwargs["image_features"] = batch["image_features"].to(device)
    elif "pixel_values" in batch:
        kwargs["pixel_values"] = batch["pixel_values"].to(device)
    return module(**kwargs)


def llava_of(module) -> nn.Module:
    """The LlavaForConditionalGeneration inside a (strategy-wrapped) MLLMForTraining."""
    m = module
    for _ in range(8):
        if isinstance(m, MLLMForTraining):
            m = m.model
        elif isinstance(getattr(m, "module", None), nn.Module):  # DDP and the like
            m = m.module
        else:
            break
    return unwrap(m)


class ParamLayout:
    """How a training parameter is laid out across workers, as a method may see it.

    The default is one whole copy per process (single process, DDP). A sharding strategy
    (FSDP2: DTensor parameters) overrides both methods; a method that keeps per-parameter
    tensors of its own (EWC's Fisher and anchor) goes through them and never touches
    DTensors itself.
    """

    def local(self, param: torch.Tensor) -> torch.Tensor:
        """The part of `param` this process holds (differentiable)."""
        return param

    def shard_like(self, full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """`full` (a whole tensor shaped like `param`) as this process's part of it, on
        `param`'s device."""
        return full.to(param.device)


__all__ = ["MLLMForTraining", "ParamLayout", "answer_positions", "forward_batch", "llava_of",
           "tower_features"]
