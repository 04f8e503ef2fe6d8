"""The runtime loop vs the torch reference loop on scripted logits, so that every protocol path is reached on demand:
thinking mode (audio starts two steps after `</think>\\n\\n`), EOS and its 201/0 fill, staggered stop codes, and a
voice's reference-code buffer. Graph numerics are tested elsewhere; here both loops read the same logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_onnx.config import TINY
from omni_onnx.dump import CodeDump
from omni_onnx.export.reference import reference_generate
from omni_onnx.generate import GenerationOptions, ModelState, Speaker, generate

PROMPT = [1, 832, 311, 234, 75, 108, 2, 234, 1, 1388, 570, 811, 234, 25, 234]
THINK = [300, 301, 26, 234, 234]  # `</think>\n\n` at steps 2..4 -> audio starts at step 6


def scripted(step: int, thinking: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose argmax is the scripted token/code for generation `step` (large margins: penalties can't flip)."""
    rng = np.random.default_rng(step + 1000)
    text = rng.normal(size=TINY.vocab_size).astype(np.float32)
    script = (THINK if thinking else []) + [400 + k for k in range(20)]
    text[script[step] if step < len(script) else 2] = 30.0  # EOS once the script runs out
    audio = rng.normal(size=(8, TINY.audio_vocab_size)).astype(np.float32)
    for i in range(8):
        audio[i, 2050 if step >= 30 + 3 * (i % 3) else (500 + 7 * step + i) % 2048] = 30.0
    return text, audio


class FakeStepper:
    """Stands in for the graphs: scripted logits for the last position fed."""

    def __init__(self, prompt_len: int, thinking: bool):
        self.cfg, self.state = TINY, ModelState(TINY, 256)
        self.prompt_len, self.thinking = prompt_len, thinking

    def think(self, ids, feature_embeds=None, feature_mask=None):
        self.state.thinker.length += len(ids)
        return {"logits": scripted(self.state.length - self.prompt_len, self.thinking)[0][None]}

    def talk(self, codes):
        self.state.talker.length += codes.shape[1]
        return {"audio_logits": scripted(self.state.talker.length - self.prompt_len, self.thinking)[1][None]}

    def run(self, ids, codes, feature_embeds=None, feature_mask=None):
        return self.think(ids)["logits"][0], self.talk(codes)["audio_logits"][0]


class FakeTorchModel:
    """The same script behind OmniTorchModel's forward API (past = number of positions seen)."""

    def __init__(self, prompt_len: int, thinking: bool):
        self.cfg, self.prompt_len, self.thinking = TINY, prompt_len, thinking

    def thinker_forward(self, input_ids, past=None):
        seen = (past or 0) + input_ids.shape[1]
        text, _ = scripted(seen - self.prompt_len, self.thinking)
        return torch.from_numpy(text)[None, None], torch.zeros(1, input_ids.shape[1], 4), seen

    def talker_forward(self, bridge, codes, past=None, spk_emb=None, spk_mask=None):
        seen = (past or 0) + codes.shape[2]
        _, audio = scripted(seen - self.prompt_len, self.thinking)
        return torch.from_numpy(audio)[None, :, None], seen


@pytest.mark.parametrize("thinking", [False, True], ids=["plain", "thinking"])
@pytest.mark.parametrize("max_new", [64, 25], ids=["stops", "length"])
def test_runtime_loop_equals_reference_loop(thinking, max_new):
    ref = reference_generate(FakeTorchModel(len(PROMPT), thinking), PROMPT, max_new, greedy=True,
                             open_thinking=thinking)
    got = CodeDump(list(PROMPT))
    steps = list(generate(FakeStepper(len(PROMPT), thinking), PROMPT, Speaker(None, None),
                          GenerationOptions(max_new_tokens=max_new, greedy=True, open_thinking=thinking), None, got))
    assert (got.text_ids, got.audio_codes, got.frames) == (ref.text_ids, ref.audio_codes, ref.frames)
    assert [s.token for s in steps if s.token is not None] == got.text_ids
    assert [s.frame.tolist() for s in steps if s.frame is not None] == got.frames
    if max_new == 64:  # ended by the stop rule: EOS, then fill, then every codebook stopped
        assert got.text_ids[-1] == 2 and len(got.audio_codes[0]) < 64 and len(got.frames) > 0
    first_real = [next(k for k, c in enumerate(got.audio_codes[i]) if c != 2049) for i in range(8)]
    assert first_real == [(6 if thinking else 1) + i for i in range(8)]


def test_prompt_codes_match_reference_buffer_for_a_voice():
    from omni_onnx.export.reference import prompt_audio_rows
    from omni_onnx.generate import prompt_codes
    ref = np.random.default_rng(0).integers(0, 2048, (8, 30))
    for prompt_len in (10, 30, 31, 60):
        for spk in (None, np.zeros((1, 192), np.float32)):
            ours = prompt_codes(TINY, prompt_len, Speaker(ref, spk))
            theirs = prompt_audio_rows(TINY, prompt_len, torch.from_numpy(ref), spk is not None)
            assert ours.tolist() == theirs[0].tolist()
