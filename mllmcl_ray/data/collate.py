"""Batch collation: right-padded ids/labels/attention mask plus the batch's images
(pixel values, or the keys the vision-feature cache looks up)."""
from __future__ import annotations

import torch

from ..models.templates import IGNORE_INDEX
from .images import pixel_values


class Collator:
    """Pads a list of tokenised samples; loads images unless `load_pixels` is False."""

    def __init__(self, pad_token_id: int, image_processor=None, load_pixels: bool = True):
        self.pad_token_id = pad_token_id
        self.image_processor = image_processor
        self.load_pixels = load_pixels

    def __call__(self, samples: list[dict]) -> dict:
        n = max(len(s["input_ids"]) for s in samples)
        ids = torch.full((len(samples), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), n), dtype=torch.long)
        for i, s in enumerate(samples):
            k = len(s["input_ids"])
            ids[i, :k] = torch.tensor(s["input_ids"])
            labels[i, :k] = torch.tensor(s["labels"])
            mask[i, :k] = 1
        images = [s.get("image") for s in samples]
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask,
                 "image_paths": images, "ids": [s["id"] for s in samples]}
        with_images = [p for p in images if p]
        # Text-only samples may sit beside image samples: pixel values (or cached tower
        # features) cover only the samples that have an image, in batch order.
        if with_images and self.load_pixels:
            batch["pixel_values"] = pixel_values(self.image_processor, with_images)
        return batch
