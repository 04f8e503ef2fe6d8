"""Signal analysis for the live suite: speech onsets and offsets by level (5 ms RMS windows), a clip located in a
recording by matched filter (cross-correlation, which finds it under echo), the loudspeaker's digital silence (the
app's answers carry a noise floor, so zero samples mean nothing was played), and pauses spliced into questions."""

from __future__ import annotations

import numpy as np

WINDOW_S = 0.005
SPEECH_RMS = 0.003  # a 5 ms window above this RMS is sound (the recipe's threshold; matched filters agreed to 3 ms)
DIGITAL_ZERO = 2.5 / 32768  # below 2.5 LSB of int16: nothing played (the answers' noise floor is ~33 LSB RMS)


def window_rms(x: np.ndarray, rate: int, window_s: float = WINDOW_S) -> np.ndarray:
    n = max(1, round(rate * window_s))
    m = len(x) // n
    frames = np.asarray(x[:m * n], np.float64).reshape(m, n)
    return np.sqrt(np.mean(frames ** 2, axis=1))


def speech_span(x: np.ndarray, rate: int, threshold: float = SPEECH_RMS) -> tuple[float, float] | None:
    """(onset, offset) in seconds: the start of the first and the end of the last window above `threshold`."""
    loud = np.flatnonzero(window_rms(x, rate) > threshold)
    if len(loud) == 0:
        return None
    return float(loud[0] * WINDOW_S), float((loud[-1] + 1) * WINDOW_S)


def correlate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full cross-correlation c[k] = sum_n a[n + k] b[n] for k = 0 .. len(a) - len(b), by FFT."""
    n = len(a) + len(b)
    size = 1 << (n - 1).bit_length()
    spec = np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size))
    return np.fft.irfft(spec, size)[:len(a) - len(b) + 1]


def locate(clip: np.ndarray, signal: np.ndarray, start: int = 0, stop: int | None = None) -> int:
    """Sample index in `signal` where `clip` begins, searched over starts in [start, stop): the matched filter's
    peak, which stands out even with other speech (echo) mixed in."""
    stop = len(signal) - len(clip) + 1 if stop is None else min(stop, len(signal) - len(clip) + 1)
    start = max(0, start)
    if stop <= start:
        raise ValueError("the recording is too short to hold the clip in the searched span")
    seg = np.asarray(signal[start:stop + len(clip) - 1], np.float64)
    return start + int(np.argmax(correlate(seg, np.asarray(clip, np.float64))))


def best_lag(later: np.ndarray, earlier: np.ndarray, max_lag: int) -> int:
    """Samples by which `later` trails `earlier` (0 .. max_lag), by normalised-free cross-correlation peak."""
    a = np.asarray(later, np.float64)
    b = np.asarray(earlier, np.float64)[:len(a) - max_lag]
    return int(np.argmax(correlate(a[:len(b) + max_lag], b)))


def first_sound(x: np.ndarray, start: int = 0, level: float = DIGITAL_ZERO) -> int | None:
    """Index of the first sample at or after `start` whose magnitude reaches `level`."""
    hit = np.flatnonzero(np.abs(x[start:]) >= level)
    return None if len(hit) == 0 else start + int(hit[0])


def last_sound(x: np.ndarray, start: int, stop: int, level: float = DIGITAL_ZERO) -> int | None:
    """Index just after the last sample in [start, stop) whose magnitude reaches `level`: where playback ended for
    good when nothing plays again before `stop` (gaps from underruns before it do not count)."""
    hit = np.flatnonzero(np.abs(x[start:stop]) >= level)
    return None if len(hit) == 0 else start + int(hit[-1]) + 1


def silent_runs(x: np.ndarray, min_len: int, level: float = DIGITAL_ZERO) -> list[tuple[int, int]]:
    """(start, length) of every run of at least `min_len` samples below `level`."""
    quiet = np.concatenate([[False], np.abs(x) < level, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    return [(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2]) if e - s >= min_len]


def gaps(x: np.ndarray, rate: int, min_s: float = 0.005, max_s: float = 0.25,
         level: float = DIGITAL_ZERO) -> list[tuple[float, float]]:
    """(time, length) in seconds of silent runs inside played audio: sound on both sides, at least `min_s` and at
    most `max_s` long (longer ones are the pauses between answers)."""
    runs = silent_runs(x, round(min_s * rate), level)
    return [(s / rate, n / rate) for s, n in runs if 0 < s and s + n < len(x) and n <= max_s * rate]


def matched_gaps(gaps_a: list[tuple[float, float]], gaps_b: list[tuple[float, float]], offset: float,
                 tolerance: float = 0.15) -> list[tuple[float, float]]:
    """The gaps of `a` with no gap of `b` within `tolerance` seconds of the same moment (b's time = a's + offset)."""
    times_b = np.array([t for t, _ in gaps_b])
    return [(t, n) for t, n in gaps_a if not len(times_b) or np.min(np.abs(times_b - (t + offset))) > tolerance]


def splice_pause(clip: np.ndarray, rate: int, pause_s: float, span: tuple[float, float] = (0.4, 0.6),
                 window_s: float = 0.02) -> tuple[np.ndarray, float]:
    """`clip` with `pause_s` of silence inserted at its quietest `window_s` window between 40% and 60% of its speech
    (a pause in mid-sentence); returns (spliced clip, where the pause starts in seconds)."""
    speech = speech_span(clip, rate)
    if speech is None:
        raise ValueError("the clip holds no speech to put a pause into")
    on, off = speech
    rms = window_rms(clip, rate, window_s)
    lo = int((on + span[0] * (off - on)) / window_s)
    hi = max(lo + 1, int((on + span[1] * (off - on)) / window_s))
    n = round(rate * window_s)
    at = (lo + int(np.argmin(rms[lo:hi]))) * n + n // 2
    pause = np.zeros(round(pause_s * rate), clip.dtype)
    return np.concatenate([clip[:at], pause, clip[at:]]), at / rate
