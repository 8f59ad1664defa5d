"""Conversation templates and label masking.

A template turns a LLaVA conversation (`[{from: human|gpt, value}]`) into a list of text
segments, each marked as target (an assistant answer, trained on) or context (masked with
-100). Templates are explicit and versioned: the version goes into every result row.

- ``pythia``: the prompt format of the Srivastava et al. code for Pythia,
  ``<|endoftext|>{system} USER: {msg} ASSISTANT: {answer}<|endoftext|>`` (later turns
  continue with `` USER: ...``).
- ``vicuna_v1``: LLaVA's ``conv_vicuna_v1`` (``{system} USER: {msg} ASSISTANT: {answer}</s>``).
- ``micro``: the pythia format with a short system prompt (saves tokens on a CPU).
- ``plain``: LLaVA's alignment format: ``<image>{caption}\\n``, loss on the caption only.

``<image>`` in a message marks where the projected image patches go; the tokenizer side
(`models/tokenizers.py`) expands it to one image token per patch.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100

LLAVA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclass(frozen=True)
class ConversationTemplate:
    name: str
    version: str
    bos: str  # text placed before the system prompt ("" for none)
    system: str
    user: str = "USER"
    assistant: str = "ASSISTANT"
    turn_end: str = "<|endoftext|>"  # appended to every assistant answer (trained on)
    plain: bool = False  # LLaVA "plain" captioning format

    def segments(self, conversations: list[dict], *, for_generation: bool = False
                 ) -> list[tuple[str, bool]]:
        """(text, is_target) segments. With `for_generation` the last gpt turn is dropped
        and the prompt ends where the assistant's answer would start."""
        convs = list(conversations)
        if for_generation and convs and convs[-1]["from"] == "gpt":
            convs = convs[:-1]
        if self.plain:
            # LLaVA plain: the image, then the caption; the human text is only the image.
            segs: list[tuple[str, bool]] = [(IMAGE_PLACEHOLDER, False)]
            if not for_generation:
                answer = next((c["value"] for c in conversations if c["from"] == "gpt"), "")
                segs.append((answer.strip() + "\n", True))
            return segs
        head = self.bos + self.system
        segs = []
        ctx = head
        for turn in convs:
            if turn["from"] == "human":
                msg = turn["value"].strip()
                ctx += f"{' ' if ctx else ''}{self.user}: {msg} {self.assistant}:"
            else:
                segs.append((ctx + " ", False))
                segs.append((turn["value"].strip() + self.turn_end, True))
                ctx = ""
        if ctx:
            segs.append((ctx + " ", False))
        return segs

    def prompt(self, conversations: list[dict]) -> str:
        """The generation prompt for a conversation (its last answer removed)."""
        return "".join(t for t, _ in self.segments(conversations, for_generation=True))

    def text_prompt(self, message: str) -> str:
        """A single-turn text-only prompt (for the LLM judge)."""
        return self.prompt([{"from": "human", "value": message}])


TEMPLATES: dict[str, ConversationTemplate] = {}


def register_template(t: ConversationTemplate) -> ConversationTemplate:
    TEMPLATES[t.name] = t
    return t


def get_template(name: str) -> ConversationTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown conversation template {name!r}; known: "
                         f"{', '.join(sorted(TEMPLATES))}") from None


register_template(ConversationTemplate("pythia", "pythia-v1", bos="<|endoftext|>", system=LLAVA_SYSTEM))
register_template(ConversationTemplate("vicuna_v1", "vicuna_v1", bos="<s>", system=LLAVA_SYSTEM,
                                       turn_end="</s>"))
register_template(ConversationTemplate("micro", "micro-v1", bos="<|endoftext|>", system="",
                                       user="Q", assistant="A"))
register_template(ConversationTemplate("plain", "plain-v1", bos="", system="", plain=True,
                                       turn_end=""))
