"""Image loading: LLaVA-1.5 letterbox (pad to square with the mean colour), then CLIP
preprocessing by the model's image processor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .instruct import DataError


def load_image(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except OSError as e:
        raise DataError(f"image {path} cannot be read as an image: {e}") from None


def expand_to_square(img: Image.Image, background=(122, 116, 104)) -> Image.Image:
    """LLaVA-1.5's letterbox: pad the short side with the CLIP mean colour."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def pixel_values(image_processor, paths: list[str]) -> torch.Tensor:
    """A batch of preprocessed images (B, 3, S, S)."""
    imgs = [expand_to_square(load_image(p)) for p in paths]
    out = image_processor(images=imgs, return_tensors="np")["pixel_values"]
    return torch.from_numpy(np.asarray(out, dtype=np.float32))
