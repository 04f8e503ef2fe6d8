"""Voice activity and turn-taking: the bundled Silero graph against the silero-vad package's own torch model on a
real spoken clip, and the turn state machine (upstream's RealtimeSession rules) on synthetic probabilities."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from omni_onnx.bundle import Bundle
from omni_onnx.errors import BundleError
from omni_onnx.speech import load_audio
from omni_onnx.live.turns import INTERRUPT, PAUSE, RESUME, SPEECH_END, SPEECH_START, TurnOptions, TurnTaker
from omni_onnx.live.vad import SileroVad

CLIP = Path(__file__).parent / "fixtures" / "eval_omni" / "audio-en-05_why_is_the_sky_blue.mp3"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # silero_vad's importlib.resources and torch.jit.load
def test_bundled_vad_matches_the_packaged_torch_model(tiny_bundle):
    import torch
    from silero_vad import load_silero_vad

    wav = load_audio(CLIP)
    x = np.concatenate([np.zeros(8000, np.float32), wav, np.zeros(8000, np.float32)])
    chunks = [x[i:i + 512] for i in range(0, len(x) - 511, 512)]
    ref = load_silero_vad(onnx=False)  # the TorchScript release, not the ONNX file we bundle
    with torch.no_grad():
        want = np.array([float(ref(torch.from_numpy(c), 16000)) for c in chunks])
    vad = SileroVad.from_bundle(Bundle.open(tiny_bundle))
    got = np.array([vad(c) for c in chunks])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert want.max() > 0.99 and want[:10].max() < 0.1  # real weights: silence low, speech high
    vad.reset()
    assert vad(chunks[0]) == pytest.approx(got[0], abs=1e-7)


def test_bundle_without_vad_is_a_clear_error(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    graphs = {k: v for k, v in b.manifest["graphs"].items() if k != "vad"}
    with pytest.raises(BundleError, match="re-export"):
        SileroVad.from_bundle(dataclasses.replace(b, manifest={**b.manifest, "graphs": graphs},
                                                  specs={k: v for k, v in b.specs.items() if k != "vad"}))
    with pytest.raises(ValueError, match="512"):
        SileroVad.from_bundle(b)(np.zeros(1024, np.float32))


def run(probs: list[float], assistant_speaking: bool = False, opts: TurnOptions = TurnOptions(),
        masked: set[int] = frozenset()):
    """Window i holds the value i, so a turn's audio shows which windows it kept. At each PAUSE the audio the answer
    is prepared from is kept in `prepared`. Windows in `masked` are speech vetoed as echo (probability 0)."""
    t = TurnTaker(opts)
    t.assistant_speaking = assistant_speaking
    events, prepared = {}, {}
    for i, p in enumerate(probs):
        ev = t.push(np.full(512, i, np.float32), p, i in masked)
        if ev is not None:
            events[i] = ev
        if ev == PAUSE:
            prepared[i] = windows(t.turn_audio())
    return t, events, prepared


def windows(audio: np.ndarray) -> list[int]:
    return [int(v) for v in audio[::512]]


def test_turn_with_pre_roll_pause_and_one_trailing_silence_window():
    # 5 silent, 10 speech, 10 silent windows: 128 ms (4 windows) start a turn, the first silent window (32 ms)
    # prepares the answer, 256 ms (8) end the turn
    t, events, prepared = run([0.1] * 5 + [0.9] * 10 + [0.2] * 10)
    assert events == {8: SPEECH_START, 15: PAUSE, 22: SPEECH_END}
    turn = windows(t.take_turn())
    assert turn == [3, 4, *range(5, 15), 15]  # 1024-sample pre-roll, speech, one silent window
    assert prepared[15] == turn  # the prepared answer heard exactly what the confirmed turn holds
    assert t.take_turn().size == 0


def test_speech_after_the_pause_withdraws_it_and_the_turn_goes_on():
    t, events, prepared = run([0.9] * 6 + [0.1] * 5 + [0.9] * 3 + [0.1] * 10)
    assert events == {3: SPEECH_START, 6: PAUSE, 11: RESUME, 14: PAUSE, 21: SPEECH_END}
    assert prepared[6] == [0, 1, 2, 3, 4, 5, 6]
    assert windows(t.take_turn()) == [*range(0, 14), 14] == prepared[14]


def test_blip_shorter_than_min_speech_is_forgotten():
    t, events, _ = run([0.9] * 3 + [0.1] * 3 + [0.9] * 4 + [0.1] * 10)
    assert events == {9: SPEECH_START, 10: PAUSE, 17: SPEECH_END}
    assert windows(t.take_turn()) == [4, 5, 6, 7, 8, 9, 10]


def test_threshold_is_strict_and_short_pauses_do_not_end_a_turn():
    t, events, _ = run([0.8] * 6 + [0.81] * 4 + [0.0] * 7 + [0.9] + [0.0] * 10)
    assert events == {9: SPEECH_START, 10: PAUSE, 17: RESUME, 18: PAUSE, 25: SPEECH_END}
    assert windows(t.take_turn())[-1] == 18


def test_speech_over_the_assistant_interrupts_after_barge_in_speech():
    t, events, _ = run([0.1] * 3 + [0.9] * 6 + [0.1] * 10, assistant_speaking=True)
    assert events == {4: INTERRUPT, 9: PAUSE, 16: SPEECH_END}  # 2 windows (64 ms), then the speech is the next turn
    assert windows(t.take_turn()) == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_speech_masked_as_echo_neither_ends_nor_starts_a_turn():
    """After a barge-in the user goes on under the answer's echo tail, vetoed by the guard (masked): the turn waits
    for the tail to pass and ends after the real end of speech, keeping the masked windows. Outside a turn a masked
    window is silence: echo never starts one."""
    probs = [0.1] * 3 + [0.9] * 2 + [0.0] * 12 + [0.9] * 5 + [0.1] * 10
    t, events, _ = run(probs, assistant_speaking=True, masked=set(range(5, 17)))
    assert events == {4: INTERRUPT, 22: PAUSE, 29: SPEECH_END}
    assert windows(t.take_turn()) == list(range(1, 23))
    _, events, _ = run(probs, assistant_speaking=True)  # the same windows as plain silence: the turn ends at once
    assert events[5] == PAUSE and events[12] == SPEECH_END
    _, events, _ = run([0.0] * 10, assistant_speaking=True, masked=set(range(10)))
    assert events == {}


@pytest.mark.parametrize("kw", [{"window": 1024}, {"threshold": 1.0}, {"min_silence": 0}, {"pre_roll": -1},
                                {"pause": 0}, {"pause": 6000}])
def test_invalid_options_are_rejected(kw):
    with pytest.raises(ValueError):
        TurnOptions(**kw)
