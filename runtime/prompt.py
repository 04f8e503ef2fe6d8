"""Prompt building: upstream's Qwen3-style chat template (no tools), rendered without jinja, then tokenized.

Tested against transformers' `apply_chat_template` on the real template (export side) so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

# eval_omni.py's voice-clone mode puts this system prompt before the user message.
VOICE_SYSTEM_PROMPT = "你是一个专业的语音助手，请用给定的音色风格来回答用户的问题。请尽量详细地回答，给出有价值的信息。"


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


def _assistant_turn(content: str) -> str:
    reasoning = ""
    if "</think>" in content:
        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = content.split("</think>")[-1].lstrip("\n")
    return f"<|im_start|>assistant\n<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}<|im_end|>\n"


def render_chat(messages: list[Message], open_thinking: bool = False) -> str:
    """The template text upstream's tokenizer renders with `add_generation_prompt=True`."""
    parts = []
    for k, m in enumerate(messages):
        if m.role == "system" and k == 0:
            parts.append(f"<|im_start|>system\n{m.content}<|im_end|>\n")
        elif m.role in ("user", "system"):
            parts.append(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n")
        elif m.role == "assistant":
            parts.append(_assistant_turn(m.content))
        else:
            raise ValueError(f"unknown chat role {m.role!r}; use system, user or assistant")
    parts.append("<|im_start|>assistant\n" + ("<think>\n" if open_thinking else "<think>\n\n</think>\n\n"))
    return "".join(parts)


class TextTokenizer:
    """The bundle's byte-level BPE tokenizer (6400 ids; no bos/eos added, as upstream)."""

    def __init__(self, tokenizer_json: Path):
        self._tok = Tokenizer.from_file(str(tokenizer_json))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def chat_ids(self, messages: list[Message], open_thinking: bool = False) -> list[int]:
        return self.encode(render_chat(messages, open_thinking))
