"""Cache of frozen vision-tower features, shared by stages, tasks, methods and trials.

The CLIP tower never trains, so its patch features for an image are the same in every
stage, task, method and sweep trial that uses the same tower. They are computed once
(batched; each worker takes its share of the missing images), stored as safetensors
shards under ``<root>/<tower id>/``, and looked up by image key (path, size, mtime).

The tower id hashes the tower's config, the feature layer and a fingerprint of its
weights (shapes and a strided sample of every tensor), so a different tower — another
checkpoint, another seed of a random tower — never reads stale features.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..models.build import parts, unwrap
from ..models.training import tower_features
from .images import pixel_values


def tower_id(vision_tower, feature_layer: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(vision_tower.config.to_dict(), sort_keys=True, default=str).encode())
    h.update(str(feature_layer).encode())
    for name, p in sorted(vision_tower.state_dict().items()):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def image_key(path: str) -> str:
    st = os.stat(path)
    return hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()
                        ).hexdigest()


class FeatureCache:
    """Tower features by image, persisted as safetensors shards."""

    def __init__(self, root: str | Path, mllm, batch_size: int = 64,
                 device: torch.device | str | None = None,
                 compute_dtype: torch.dtype | None = None):
        """`device`: move the (frozen) tower there to fill the cache (None: where it is);
        `compute_dtype`: autocast the tower's forward to it on CUDA (e.g. bf16; None: the
        tower's own dtype). Features are stored as the tower returns them."""
        model = unwrap(mllm.model)
        self.tower = parts(model)["vision_tower"]
        if device is not None:
            self.tower.to(device)
        self.compute_dtype = compute_dtype
        self.layer = model.config.vision_feature_layer
        self.processor = mllm.image_processor
        self.batch_size = batch_size
        self.dir = Path(root) / tower_id(self.tower, self.layer)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mem: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.computed = 0
        self._load_shards()

    def _load_shards(self) -> None:
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                keys = json.loads(f.metadata()["keys"])
                feats = f.get_tensor("features")
            for k, v in zip(keys, feats):
                self.mem.setdefault(k, v)

    def precompute(self, paths: list[str], rank: int = 0, world_size: int = 1) -> int:
        """Compute this worker's share of missing images and write them as one shard."""
        missing = sorted({p for p in paths if image_key(p) not in self.mem})
        mine = missing[rank::world_size]
        if not mine:
            return 0
        keys, feats = [], []
        for i in range(0, len(mine), self.batch_size):
            chunk = mine[i:i + self.batch_size]
            p0 = next(self.tower.parameters())
            pv = pixel_values(self.processor, chunk).to(device=p0.device, dtype=p0.dtype)
            amp = (torch.autocast(p0.device.type, dtype=self.compute_dtype)
                   if self.compute_dtype is not None and p0.device.type == "cuda"
                   else contextlib.nullcontext())
            with amp:
                f = tower_features(self.tower, pv, self.layer).contiguous().cpu()
            for p, v in zip(chunk, f):
                k = image_key(p)
                self.mem[k] = v
                keys.append(k)
                feats.append(v)
        self.computed += len(keys)
        tmp = self.dir / f".shard-{uuid.uuid4().hex}.tmp"
        save_file({"features": torch.stack(feats)}, str(tmp), metadata={"keys": json.dumps(keys)})
        os.replace(tmp, self.dir / f"shard-{uuid.uuid4().hex}.safetensors")
        return len(keys)

    def refresh(self) -> None:
        self._load_shards()

    def __call__(self, paths: list[str]) -> torch.Tensor:
        out = []
        for p in paths:
            k = image_key(p)
            if k not in self.mem:
                self.precompute([p])
            else:
                self.hits += 1
            out.append(self.mem[k])
        return torch.stack(out)
