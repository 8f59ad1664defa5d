"""Continual-learning methods, one module each, registered by name (see base.py)."""
from .base import METHODS, ContinualMethod, MethodStack, TaskContext, build_methods, register_method
from . import naive, linear  # noqa: F401,E402  (registration)
from . import lora, soft_targets, rehearsal, msgm, moelora, ewc, lwf  # noqa: F401,E402

__all__ = ["METHODS", "ContinualMethod", "MethodStack", "TaskContext", "build_methods",
           "register_method"]
