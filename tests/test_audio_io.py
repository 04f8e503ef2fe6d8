"""The sounddevice backend with sounddevice replaced by a fake (no hardware): capture at the device's rate becomes
16 kHz blocks of the VAD's size; playback can be cut and reports what it played; missing devices are clear errors.
The echo reference keeps the played signal in step with the microphone."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import soxr
from omni_onnx.audio_io import DeviceMicrophone, SimClock, SimMicrophone, SimSpeaker, device_speaker
from omni_onnx.echo import EchoGuard, EchoReference
from omni_onnx.errors import OmniError


class FakeStream:
    def __init__(self, samplerate, channels, dtype, blocksize, device, callback):
        self.callback, self.blocksize, self.rate = callback, blocksize, samplerate

    def start(self):
        pass

    def stop(self):
        pass

    def close(self):
        pass


@pytest.fixture()
def fake_sd(monkeypatch):
    def query_devices(device=None, kind=None):
        if device not in (None, 0):
            raise ValueError(f"No input device matching {device!r}")
        return {"default_samplerate": 48000.0}
    mod = types.SimpleNamespace(InputStream=FakeStream, OutputStream=FakeStream, query_devices=query_devices)
    monkeypatch.setitem(sys.modules, "sounddevice", mod)
    return mod


def test_capture_at_48k_gives_16k_blocks(fake_sd):
    mic = DeviceMicrophone()
    stream = mic._stream
    assert stream.rate == 48000 and stream.blocksize == 1536
    t = np.arange(48000 * 2) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for i in range(0, len(tone), 1536):
        stream.callback(tone[i:i + 1536, None], 1536, None, None)
    first = mic.read()
    blocks = [first, *mic.poll()]
    assert all(b.shape == (512,) and b.dtype == np.float32 for b in blocks)
    got = np.concatenate(blocks)
    want = soxr.resample(tone, 48000, 16000)
    n = min(len(got), len(want)) - 2000  # the stream's tail is still inside the resampler
    np.testing.assert_allclose(got[1000:n], want[1000:n], atol=1e-3)
    assert mic.poll() == []


def test_missing_input_device_is_a_clear_error(fake_sd):
    with pytest.raises(OmniError, match="--list-devices"):
        DeviceMicrophone("USB mic")


def test_silent_microphone_is_a_clear_error(fake_sd):
    with pytest.raises(OmniError, match="sent nothing"):
        DeviceMicrophone(timeout=0.01).read()


def test_speaker_can_be_cut_and_reports_what_it_played(fake_sd):
    p = device_speaker(24000, 1920)
    out = np.zeros((1920, 1), np.float32)
    for v in (0.1, 0.2, 0.3):
        p.write(np.full(1920, v, np.float32))
    p._stream.callback(out, 1920, None, None)
    assert p.busy and p.played_samples == 1920
    p.stop()
    assert not p.busy
    p._stream.callback(out, 1920, None, None)  # underrun after the cut: silence
    played = p.take_played()
    assert np.array_equal(played, np.r_[np.full(1920, 0.1, np.float32), np.zeros(1920, np.float32)])
    assert p.take_played().size == 0 and p.underruns == 1
    p.close()


def test_simulated_echo_is_the_played_signal_delayed_and_attenuated():
    clock = SimClock()
    speaker = SimSpeaker(clock)
    mic = SimMicrophone(clock, np.zeros(16000, np.float32), speaker, echo_gain_db=-20, echo_delay=0.05)
    clock.now = 0.1
    speaker.write(np.ones(24000, np.float32))  # starts at 0.1 s
    x = np.concatenate([mic.read() for _ in range(31)])
    start = int(0.15 * 16000)
    assert not x[:start - 1].any() and np.allclose(x[start + 1:], 0.1)


def test_echo_reference_follows_the_microphone_timeline():
    ref = EchoReference(24000)
    played = np.random.default_rng(0).normal(0, 0.1, 32 * 768).astype(np.float32)
    got = np.concatenate([ref.next(played[i:i + 768], 512) for i in range(0, len(played), 768)])
    assert len(got) == 32 * 512
    want = soxr.resample(played, 24000, 16000)
    err = [np.abs(got[4000 + lag:14000 + lag] - want[4000:14000]).max() for lag in range(1600)]
    assert min(err) < 1e-5 and int(np.argmin(err)) <= 1024  # the same signal, at most 64 ms late


def test_echo_guard_learns_the_echo_path():
    rng = np.random.default_rng(0)
    guard = EchoGuard()
    for _ in range(40):  # 1.3 s of playback heard at -10 dB
        ref = rng.normal(0, 0.1, 512).astype(np.float32)
        assert guard.is_echo(0.316 * ref, ref, speech=True)
    assert guard.gain == pytest.approx(0.316, rel=0.05)
    ref = rng.normal(0, 0.1, 512).astype(np.float32)
    assert guard.is_echo(0.3 * ref, ref, speech=True)
    assert not guard.is_echo(0.3 * ref + rng.normal(0, 0.1, 512).astype(np.float32), ref, speech=True)
    silent = np.zeros(512, np.float32)
    assert not EchoGuard().is_echo(np.full(512, 0.01, np.float32), silent, speech=True)  # nothing played
