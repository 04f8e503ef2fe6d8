"""Keeping the assistant from hearing itself: the speaker's played signal as a reference, and a guard that tells the
assistant's echo in the microphone from the user's voice.

The guard is a double-talk detector in the style of Geigel's: a window counts as the user's voice only if the
microphone is louder, by `margin_db`, than the loudest echo the recent playback could cause. The echo path's gain
(speakers -> room -> microphone) is measured while the assistant plays: a high percentile of mic/reference level
ratios over the last seconds of playback, leaving out windows taken for the user's voice. With headphones the
measured gain is ~0 and the guard never blocks anything; until enough playback has been heard, `initial_gain_db` is
assumed. It gates the VAD's decision; it does not clean the signal (no echo cancellation).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .audio_io import MIC_RATE


class EchoReference:
    """The speaker's played audio at the microphone's rate, one block per microphone block. It may run late (the
    resampler holds back a few ms; the two devices' callbacks are not in phase; zeros stand in until audio arrives),
    which the guard's look-back covers, but never by more than `max_lag` seconds: older samples are dropped."""

    def __init__(self, speaker_rate: int, max_lag: float = 0.1):
        import soxr

        self._resampler = soxr.ResampleStream(speaker_rate, MIC_RATE, 1, dtype="float32")
        self._fifo = np.zeros(0, np.float32)
        self._max_lag = int(max_lag * MIC_RATE)

    def next(self, played: np.ndarray, n: int) -> np.ndarray:
        """Add what the speaker played since the last call; return the next `n` samples."""
        if len(played):
            self._fifo = np.concatenate([self._fifo, self._resampler.resample_chunk(played.astype(np.float32))])
        self._fifo = self._fifo[-(self._max_lag + n):]
        out, self._fifo = self._fifo[:n], self._fifo[n:]
        return np.pad(out, (0, n - len(out)))


@dataclass(frozen=True)
class EchoGuardOptions:
    margin_db: float = 6.0  # how much louder than the expected echo the user must be
    max_delay: float = 0.3  # seconds of speaker -> microphone delay covered (output latency + room)
    initial_gain_db: float = 0.0  # echo path gain assumed before it is measured (laptop speakers: about -10..0 dB)
    calibration: float = 0.5  # seconds of playback heard before the measured gain is used
    history: float = 4.0  # seconds of playback the measurement looks back over
    percentile: float = 95.0
    silence: float = 1e-4  # reference RMS below this is no playback


class EchoGuard:
    def __init__(self, opts: EchoGuardOptions = EchoGuardOptions(), window: int = 512):
        self.opts = opts
        per_s = MIC_RATE / window
        self._ref = deque(maxlen=int(np.ceil(opts.max_delay * per_s)) + 1)
        self._ratios: deque[float] = deque(maxlen=int(opts.history * per_s))
        self._min_ratios = int(opts.calibration * per_s)
        self._margin = 10 ** (opts.margin_db / 20)

    @property
    def gain(self) -> float:
        """The echo path's measured amplitude gain (the initial guess until calibrated)."""
        if len(self._ratios) < self._min_ratios:
            return 10 ** (self.opts.initial_gain_db / 20)
        return float(np.percentile(self._ratios, self.opts.percentile))

    def is_echo(self, mic: np.ndarray, ref: np.ndarray, speech: bool) -> bool:
        """Whether this microphone window can be explained by echo of the playback (ref: the same span played;
        speech: the VAD's verdict). Windows taken for the user's voice do not enter the echo measurement."""
        self._ref.append(float(np.sqrt(np.mean(ref.astype(np.float64) ** 2))))
        envelope = max(self._ref)
        if envelope < self.opts.silence:
            return False
        level = float(np.sqrt(np.mean(mic.astype(np.float64) ** 2)))
        echo = level <= self._margin * self.gain * envelope
        if echo or not speech:
            self._ratios.append(level / envelope)
        return echo
