"""An answer whose speech stops (a codebook draws its stop code) while its text goes on: `respond` yields one
`AudioEnd` right after the last frame, so a player finishes instead of counting the silent text-only steps as
underruns (full-size random weights do this within a second; trained answers end both together). With codebook 0
stopped at its audio step k, the delay pattern completes exactly k frames (frame s holds codebook i's code from
audio step s - 7 + i)."""

from __future__ import annotations

import numpy as np
import pytest

from omni_onnx import codes
from omni_onnx.generate import GenerationOptions
from omni_onnx.model import AudioChunk, AudioEnd, Conversation, OmniModel, TextDelta


@pytest.mark.parametrize("k, per_call", [(1, 1), (5, 1), (6, 4)])
def test_audio_end_follows_the_last_frame_and_text_goes_on(tiny_bundle, monkeypatch, k, per_call):
    append = codes.AudioCodeRing.append
    drawn = {"codebook0": 0}

    def stop_codebook0_at_k(ring, column, sampled):
        if sampled[0]:
            if drawn["codebook0"] == k:
                column = column.copy()
                column[0] = ring.stop_from  # the first code past the codebook: a stop
            drawn["codebook0"] += 1
        append(ring, column, sampled)

    monkeypatch.setattr(codes.AudioCodeRing, "append", stop_codebook0_at_k)
    events = list(Conversation(OmniModel.load(tiny_bundle)).respond(
        "Why is the sky blue?", GenerationOptions(max_new_tokens=40), np.random.default_rng(0),
        mimi_frames_per_call=per_call))
    kinds = [type(e) for e in events]
    assert sum(len(e.pcm) for e in events if isinstance(e, AudioChunk)) == k * 1920 and kinds.count(AudioEnd) == 1
    end = kinds.index(AudioEnd)
    assert max(i for i, t in enumerate(kinds) if t is AudioChunk) < end
    assert TextDelta in kinds[end:]  # the text went on
