"""Playback moves fixed-size frames through a queue and writes silence on underrun; a missing package or device is
one clear error. sounddevice is replaced by a fake so no sound hardware is needed."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from omni_onnx.audio_out import Player
from omni_onnx.errors import OmniError


class FakeStream:
    latency, active = 0.04, True

    def __init__(self, samplerate, channels, dtype, blocksize, device, callback, latency=None):
        self.callback, self.blocksize, self.started = callback, blocksize, False

    def start(self):
        self.started = True

    def pull(self) -> np.ndarray:
        out = np.full((self.blocksize, 1), 9.0, np.float32)
        self.callback(out, self.blocksize, None, None)
        return out[:, 0]

    def stop(self):
        pass

    def close(self):
        pass


@pytest.fixture()
def fake_sounddevice(monkeypatch):
    mod = types.SimpleNamespace(OutputStream=FakeStream)
    monkeypatch.setitem(sys.modules, "sounddevice", mod)
    return mod


def test_frames_flow_in_blocks_and_underrun_is_silence(fake_sounddevice):
    p = Player(24000, 480)
    frame = np.linspace(-2, 2, 1920, dtype=np.float32)
    p.write(frame[:1000])  # written audio is cut into whole device blocks; the rest waits for more
    p.write(frame[1000:])
    played = np.concatenate([p._stream.pull() for _ in range(4)])
    assert np.array_equal(played, np.clip(frame, -1, 1))
    assert not p._stream.pull().any() and p.underruns == 1  # the answer is still coming: an underrun
    p.write(frame[:100])
    p.finish()  # the answer's last partial block goes out padded; running dry after it is no underrun
    assert np.array_equal(p._stream.pull(), np.r_[np.clip(frame[:100], -1, 1), np.zeros(380, np.float32)])
    assert not p._stream.pull().any() and p.underruns == 1
    p.close()


def test_missing_device_is_a_clear_error(monkeypatch):
    def broken(**kw):
        raise RuntimeError("Error querying device -1")
    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(OutputStream=broken))
    with pytest.raises(OmniError, match="cannot open the audio output device"):
        Player(24000, 1920)


def test_missing_sounddevice_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails like a missing package
    with pytest.raises(OmniError, match="pip install"):
        Player(24000, 1920)
