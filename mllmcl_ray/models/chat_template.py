"""A project conversation template as a Jinja chat template (the llava-hf layout).

Saved checkpoints carry this template in their processor (``chat_template.jinja``), so a
plain transformers user gets the project's exact prompt with
``processor.apply_chat_template(messages, add_generation_prompt=True)``. The rendering
is `ConversationTemplate.segments` (models/templates.py) written in Jinja:

- the head is ``bos + system`` (a leading ``system`` message replaces the system prompt);
- a user turn appends ``[" " if anything precedes] USER: {message.strip()} ASSISTANT:``;
- an assistant turn emits the context so far, a space, ``{answer.strip()}{turn_end}`` and
  clears the context;
- what is left (a trailing user turn) is emitted followed by one space: the prompt ends
  where the answer starts, with or without ``add_generation_prompt`` (the project's format
  has no separate generation prompt).

Message content is a string (LLaVA JSON form, ``<image>`` inline) or a list of HF parts:
``{"type": "image"}`` renders ``<image>\\n`` and ``{"type": "text", "text": ...}`` its text,
in order — the LLaVA convention of an image first, then a newline, then the question.
The ``plain`` (alignment) template renders ``<image>`` (for generation) or ``<image>``
followed by the assistant's caption and a newline (without ``add_generation_prompt``). `tests/models/test_emt_layout.py` checks equality with `segments` token for token.
"""
from __future__ import annotations

import json

from .templates import IMAGE_PLACEHOLDER, ConversationTemplate

_CONTENT = (
    "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}"
    "{%- else -%}{%- set ns.text = '' -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set ns.text = ns.text + IMG + '\\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
)


def _lit(s: str) -> str:
    """A Jinja string literal (JSON escaping is valid Jinja escaping)."""
    return json.dumps(s)


def jinja_chat_template(t: ConversationTemplate) -> str:
    """The Jinja chat template equal to `t.segments` (see the module doc)."""
    head = (f"{{%- set IMG = {_lit(IMAGE_PLACEHOLDER)} -%}}"
            "{%- set ns = namespace(ctx='', text='', sys=" + _lit(t.system) + ") -%}")
    if t.plain:
        return head + (
            "{{- IMG -}}{%- if not add_generation_prompt -%}"
            "{%- for message in messages -%}{%- if message['role'] == 'assistant' -%}"
            + _CONTENT + "{{- (ns.text | trim) + '\\n' -}}{%- endif -%}{%- endfor -%}"
            "{%- endif -%}")
    return head + (
        "{%- set msgs = messages -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set message = messages[0] -%}" + _CONTENT + "{%- set ns.sys = ns.text -%}"
        "{%- set msgs = messages[1:] -%}{%- endif -%}"
        f"{{%- set ns.ctx = {_lit(t.bos)} + ns.sys -%}}"
        "{%- for message in msgs -%}" + _CONTENT +
        "{%- if message['role'] == 'user' -%}"
        f"{{%- set ns.ctx = ns.ctx + (' ' if ns.ctx else '') + {_lit(t.user + ': ')} + "
        f"(ns.text | trim) + {_lit(' ' + t.assistant + ':')} -%}}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{{{{- ns.ctx + ' ' + (ns.text | trim) + {_lit(t.turn_end)} -}}}}"
        "{%- set ns.ctx = '' -%}{%- endif -%}{%- endfor -%}"
        "{%- if ns.ctx -%}{{- ns.ctx + ' ' -}}{%- endif -%}")


def llava_json_to_messages(conversations: list[dict]) -> list[dict]:
    """LLaVA JSON turns (``from``: human/gpt, ``value`` with ``<image>``) as HF chat
    messages with content parts (an image part where ``<image>\\n`` or ``<image>`` was)."""
    out = []
    for turn in conversations:
        role = {"human": "user", "gpt": "assistant", "system": "system"}[turn["from"]]
        text = str(turn["value"])
        parts: list[dict] = []
        if IMAGE_PLACEHOLDER in text:
            before, after = text.split(IMAGE_PLACEHOLDER, 1)
            if before.strip():
                parts.append({"type": "text", "text": before})
            parts.append({"type": "image"})
            text = after[1:] if after.startswith("\n") else after
        parts.append({"type": "text", "text": text})
        out.append({"role": role, "content": parts})
    return out
