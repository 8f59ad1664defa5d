"""Moved: the training forward lives in `mllmcl_ray.models.training` (imported here for
code written against the old location)."""
from ..models.training import MLLMForTraining, answer_positions, tower_features  # noqa: F401
