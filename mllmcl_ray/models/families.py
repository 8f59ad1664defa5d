"""LLM family registry: what differs between GPT-NeoX (Pythia), Phi and Llama for us.

A family names its transformers config class, the LoRA target modules for "all linear
layers" and for "attention q/k/v only", and its default conversation template. Adding a
family is one `register_family` call; nothing else in the package switches on names.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LLMFamily:
    name: str  # registry key
    model_type: str  # transformers config model_type
    all_linear: tuple[str, ...]  # LoRA targets: every linear layer of a decoder block
    attention_qkv: tuple[str, ...]  # LoRA targets: query/key/value projections only
    template: str  # default conversation template
    hidden_size_key: str = "hidden_size"


FAMILIES: dict[str, LLMFamily] = {}


def register_family(family: LLMFamily) -> LLMFamily:
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> LLMFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown LLM family {name!r}; known families: {', '.join(sorted(FAMILIES))}. "
            "Register a new one with mllmcl_ray.models.families.register_family") from None


def family_for_model_type(model_type: str) -> LLMFamily:
    for fam in FAMILIES.values():
        if fam.model_type == model_type:
            return fam
    raise ValueError(f"no LLM family registered for transformers model_type {model_type!r}")


register_family(LLMFamily(
    name="gpt_neox", model_type="gpt_neox",
    all_linear=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    attention_qkv=("query_key_value",), template="pythia"))
register_family(LLMFamily(
    name="phi", model_type="phi",
    all_linear=("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    attention_qkv=("q_proj", "k_proj", "v_proj"), template="pythia"))
register_family(LLMFamily(
    name="llama", model_type="llama",
    all_linear=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    attention_qkv=("q_proj", "k_proj", "v_proj"), template="vicuna_v1"))
