"""The sounddevice backend with sounddevice replaced by a fake (no hardware): capture at the device's rate in 10 ms
device blocks becomes 16 kHz blocks of the VAD's size; playback cut mid-answer drops the queue but keeps the stream
running (an abort would skip time in the echo reference) and reports what was heard; a sound-server name is routed through the `pulse` device; missing devices and a lost sound server are one
clear error. The echo reference keeps the played signal in step with the microphone."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import soxr
from omni_onnx.errors import OmniError
from omni_onnx.live.devices import DeviceMicrophone, device_speaker
from omni_onnx.live.echo import EchoGuard, EchoReference, Resampler
from omni_onnx.live.sim import SimClock, SimMicrophone, SimSpeaker


class FakeStream:
    latency, active = 0.02, True

    def __init__(self, samplerate, channels, dtype, blocksize, device, callback, latency=None):
        self.callback, self.blocksize, self.rate, self.device = callback, blocksize, samplerate, device
        self.requested_latency, self.aborted = latency, 0

    def start(self):
        pass

    def abort(self):
        self.aborted += 1

    def stop(self):
        pass

    def close(self):
        pass


DEVICES = [{"name": "HDA Intel", "default_samplerate": 48000.0}, {"name": "pulse", "default_samplerate": 44100.0}]


@pytest.fixture()
def fake_sd(monkeypatch):
    def query_devices(device=None, kind=None):
        if device is None:
            return DEVICES if kind is None else DEVICES[0]
        if device in (0, 1, "pulse"):
            return DEVICES[1 if device in (1, "pulse") else 0]
        raise ValueError(f"No input device matching {device!r}")
    mod = types.SimpleNamespace(InputStream=FakeStream, OutputStream=FakeStream, query_devices=query_devices)
    monkeypatch.setitem(sys.modules, "sounddevice", mod)
    monkeypatch.delenv("PULSE_SOURCE", raising=False)
    monkeypatch.delenv("PULSE_SINK", raising=False)
    return mod


def test_capture_at_48k_gives_16k_blocks(fake_sd):
    mic = DeviceMicrophone()
    stream = mic._stream
    assert stream.rate == 48000 and stream.blocksize == 480 and stream.requested_latency == "low"
    t = np.arange(48000 * 2) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for i in range(0, len(tone), 480):
        stream.callback(tone[i:i + 480, None], 480, None, None)
    first = mic.read()
    blocks = [first, *mic.poll()]
    assert all(b.shape == (512,) and b.dtype == np.float32 for b in blocks)
    got = np.concatenate(blocks)
    want = soxr.resample(tone, 48000, 16000)
    n = min(len(got), len(want)) - 2000  # the stream's tail is still inside the resampler
    np.testing.assert_allclose(got[1000:n], want[1000:n], atol=1e-3)
    assert mic.poll() == []


def test_microphone_backlog_is_what_was_captured_and_not_yet_returned(fake_sd):
    mic = DeviceMicrophone()
    for _ in range(10):  # 100 ms at 48 kHz
        mic._stream.callback(np.full((480, 1), 0.1, np.float32), 480, None, None)
    assert mic.backlog == 1600
    mic.read()
    waiting = mic.backlog
    blocks = mic.poll()
    assert 0 <= mic.backlog < 512 and blocks  # a block that is not complete yet
    assert abs(waiting - (512 * len(blocks) + mic.backlog)) < 16  # queued device blocks count at the nominal
    # rate; the resampler's delay moves a few samples between them


def test_missing_input_device_is_a_clear_error(fake_sd):
    with pytest.raises(OmniError, match="--list-devices"):
        DeviceMicrophone(7)


def test_sound_server_names_are_routed_through_the_pulse_device(fake_sd):
    import os
    mic = DeviceMicrophone("micsink.monitor")
    assert mic._stream.device == "pulse" and os.environ["PULSE_SOURCE"] == "micsink.monitor"
    assert device_speaker(24000, "spk")._stream.device == "pulse" and os.environ["PULSE_SINK"] == "spk"
    fake_sd.query_devices = lambda device=None, kind=None: (  # no pulse device: the name is refused
        DEVICES[:1] if device is None else (_ for _ in ()).throw(ValueError("no such device")))
    with pytest.raises(OmniError, match="--output-device"):
        device_speaker(24000, "spk")


def test_lost_sound_server_is_one_clear_error(fake_sd):
    with pytest.raises(OmniError, match="sound server or the device went away"):
        DeviceMicrophone(timeout=0.01).read()


def test_speaker_cut_drops_the_queue_keeps_the_stream_and_counts_what_was_heard(fake_sd):
    p = device_speaker(24000)
    assert p.block == 480 and p._stream.requested_latency == "low"
    out = np.zeros((480, 1), np.float32)
    for v in (0.1, 0.2, 0.3):
        p.write(np.full(1920, v, np.float32))
    for _ in range(5):
        p._stream.callback(out, 480, None, None)
    assert p.busy and p.played_samples == 2400
    p.stop()  # the queue is dropped; what the callback already handed to the device plays, and was heard
    assert not p.busy and p._stream.aborted == 0 and p.played_samples == 2400
    p._stream.callback(out, 480, None, None)  # after the cut: silence, and no underrun (no answer is coming)
    played = p.take_played()
    assert np.array_equal(played, np.r_[np.full(1920, 0.1, np.float32), np.full(480, 0.2, np.float32),
                                        np.zeros(480, np.float32)])
    assert p.take_played().size == 0 and p.underruns == 0
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


def test_echo_reference_is_kept_just_ahead_of_the_playback():
    """The played stream started 150 ms before the microphone's first block (as PulseAudio's capture does), silent
    at first (a noise floor below `silence`): within a second the reference is trimmed to 30 ms behind the newest
    played audio, and stays there, in order, however the played audio is chunked; a stalled output makes it later,
    never earlier."""
    ref = EchoReference(lead=0.03, tolerance=0.02, settle=1.0)
    played = np.random.default_rng(0).normal(0, 0.1, 96 * 768).astype(np.float32)
    want = soxr.resample(played, 24000, 16000, quality="QQ")
    want[:24000] *= 1e-4  # 1.5 s of silence before the first answer
    head = 2400  # 150 ms at 16 kHz, played before the microphone's first block
    got = [ref.next(want[:head], 0)]
    for i in range(0, 96 * 512, 512):
        got.append(ref.next(want[head + i:head + i + 512], 512))
    got = np.concatenate(got)
    # the first second: 150 ms behind the newest played audio; then 30 ms
    np.testing.assert_array_equal(got[:16384], want[:16384])
    lag = head - 480  # what was skipped at the trim
    end = len(want) - head  # where the played audio runs out
    np.testing.assert_array_equal(got[16384:end], want[16384 + lag:end + lag])
    stalled = EchoReference()
    assert not stalled.next(np.zeros(0, np.float32), 512).any()  # nothing played yet: zeros stand in
    x = np.arange(1, 257, dtype=np.float32)
    np.testing.assert_array_equal(stalled.next(x, 512), np.r_[np.zeros(256, np.float32), x])


def test_echo_reference_ignores_how_far_behind_the_caller_is():
    """After the first trim the reference stays continuous while the caller falls behind the devices for seconds
    (an answer generated between polls: blocks come in batches, and the played audio taken with the first block of
    a batch includes what played while the later ones were captured). Counting that lag as lead trimmed the
    reference again, which moved the echo path under the canceller (traced on a sound server). Silent throughout (a
    noise floor below `silence`), where a trim is allowed."""
    want = 1e-4 * Resampler(24000, 16000)(np.random.default_rng(0).normal(0, 0.1, 300 * 768).astype(np.float32))
    ref = EchoReference(lead=0.03, tolerance=0.02, settle=1.0)
    head, batch, lag = 2400, 4, 2048  # played before the first block; blocks per poll; 128 ms behind the devices
    got, taken = [], 0

    def feed(upto: int, behind: int) -> None:
        nonlocal taken
        got.append(ref.next(want[taken:upto], 512, behind))
        taken = upto

    for k in range(64):  # 2 s in time, one block per poll
        feed(head + (k + 1) * 512, 0)
    k = 64
    while head + (k + batch) * 512 + lag <= len(want):
        last = k + batch - 1
        for i in range(k, k + batch):
            feed(head + (last + 1) * 512 + lag, (last - i) * 512 + lag)
        k += batch
    got = np.concatenate(got)
    skipped = head - 480  # at the first trim (after 1 s): then 30 ms behind the newest played audio
    np.testing.assert_array_equal(got[:16384], want[:16384])
    np.testing.assert_array_equal(got[16384:], want[16384 + skipped:len(got) + skipped])


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


def test_echo_reference_waits_for_silence_to_trim():
    """The lead grows by 60 ms while an answer plays (the output callback runs further ahead): the reference stays
    continuous until a second without playback, and is trimmed then."""
    rng = np.random.default_rng(0)
    want = np.r_[1e-5 * rng.normal(size=32 * 512), 0.1 * rng.normal(size=96 * 512), 1e-5 * rng.normal(size=96 * 512)]
    want = want.astype(np.float32)
    ref, got, taken = EchoReference(lead=0.03, tolerance=0.02, settle=1.0), [], 0
    for k in range(len(want) // 512 - 8):
        ahead = 480 + (960 if 48 <= k else 0)  # from 0.5 s into the answer: 60 ms further ahead
        upto = min(len(want), (k + 1) * 512 + ahead)
        got.append(ref.next(want[taken:upto], 512))
        taken = upto
    got = np.concatenate(got)
    np.testing.assert_array_equal(got[:128 * 512], want[:128 * 512])  # the answer and the second after it
    tail = got[160 * 512:]
    np.testing.assert_array_equal(tail, want[160 * 512 + 960:160 * 512 + 960 + len(tail)])  # trimmed in silence


def test_echo_guard_keeps_the_gain_it_measured_when_the_delay_becomes_known():
    """A -10 dB echo 100 ms late, measured with any delay; then the delay is locked at the start of a pause. The
    windows of the pause measure almost no echo under the loud envelope of the word before it, but the next word's
    echo is still taken for echo: the gain measured before is the floor until the history is measured anew."""
    rng = np.random.default_rng(0)
    guard, late = EchoGuard(), [np.zeros(512, np.float32)] * 3  # 3 windows: 96 ms

    def play(ref: np.ndarray, delay: float | None) -> bool:
        late.append(ref)
        return guard.is_echo(0.316 * late.pop(0), ref, speech=True, delay=delay)

    for _ in range(60):
        play(rng.normal(0, 0.1, 512).astype(np.float32), None)
    before = guard.gain
    assert before == pytest.approx(0.316, rel=0.1)
    for _ in range(14):  # a pause: 450 ms
        play(np.zeros(512, np.float32), 0.1)
    word = [play(rng.normal(0, 0.1, 512).astype(np.float32), 0.1) for _ in range(6)]
    assert all(word) and guard.gain >= before


def test_echo_guard_with_a_known_delay_listens_only_around_it():
    """After the playback stops, the user's voice at the echo's level is vetoed for `max_delay` while the delay is
    unknown, and only for the delay plus `spread` once it is known."""
    rng = np.random.default_rng(0)
    silent = np.zeros(512, np.float32)

    def vetoed_after_stop(delay):
        guard = EchoGuard()
        for _ in range(60):  # 1.9 s of playback heard at -6 dB
            ref = rng.normal(0, 0.1, 512).astype(np.float32)
            guard.is_echo(0.5 * ref, ref, speech=True, delay=delay)
        voice = rng.normal(0, 0.05, 512).astype(np.float32)  # as loud as the echo was
        return sum(guard.is_echo(voice, silent, speech=True, delay=delay) for _ in range(40)) * 512 / 16000

    assert vetoed_after_stop(None) == pytest.approx(1.2, abs=0.04)
    assert vetoed_after_stop(0.1) == pytest.approx(0.1 + 0.15, abs=0.04)
