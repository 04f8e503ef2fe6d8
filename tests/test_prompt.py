"""The jinja-free chat template vs transformers' apply_chat_template on upstream's real template."""

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from omni_onnx.prompt import VOICE_SYSTEM_PROMPT, Message, TextTokenizer

ASSETS = Path(__file__).parents[1] / "export" / "assets" / "minimind-o"

CASES = [
    [Message("user", "Hi")],
    [Message("user", "Why is the sky blue?")],
    [Message("system", VOICE_SYSTEM_PROMPT), Message("user", "Tell me a joke.")],
    [Message("user", "Hello"), Message("assistant", "Hello! How can I help you?"),
     Message("user", "I want to find something to do. Do you have any suggestions?")],
    [Message("user", "你好"), Message("assistant", "<think>\nlet me think\n</think>\n\n你好！"),
     Message("user", "<|audio_pad|><|audio_pad|>\n\n请回答我：")],
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    return PreTrainedTokenizerFast.from_pretrained(str(ASSETS))


@pytest.mark.parametrize("open_thinking", [False, True])
@pytest.mark.parametrize("messages", CASES)
def test_chat_ids_equal_upstream_template(hf_tokenizer, messages, open_thinking):
    ours = TextTokenizer(ASSETS / "tokenizer.json").chat_ids(messages, open_thinking)
    text = hf_tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                            tokenize=False, add_generation_prompt=True, open_thinking=open_thinking)
    assert ours == hf_tokenizer(text)["input_ids"]


def test_spec_example_ids():
    ids = TextTokenizer(ASSETS / "tokenizer.json").chat_ids([Message("user", "Hi")])
    assert ids == [1, 832, 311, 234, 75, 108, 2, 234, 1, 1388, 570, 811, 234, 25, 234, 234, 26, 234, 234]
