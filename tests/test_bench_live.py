"""The live suite without a sound server: its signal analysis on synthetic signals whose truth is known by
construction, the driver's instrumentation of the real LiveSession on the simulated devices, and the one-line error
when PulseAudio is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omni_onnx import codes, generate, live, model
from omni_onnx.live.sim import SimClock, SimMicrophone, SimSpeaker
from omni_onnx.bench import live_signal as sig
from omni_onnx.bench.cli import live_rows, main
from omni_onnx.bench.live_driver import NOISE_FLOOR, EventLog, LoopedVoice, instrument
from omni_onnx.generate import GenerationOptions
from omni_onnx.sampling import AudioSampling
from omni_onnx.live import LiveSession
from omni_onnx.model import Conversation, OmniModel
from omni_onnx.speech import load_audio
from omni_onnx.live.vad import SileroVad

RATE = 48000
CLIPS = Path(__file__).parent / "fixtures" / "eval_omni"


def tone(seconds: float, level: float = 0.1, rate: int = RATE) -> np.ndarray:
    return (level * np.sin(2 * np.pi * 300 * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def zeros(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(round(seconds * rate), np.float32)


def test_speech_span_finds_a_burst_to_the_window():
    x = np.concatenate([zeros(0.5), tone(1.0), zeros(0.3)])
    on, off = sig.speech_span(x, RATE)
    assert abs(on - 0.5) <= sig.WINDOW_S and abs(off - 1.5) <= sig.WINDOW_S
    assert sig.speech_span(zeros(1.0) + 0.001, RATE) is None  # below the threshold: no speech


def test_correlate_equals_numpy_valid_correlation():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=700), rng.normal(size=123)
    np.testing.assert_allclose(sig.correlate(a, b), np.correlate(a, b, "valid"), atol=1e-9)


def test_matched_filter_finds_a_clip_under_louder_echo():
    rng = np.random.default_rng(2)
    clip = rng.normal(0, 0.05, RATE // 2).astype(np.float32)
    signal = rng.normal(0, 0.1, 4 * RATE).astype(np.float32)  # other speech, 6 dB louder than the clip
    at = 123457
    signal[at:at + len(clip)] += clip
    assert sig.locate(clip, signal) == at
    assert sig.locate(clip, signal, at - RATE, at + RATE) == at
    with pytest.raises(ValueError):
        sig.locate(clip, signal, len(signal), None)


def test_best_lag_of_a_delayed_copy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=3 * 16000)
    delayed = np.concatenate([np.zeros(2400), 0.5 * x])[:len(x)]  # 150 ms at 16 kHz, -6 dB
    assert sig.best_lag(delayed, x, 8000) == 2400


def test_silence_and_gaps_are_digital_zeros_inside_sound():
    rng = np.random.default_rng(4)
    floor = lambda s: rng.normal(0, NOISE_FLOOR, round(s * RATE)).astype(np.float32)
    # idle, an answer with an 80 ms gap and a quiet passage (floor only), then a stop and idle again
    x = np.concatenate([zeros(1.0), tone(0.5) + floor(0.5), zeros(0.08), floor(0.3), tone(0.4), zeros(1.0)])
    assert sig.first_sound(x) == RATE  # the answer starts exactly where the zeros end
    assert sig.first_sound(x, RATE + 10) == RATE + 10
    # playback ended for good where the last sound before the next turn is, not at the 80 ms gap
    assert sig.last_sound(x, RATE, round(2.8 * RATE)) == round(2.28 * RATE)
    assert sig.last_sound(x, round(2.3 * RATE), round(2.8 * RATE)) is None
    g = sig.gaps(x, RATE)
    assert len(g) == 1 and abs(g[0][0] - 1.5) < 1e-3 and abs(g[0][1] - 0.08) < 1e-3
    assert sig.silent_runs(x, round(0.5 * RATE)) == [(0, RATE), (round(2.28 * RATE), RATE)]


def test_gaps_only_in_one_recording():
    a = [(1.0, 0.05), (2.0, 0.08), (3.0, 0.02)]
    b = [(1.52, 0.05), (3.6, 0.02)]  # b's clock is 0.5 s ahead: a's 1.0 s and 3.0 s ones are in b (within 150 ms)
    assert sig.matched_gaps(a, b, 0.5) == [(2.0, 0.08)]
    assert sig.matched_gaps(a, [], 0.5) == a


def test_splice_pause_goes_into_the_quiet_point_near_the_middle():
    # two words with a 60 ms dip between them at 1.0 s, inside the middle of the speech (0.3 .. 1.75 s)
    x = np.concatenate([zeros(0.3), tone(0.67), tone(0.06, 0.002), tone(0.72), zeros(0.2)])
    out, at = sig.splice_pause(x, RATE, 0.5)
    assert 0.97 <= at <= 1.03
    n = round(at * RATE)
    assert len(out) == len(x) + RATE // 2
    np.testing.assert_array_equal(out[:n], x[:n])
    np.testing.assert_array_equal(out[n + RATE // 2:], x[n:])
    assert not out[n:n + RATE // 2].any()
    with pytest.raises(ValueError):
        sig.splice_pause(zeros(1.0), RATE, 0.3)


def test_looped_voice_repeats_the_recording_with_its_floor():
    pcm = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    v = LoopedVoice(pcm, seed=7)
    got = np.concatenate([v.next(600), v.next(600)])
    noise = np.random.default_rng(7)
    expected = np.concatenate([pcm[:600] + noise.normal(0, NOISE_FLOOR, 600),
                               np.concatenate([pcm[600:], pcm[:200]]) + noise.normal(0, NOISE_FLOOR, 600)])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.mean(np.round(got * 32768) == 0) < 0.05  # the floor keeps played audio off digital zero


def test_instrumented_session_streams_events_and_speaks_the_voice(tiny_bundle, tmp_path, monkeypatch):
    """The driver's patches on the product's LiveSession (simulated devices, real VAD and model): the events
    arrive as JSON lines, the summary is written, and the speaker plays the voice recording, not the model's audio."""
    monkeypatch.setattr(model.Conversation, "respond", model.Conversation.respond)  # restored after the test
    monkeypatch.setattr(live.LiveSession, "run", live.LiveSession.run)
    monkeypatch.setattr(codes.AudioCodeRing, "__init__", codes.AudioCodeRing.__init__)
    monkeypatch.setattr(generate, "sample_code", generate.sample_code)
    m = OmniModel.load(tiny_bundle)
    voice24k = np.tile(np.linspace(-0.3, 0.3, 2400, dtype=np.float32), 40)
    instrument(LoopedVoice(voice24k, seed=0), EventLog(tmp_path / "e.jsonl"), tmp_path / "s.json")
    q = load_audio(CLIPS / "audio-en-05_why_is_the_sky_blue.mp3")
    clock = SimClock()
    speaker = SimSpeaker(clock)
    mic = SimMicrophone(clock, np.concatenate([np.zeros(16000, np.float32), q, np.zeros(48000, np.float32)]),
                        speaker)
    s = LiveSession(Conversation(m), SileroVad.from_bundle(m.bundle), mic, speaker, clock,
                    GenerationOptions(max_new_tokens=30, greedy=True), None)
    s.run()
    lines = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in lines] == ["ready", "speech_start", "pause", "speech_end", "first_audio", "heard",
                                          "answer_end", "prefilled"]
    stop = m.config.codebook_size  # answers never draw a stop code, however likely the model makes it
    logits = np.zeros(stop + 64, np.float32)
    logits[stop + 1] = 100.0
    assert generate.sample_code(logits, np.zeros(0, np.int64), AudioSampling(), None, True) < stop
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [e["kind"] for e in summary["events"]] == [e["kind"] for e in lines[1:]]
    assert summary["underruns_during_answers"] == 0
    out = speaker.output
    start = sig.first_sound(out)
    expected = LoopedVoice(voice24k, seed=0).next(1920 * 3)
    np.testing.assert_allclose(out[start:start + len(expected)], expected, atol=1e-6)


def test_live_rows_show_each_figure():
    totals = {"underruns": 1, "loudspeaker_gaps": 2, "record_gaps": 3, "record_gap_ms": 40.0, "record_seconds": 9.0}
    lv = {"load_average_start": [1.5, 1, 1], "load_average_end": [2.5, 1, 1],
          "latency": {**totals, "median_ms": 1250.0, "each": [{"latency_ms": 1250.0, "turn_to_first_audio_ms": 150.0}]},
          "echo": [{**totals, "delay_ms": 150, "gain_db": -6.0, "self_interruptions": 7, "played_s": 11.5,
                    "recorded_echo_delay_ms": 160.0},
                   {"delay_ms": 500, "gain_db": 0.0, "error": "the app exited (code 1): starved"}],
          "barge_in": {**totals, "median_ms": 360.0, "detected": 5, "barge_ins": 5,
                       "each": [{"onset_to_silent_ms": 360.0}]},
          "double_talk": {**totals, "delay_ms": 30, "gain_db": -6.0, "median_ms": 400.0, "detected": 9,
                          "barge_ins": 10, "self_interruptions": 0},
          "pauses": {**totals, "by_pause_ms": {"500": {"false_end_of_turn": 1, "questions": 2,
                                                      "median_latency_ms": 1300.0}}}}
    text = "\n".join(live_rows(lv))
    for want in ("1250; 1250", "150", "360; 360 (5/5 detected)", "echo 150 ms at -6 dB, recorded delay 160 ms | 7",
                 "9/10", "500 ms pause", "1/2", "| 5 |", "10 / 15",
                 "echo 500 ms at +0 dB | failed: the app exited (code 1): starved |"):
        assert want in text, want


def test_missing_pulseaudio_is_one_line(tiny_bundle, tmp_path, monkeypatch, capsys):
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "pulseaudio" else which(name))
    assert main(["--suite", "live", "--bundle", str(tiny_bundle), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pulseaudio" in err[0] and "apt-get install" in err[0]
