"""The micro world: a seeded synthetic stand-in for the papers' data (see :mod:`.world`)."""

from .world import (
    NL_DATASETS,
    VL_TASKS,
    WORLD_SIZES,
    WORLD_VERSION,
    NLDataset,
    VLTask,
    WorldManifest,
    WorldSize,
    generate_world,
    load_world,
    read_jsonl,
    read_vl,
)

__all__ = [
    "NL_DATASETS", "VL_TASKS", "WORLD_SIZES", "WORLD_VERSION", "NLDataset", "VLTask",
    "WorldManifest", "WorldSize", "generate_world", "load_world", "read_jsonl", "read_vl",
]
