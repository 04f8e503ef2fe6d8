"""The torch reference loop (`omni_onnx.export.reference`) against the spec's protocol (section 7).

Its identity with upstream's own `stream_generate` is shown in a session with `upstream_check` (CI has no upstream
checkout); here the protocol's rules are pinned on the tiny model: prompt ids from the spec's example, the delay
pattern, frame assembly, post-EOS fill 201 then 0, the stop rule, thinking-mode audio start, the prompt audio rows
with reference codes and speaker column, and the audio repetition penalty that compounds and counts pads.
A `Steered` wrapper adds step-dependent logit biases so that EOS, stop codes and `</think>` happen on cue.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_onnx.config import TINY
from omni_onnx.export.reference import (
    audio_scores,
    chat_prompt_ids,
    prompt_audio_rows,
    reference_generate,
    text_probs,
    voice_prompt_messages,
)

HI = [{"role": "user", "content": "Hi"}]
SPEC_HI_IDS = [1, 832, 311, 234, 75, 108, 2, 234, 1, 1388, 570, 811, 234, 25, 234, 234, 26, 234, 234]
PAD, STOP, SPK, EOS, N = TINY.audio_pad_code, TINY.audio_stop_code, TINY.audio_spk_code, TINY.eos_token_id, 8
FORCE = 1e4


class Steered:
    """The tiny model with forced text tokens ({step: id}), stop codes banned before `stop_from` and boosted from it,
    recording what each step feeds in."""

    def __init__(self, model, text_at: dict[int, int] | None = None, stop_from: int | None = None):
        self.model, self.cfg = model, model.cfg
        self.text_at, self.stop_from = text_at or {}, stop_from
        self.text_inputs: list[list[int]] = []
        self.code_inputs: list[torch.Tensor] = []
        self.spk_inputs: list[tuple] = []

    def thinker_forward(self, input_ids, past=None):
        logits, bridge, presents = self.model.thinker_forward(input_ids, past)
        step = len(self.text_inputs)
        self.text_inputs.append(input_ids[0].tolist())
        if step in self.text_at:
            logits[0, -1, self.text_at[step]] += FORCE
        return logits, bridge, presents

    def talker_forward(self, bridge, codes, past=None, spk_emb=None, spk_mask=None):
        logits, presents = self.model.talker_forward(bridge, codes, past, spk_emb, spk_mask)
        step = len(self.code_inputs)
        self.code_inputs.append(codes[0].clone())
        self.spk_inputs.append((spk_emb, spk_mask))
        if self.stop_from is None or step < self.stop_from:
            logits[0, :, -1, self.cfg.codebook_size :] -= FORCE
        else:
            logits[0, :, -1, STOP] += FORCE
        return logits, presents


def check_frames(dump, first_frame_step: int, audio_start: int) -> None:
    """Frame f is emitted at step first_frame_step + f and holds codebook i's entry at index audio_start + f + i."""
    for f, frame in enumerate(dump.frames):
        assert frame == [dump.audio_codes[i][audio_start + f + i] for i in range(N)], f
        assert max(frame) < TINY.codebook_size, frame


def test_chat_prompt_ids_match_spec_example():
    assert chat_prompt_ids(HI) == SPEC_HI_IDS
    assert chat_prompt_ids(HI, open_thinking=True) == SPEC_HI_IDS[:15]  # ends "<think>\n"


def test_voice_prompt_puts_the_system_turn_first():
    ids = chat_prompt_ids(voice_prompt_messages("Hi"))
    assert ids[:1] == [1] and ids[-len(SPEC_HI_IDS) :] == SPEC_HI_IDS
    assert ids.count(2) == 2  # system and user turns each end with <|im_end|>


def test_prompt_audio_rows_layout():
    ref = torch.arange(8 * 30).reshape(8, 30)
    L = 19
    rows = prompt_audio_rows(TINY, L, None, has_spk=True)[0]
    assert (rows[:, L - 1] == SPK).all() and (rows[:, : L - 1] == PAD).all()
    rows = prompt_audio_rows(TINY, L, ref[:, :5], has_spk=True)[0]  # short: right-aligned, speaker column before
    assert torch.equal(rows[:, L - 5 :], ref[:, :5]) and (rows[:, L - 6] == SPK).all()
    assert (rows[:, : L - 6] == PAD).all()
    rows = prompt_audio_rows(TINY, L, ref, has_spk=True)[0]  # long: cut from the left, column 0 kept for the speaker
    assert torch.equal(rows[:, 1:], ref[:, -(L - 1) :]) and (rows[:, 0] == SPK).all()
    assert torch.equal(prompt_audio_rows(TINY, L, ref, has_spk=False)[0], ref[:, -L:])


def test_text_top_p_keeps_the_crossing_token():
    probs = text_probs(torch.tensor([0.5, 0.3, 0.2]).log(), temperature=1.0, top_p=0.7)
    torch.testing.assert_close(probs, torch.tensor([0.625, 0.375, 0.0]))


def test_audio_penalty_compounds_over_the_last_three_codes_including_pads():
    logits = torch.zeros(TINY.audio_vocab_size)
    logits[5], logits[6] = 10.0, 9.3  # 10/1.05 > 9.3 > 10/1.05**2
    top = lambda history: int(audio_scores(logits, history).argmax())  # noqa: E731
    assert top([5, 7]) == 5 and top([5, 5]) == 6  # a repeated code is penalised twice
    assert top([5, 5, 7, 8]) == 5  # only the last three count
    logits[5], logits[PAD] = 0.0, 10.0
    assert top([PAD]) == PAD and top([PAD, PAD]) == 6  # pads count too


def test_natural_run_delay_pattern_and_frames(tiny_torch_model):
    dump = reference_generate(tiny_torch_model, SPEC_HI_IDS, 24)
    assert dump.prompt_ids == SPEC_HI_IDS
    assert len(dump.text_ids) <= 24 and all(len(c) <= 24 for c in dump.audio_codes)
    steps = len(dump.audio_codes[0])
    for i, codes in enumerate(dump.audio_codes):
        assert codes[: i + 1] == [PAD] * (i + 1) and len(codes) == steps, i
    check_frames(dump, first_frame_step=8, audio_start=1)
    stops = [next((j for j, c in enumerate(codes) if j > i and c >= TINY.codebook_size), steps)
             for i, codes in enumerate(dump.audio_codes)]
    expected = [s for s in range(8, steps) if all(s - 7 + i < stops[i] for i in range(N))]
    assert len(dump.frames) == len(expected)


def test_eos_fill_and_stop_rule(tiny_torch_model):
    model = Steered(tiny_torch_model, text_at={3: EOS}, stop_from=12)
    dump = reference_generate(model, SPEC_HI_IDS, 40)
    assert len(dump.text_ids) == 4 and dump.text_ids[-1] == EOS
    # steps 0..11 append a token; at step 12 every codebook has a stop and the text is finished: break
    assert [t for (t,) in model.text_inputs[1:]] == dump.text_ids + [201] + [0] * 7
    assert all(len(c) == 13 and c[12] == STOP and max(c[i + 1 : 12]) < TINY.codebook_size
               for i, c in enumerate(dump.audio_codes))
    for step in range(1, 13):  # each step feeds back the codes drawn (or padded) at the step before
        assert model.code_inputs[step][:, 0].tolist() == [c[step - 1] for c in dump.audio_codes], step
    assert len(dump.frames) == 4  # steps 8..11; the frame of step 12 would hold stop codes
    check_frames(dump, first_frame_step=8, audio_start=1)


def test_stops_end_nothing_until_the_text_has_finished(tiny_torch_model):
    dump = reference_generate(Steered(tiny_torch_model, text_at={20: EOS}, stop_from=10), SPEC_HI_IDS, 30)
    assert dump.text_ids[-1] == EOS and len(dump.text_ids) == 21
    assert len(dump.audio_codes[0]) == 22  # break at step 21, the first step after EOS
    assert len(dump.frames) == 2  # steps 8 and 9; from step 10 on, frames would hold stop codes


def test_max_new_tokens_bounds_text_and_audio(tiny_torch_model):
    dump = reference_generate(Steered(tiny_torch_model), SPEC_HI_IDS, 16)
    assert len(dump.text_ids) == 16
    assert [len(c) for c in dump.audio_codes] == [16] * N and len(dump.frames) == 16 - 8
    check_frames(dump, first_frame_step=8, audio_start=1)


def test_open_thinking_starts_audio_two_steps_after_think_end(tiny_torch_model):
    prompt = chat_prompt_ids(HI, open_thinking=True)
    model = Steered(tiny_torch_model, text_at={3: 26, 4: 234, 5: 234})
    dump = reference_generate(model, prompt, 24, open_thinking=True)
    assert dump.text_ids[3:6] == [26, 234, 234]
    for i, codes in enumerate(dump.audio_codes):  # "\n" sampled at step 5 -> codebook i starts at step 7 + i
        assert codes[: 7 + i] == [PAD] * (7 + i) and codes[7 + i] < TINY.codebook_size, i
    assert len(dump.frames) == 24 - 14  # audio_step = step - 7 >= 7
    check_frames(dump, first_frame_step=14, audio_start=7)


def test_open_thinking_without_think_end_never_starts_audio(tiny_torch_model):
    prompt = chat_prompt_ids(HI, open_thinking=True)
    dump = reference_generate(Steered(tiny_torch_model, text_at={2: EOS}), prompt, 12, open_thinking=True)
    assert len(dump.text_ids) == 3 and dump.frames == []
    assert dump.audio_codes == [[PAD] * 12] * N  # no stop codes ever, so only max_new_tokens ends the loop


def test_voice_rows_and_speaker_embedding_reach_the_talker(tiny_torch_model):
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 2048, (8, 5))
    spk = rng.normal(size=192).astype(np.float32)
    prompt = chat_prompt_ids(voice_prompt_messages("Hi"))
    model = Steered(tiny_torch_model)
    reference_generate(model, prompt, 3, ref_codes=ref, spk_emb=spk)
    L = len(prompt)
    assert torch.equal(model.code_inputs[0], prompt_audio_rows(TINY, L, torch.as_tensor(ref), has_spk=True)[0])
    emb, mask = model.spk_inputs[0]
    assert torch.equal(emb[0], torch.from_numpy(spk).half().float())  # upstream's spk_emb.half()
    assert mask[0].nonzero().flatten().tolist() == [L - 6]
    assert all(not m.any() for _, m in model.spk_inputs[1:])


def test_sampling_needs_an_rng_and_is_reproducible_with_one(tiny_torch_model):
    with pytest.raises(ValueError, match="rng"):
        reference_generate(tiny_torch_model, SPEC_HI_IDS, 4, greedy=False)
    runs = [reference_generate(tiny_torch_model, SPEC_HI_IDS, 12, greedy=False, rng=np.random.default_rng(7))
            for _ in range(2)]
    assert runs[0] == runs[1]
