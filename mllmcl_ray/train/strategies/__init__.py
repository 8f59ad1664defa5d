"""Parallel strategies (registry in base.py)."""
from .base import STRATEGIES, SingleProcess, Strategy, get_strategy, register_strategy

__all__ = ["STRATEGIES", "SingleProcess", "Strategy", "get_strategy", "register_strategy"]
