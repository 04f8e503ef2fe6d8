"""Keeping the assistant from hearing itself. Two stages, both fed with what the speaker played (the reference):

1. `EchoCanceller`: WebRTC's AEC3 (the `livekit` wheel's audio processing module) subtracts the echo from the
   microphone before the VAD sees it. AEC3 finds the echo within about 0.5 s of the reference; device buffers,
   Bluetooth and the sound server can add more, so beyond that the reference is delayed by what
   `EchoDelayEstimator` measures (envelope cross-correlation over the last seconds of playback).
   Offline, speech echo at 0 dB: no VAD window above threshold at 0.2-0.5 s without the pre-delay, ~240 of 400
   windows at 0.7-0.9 s; with it, at most 2 once the delay is locked (after 2.5 s of playback).
2. `EchoGuard`: a double-talk detector in the style of Geigel's: a window counts as the user's voice only if the
   microphone is louder, by `margin_db`, than the loudest echo the recent playback could cause, with the echo path's
   gain measured while the assistant plays. Behind the canceller while it may still be converging; alone with
   `--echo guard` (where livekit is not installed).
`EchoPath` puts them together for turn-taking.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..errors import OmniError
from ..speech import SAMPLE_RATE as MIC_RATE
from .vad import SileroVad

AEC_FRAME = MIC_RATE // 100  # the audio processing module takes 10 ms frames


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def _correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Normalised correlation of two equally long envelopes; None when either is flat."""
    a, b = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denom) if denom > 1e-12 else None


class Resampler:
    """The played stream at the microphone's rate, chunk by chunk, with soxr's quick quality: it holds back one
    sample where the high-quality filter holds back 150-570 (10-35 ms, varying), which would make the echo
    reference late by more than its slack. The canceller cancels as deeply with either (offline, 24 -> 16 kHz
    speech echo: 63.8 vs 63.6 dB)."""

    def __init__(self, rate_in: int, rate_out: int):
        import soxr

        self._stream = (soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality="QQ")
                        if rate_in != rate_out else None)

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        pcm = np.asarray(pcm, np.float32)
        return pcm if self._stream is None or not len(pcm) else self._stream.resample_chunk(pcm)


class EchoReference:
    """What the speaker played, at the microphone's rate, one block per microphone block, kept early: the block
    handed out is the oldest played audio not yet handed out, and the lead (the audio received but not yet handed
    out, less what was played while the microphone captured the `behind` samples after this block) is trimmed to
    `lead` seconds whenever it stayed above `lead + tolerance` for `settle` seconds. The played stream's samples
    arrive when the output callback hands them to the device, before they are heard (the device's buffer, then the
    microphone's), so a reference that is at most `lead + tolerance` behind the newest of them is ahead of the
    echo: what the canceller and the delay estimator need. Aligning by index from each stream's start is not
    enough: on PulseAudio the capture stream delivers its first block ~1.7 s after it was started, while the
    playback stream runs from its start, and the reference came out 50-80 ms behind the echo (measured), which no
    canceller can remove. The two streams run on one clock, so after the first trim the alignment holds. A trim
    moves the echo path under the canceller (it re-adapts, and its output carried the echo as speech: traced), so it
    happens only after a second in which nothing was played. Without `behind`, the lead also counted how far the
    caller lagged the devices (4-22 ms at best within half a second while an answer is generated on 2 cores), and
    even with it the lead stayed 20 ms high for a second within an answer (traced); the echo's delay behind the
    reference stayed the same both times until the trim (GCC-PHAT), so those trims were not needed."""

    def __init__(self, lead: float = 0.03, tolerance: float = 0.02, settle: float = 1.0, silence: float = 1e-4):
        self._fifo = np.zeros(0, np.float32)
        self._lead, self._tolerance = int(lead * MIC_RATE), int(tolerance * MIC_RATE)
        self._settle, self._silence = int(settle * MIC_RATE), silence
        self._min_lead, self._seen, self._played = None, 0, False

    def next(self, played: np.ndarray, n: int, behind: int = 0) -> np.ndarray:
        """Add what the speaker played since the last call (16 kHz); return the next `n` samples."""
        self._fifo = np.concatenate([self._fifo, played])
        out = np.pad(self._fifo[:n], (n - min(n, len(self._fifo)), 0))
        self._fifo = self._fifo[n:]
        lead = len(self._fifo) - behind
        self._min_lead = lead if self._min_lead is None else min(self._min_lead, lead)
        self._seen += n
        self._played = self._played or max(np.abs(out).max(initial=0.0), np.abs(self._fifo).max(initial=0.0)) \
            > self._silence
        if self._seen >= self._settle:
            if self._min_lead > self._lead + self._tolerance and not self._played:
                self._fifo = self._fifo[self._min_lead - self._lead:]
            self._min_lead, self._seen, self._played = None, 0, False
        return out


class DelayLine:
    """A stream delayed by `delay` samples; changing the delay inserts silence or skips samples."""

    def __init__(self, delay: int = 0):
        self._buf = np.zeros(delay, np.float32)

    @property
    def delay(self) -> int:
        return len(self._buf)

    def set_delay(self, delay: int) -> None:
        d = delay - len(self._buf)
        self._buf = np.concatenate([np.zeros(d, np.float32), self._buf]) if d > 0 else self._buf[-d:]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, x])
        out, self._buf = self._buf[:len(x)], self._buf[len(x):]
        return out


@dataclass(frozen=True)
class DelayEstimatorOptions:
    hop: int = 128  # envelope resolution: 8 ms
    history: float = 2.0  # seconds of envelope correlated
    max_delay: float = 1.2  # longest speaker -> microphone delay searched (at most half the history)
    every: float = 0.5  # seconds between estimates
    min_correlation: float = 0.5  # an echo: two estimates in a row this correlated, at lags this many hops apart,
    agree: int = 3  # lock the delay
    relock: int = 3  # moving a locked delay takes this many estimates in a row, each this correlated: a user who
    relock_correlation: float = 0.8  # speaks ~1 s into each answer correlates with it by the onsets (0.5-0.9)
    no_echo: float = 0.2  # no echo: two estimates in a row below this (headphones, muted speakers)
    leave: float = 0.4  # delays up to this are left to the canceller: moving its reference makes it re-converge
    margin: float = 0.25  # of a longer delay, what is left to the canceller (it cannot cancel an echo before it)
    min_peak: float = 40.0  # a lock also needs the waveforms' GCC-PHAT peak at the lag this many times its median


class EchoDelayEstimator:
    """Whether the microphone hears the speaker, and with what delay, from the envelopes of the reference and the raw
    microphone: the lag of the highest normalised cross-correlation, confirmed on the waveforms. `echo` is None until
    known. Envelopes alone correlate a user who speaks about as long into each answer (the benchmark's barge-ins come
    1 s in) with the playback: 0.6-0.99 at lags of 0.8-1 s, twice in a row, so a delay of 0.88 s was locked with no
    echo at all and every later barge-in was taken for its echo (traced). The waveforms' generalised
    cross-correlation with phase transform (GCC-PHAT) tells them apart: at an echo's lag its peak was 150-720 times
    its median over all lags when a lock was proposed (30-500 ms, -10..0 dB), at the false lags 4-29 times."""

    def __init__(self, opts: DelayEstimatorOptions = DelayEstimatorOptions()):
        self.opts = opts
        n = int(opts.history * MIC_RATE / opts.hop)
        self._mic: deque[float] = deque(maxlen=n)
        self._ref: deque[float] = deque(maxlen=n)
        self._mic_pcm = self._ref_pcm = np.zeros(0, np.float32)
        self._since = 0
        self._recent: deque[tuple[int, float]] = deque(maxlen=max(2, opts.relock))  # (lag in hops, correlation)
        self.delay: float | None = None  # seconds, once locked
        self.echo: bool | None = None

    def push(self, mic: np.ndarray, ref: np.ndarray) -> float | None:
        """Add a block of each; the newly locked delay in seconds when it changed, else None."""
        o, hop = self.opts, self.opts.hop
        for i in range(0, len(mic) - hop + 1, hop):
            self._mic.append(_rms(mic[i:i + hop]))
            self._ref.append(_rms(ref[i:i + hop]))
        keep = self._mic.maxlen * hop
        self._mic_pcm = np.concatenate([self._mic_pcm, mic])[-keep:]
        self._ref_pcm = np.concatenate([self._ref_pcm, ref])[-keep:]
        self._since += len(mic)
        if self._since < o.every * MIC_RATE or len(self._ref) < self._ref.maxlen:
            return None
        self._since = 0
        now = self._estimate()
        if now is None:
            self._recent.clear()
            return None
        self._recent.append(now)
        if len(self._recent) >= 2 and max(c for _, c in list(self._recent)[-2:]) < o.no_echo:
            self.echo = False
        if not self._agree(2, o.min_correlation):
            return None
        delay = now[0] * hop / MIC_RATE
        if self.delay is not None and abs(delay - self.delay) <= o.agree * hop / MIC_RATE:
            self.echo = True
            return None
        if self.delay is not None and not self._agree(o.relock, o.relock_correlation):
            return None
        if not self._waveforms_agree(now[0]):
            return None
        self.echo, self.delay = True, delay
        return delay

    def coherence(self, seconds: float = 0.4) -> float | None:
        """How well the last `seconds` of the microphone's envelope follow the reference's at the locked delay
        (normalised correlation): near 1 while the microphone hears only the echo, lower while someone talks over
        it; None without a locked delay or with a flat stretch."""
        if self.delay is None:
            return None
        hop = self.opts.hop
        n, lag = int(seconds * MIC_RATE / hop), round(self.delay * MIC_RATE / hop)
        if len(self._mic) < n + lag:
            return None
        return _correlation(np.asarray(self._mic)[-n:],
                            np.asarray(self._ref)[len(self._ref) - n - lag:len(self._ref) - lag])

    def _waveforms_agree(self, lag: int) -> bool:
        """The GCC-PHAT of the raw histories peaks within `agree` hops of `lag` (in hops), by `min_peak`."""
        o = self.opts
        n = 1 << int(np.ceil(np.log2(2 * len(self._mic_pcm))))
        cross = np.fft.rfft(self._mic_pcm, n) * np.conj(np.fft.rfft(self._ref_pcm, n))
        gcc = np.abs(np.fft.irfft(cross / (np.abs(cross) + 1e-12), n)[:int(o.max_delay * MIC_RATE)])
        near = gcc[max(0, (lag - o.agree) * o.hop):(lag + o.agree + 1) * o.hop]
        return len(near) > 0 and float(near.max()) >= o.min_peak * float(np.median(gcc))

    def _agree(self, n: int, correlation: float) -> bool:
        """The last `n` estimates each at least this correlated, at lags within `agree` hops of each other."""
        last = list(self._recent)[-n:]
        lags = [lag for lag, _ in last]
        return len(last) == n and min(c for _, c in last) >= correlation and max(lags) - min(lags) <= self.opts.agree

    def _estimate(self) -> tuple[int, float] | None:
        """(lag in hops, its correlation), or None while too little was played to tell."""
        mic, ref = np.asarray(self._mic), np.asarray(self._ref)
        if np.count_nonzero(ref > 1e-3) < len(ref) // 3:
            return None
        n, best = len(ref), (0, 0.0)
        for lag in range(min(n // 2, int(self.opts.max_delay * MIC_RATE / self.opts.hop))):
            c = _correlation(mic[lag:], ref[:n - lag]) or 0.0
            if c > best[1]:
                best = (lag, c)
        return best


class _Aec3:
    """One AEC3 instance and the delay line of its reference."""

    def __init__(self, rtc, delay: int):
        self.apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
        self.ref_delay = DelayLine(delay)
        self.ref = np.zeros(0, np.float32)


class Convergence:
    """Whether a canceller removes the echo yet: over the last `span` seconds of playback, every `piece` seconds of
    microphone signal at least `min_db` louder than the canceller's output (its echo return loss enhancement).
    Latched: once reached it holds, since a user speaking over the playback lowers the ratio without the canceller
    getting worse, until `reset` or until a block of the output is `max_gain_db` louder than its input: a canceller
    that adds energy has the echo path wrong (it moved: +2 to +6 dB, and the canceller's output then carried the
    echo as speech, traced; a user speaking over a cancelled echo gave up to +0.4 dB). On
    the sound server AEC3 let 100-200 ms bursts of a 150-300 ms echo through almost whole for its first 1-2 s,
    after the delay estimator had found the echo and while the ratio over the whole second was already above
    15 dB (answers interrupted themselves, traced)."""

    def __init__(self, span: float = 1.5, piece: float = 0.1, min_db: float = 12.0, silence: float = 1e-3,
                 max_gain_db: float = 2.0):
        self._span, self._piece, self._ratio, self._silence = span, piece, 10 ** (min_db / 10), silence
        self._max_gain = 10 ** (max_gain_db / 20)
        self._mic: deque[float] = deque()
        self._out: deque[float] = deque()
        self.reached = False

    def reset(self) -> None:
        self._mic.clear()
        self._out.clear()
        self.reached = False

    def push(self, mic: np.ndarray, out: np.ndarray, ref: np.ndarray) -> None:
        """`out`: the canceller's output for the microphone block `mic`; `ref`: the reference played meanwhile."""
        if _rms(ref) < self._silence:
            return
        if self.reached:
            if _rms(out) > max(self._max_gain * _rms(mic), self._silence):
                self.reset()
            return
        self._mic.append(float(np.sum(mic.astype(np.float64) ** 2)))
        self._out.append(float(np.sum(out.astype(np.float64) ** 2)))
        blocks = round(self._span * MIC_RATE / len(mic))
        if len(self._mic) < blocks:
            return
        while len(self._mic) > blocks:
            self._mic.popleft()
            self._out.popleft()
        k = max(1, round(self._piece * MIC_RATE / len(mic)))
        mic_p = np.convolve(self._mic, np.ones(k), "valid")
        out_p = np.convolve(self._out, np.ones(k), "valid")
        heard = mic_p > self._silence ** 2 * k * len(mic)
        self.reached = bool(heard.any()) and bool(np.all(mic_p[heard] >= self._ratio * out_p[heard]))


class EchoCanceller:
    """AEC3 over 10 ms frames. `process` takes a microphone block and the reference block played over the same span
    and returns the cleaned block, 10 ms late (the frames do not divide the block). When the estimated delay moves the
    reference, a second canceller is trained on the new alignment for `warm_up` seconds before it takes over: a
    canceller whose reference jumps re-converges for ~2 s, letting echo through (measured)."""

    def __init__(self, estimator: EchoDelayEstimator | None = None, warm_up: float = 1.5):
        try:
            from livekit import rtc
        except ImportError:
            raise OmniError("echo cancellation needs the audio extra (pip install 'omni-onnx[audio]'); or choose "
                            "--echo guard") from None
        self._rtc = rtc
        self._active = _Aec3(rtc, 0)
        self._next: _Aec3 | None = None
        self._warm_frames, self._warmed = int(warm_up * 100), 0
        self.estimator = estimator if estimator is not None else EchoDelayEstimator()
        self._mic = np.zeros(0, np.float32)
        self._out = np.zeros(AEC_FRAME, np.float32)
        self._in = np.zeros(AEC_FRAME, np.float32)  # the microphone frames behind `_out`, in step with them
        self.convergence = Convergence()

    def _frame(self, pcm: np.ndarray):
        frame = self._rtc.AudioFrame.create(MIC_RATE, 1, AEC_FRAME)
        np.frombuffer(frame.data, np.int16)[:] = np.clip(np.round(pcm * 32767), -32768, 32767).astype(np.int16)
        return frame

    def _retarget(self, delay: float) -> None:
        o = self.estimator.opts
        new = int((delay - o.margin) * MIC_RATE) if delay > o.leave else 0
        if new != (self._next or self._active).ref_delay.delay:
            self._next, self._warmed = _Aec3(self._rtc, new), 0
            self._next.ref = np.zeros(len(self._mic), np.float32)  # in step with the microphone samples held

    @property
    def settled(self) -> bool:
        """An echo was found, the canceller aligned to it (no second canceller still warming up) and removing it."""
        return bool(self.estimator.echo) and self._next is None and self.convergence.reached

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        delay = self.estimator.push(mic, ref)
        if delay is not None:
            self._retarget(delay)
        self._mic = np.concatenate([self._mic, mic])
        cans = [c for c in (self._active, self._next) if c is not None]
        for c in cans:
            c.ref = np.concatenate([c.ref, c.ref_delay(ref)])
        done, taken = [], []
        while len(self._mic) >= AEC_FRAME:
            pcm, self._mic = self._mic[:AEC_FRAME], self._mic[AEC_FRAME:]
            taken.append(pcm)
            for c in cans:
                c.apm.process_reverse_stream(self._frame(c.ref[:AEC_FRAME]))
                c.ref = c.ref[AEC_FRAME:]
                frame = self._frame(pcm)
                c.apm.process_stream(frame)
                if c is self._active:
                    done.append(np.frombuffer(frame.data, np.int16).astype(np.float32) / 32768)
            if self._next is not None:
                self._warmed += 1
                if self._warmed >= self._warm_frames:
                    self._active, self._next = self._next, None
                    cans = [self._active]
                    self.convergence.reset()
        self._out = np.concatenate([self._out, *done])
        self._in = np.concatenate([self._in, *taken])
        out, self._out = self._out[:len(mic)], self._out[len(mic):]
        heard, self._in = self._in[:len(mic)], self._in[len(mic):]
        self.convergence.push(heard, out, ref)
        return out


@dataclass(frozen=True)
class EchoGuardOptions:
    margin_db: float = 6.0  # how much louder than the expected echo the user must be
    max_delay: float = 1.2  # seconds of speaker -> microphone delay covered (devices, Bluetooth, room)
    spread: float = 0.15  # with the delay known: seconds beyond it covered (the echo's ring, jitter)
    initial_gain_db: float = 0.0  # echo path gain assumed before it is measured (laptop speakers: about -10..0 dB)
    horizon: float = 0.6  # seconds of playback before the echo path is measured: an echo up to this late is seen
    calibration: float = 0.3  # seconds of playback measured before the measured gain is used
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
        self._horizon, self._played = int(opts.horizon * per_s), 0
        self._per_s, self._delay = per_s, None
        self._margin = 10 ** (opts.margin_db / 20)
        self._floor = 0.0  # the gain measured before the delay changed, a floor until the history is measured anew

    @property
    def gain(self) -> float:
        """The echo path's measured amplitude gain (the initial guess until calibrated)."""
        if len(self._ratios) < self._min_ratios:
            measured = 10 ** (self.opts.initial_gain_db / 20)
        else:
            measured = float(np.percentile(self._ratios, self.opts.percentile))
        return max(measured, self._floor) if len(self._ratios) < self._ratios.maxlen else measured

    def is_echo(self, mic: np.ndarray, ref: np.ndarray, speech: bool, delay: float | None = None,
                explained: bool = True) -> bool:
        """Whether this microphone window can be explained by echo of the playback (ref: the same span played;
        speech: the VAD's verdict; delay: the echo's, in seconds, once known, else anything up to `max_delay`;
        explained: whether the microphone follows the playback, i.e. is mostly echo). Windows taken for the user's
        voice, or not explained, do not enter the echo measurement: a user talking over the playback had raised
        the measured gain of a -6 dB echo to 0 dB within 2 s (traced), and later barge-ins were taken for echo. A
        known delay lets the user speak right after the playback stops (else the guard listens for echo
        `max_delay` longer); echoes shorter than it stay covered. When the delay becomes known (or moves) the gain
        is measured afresh, with the gain measured before as its floor until `history` is measured: ten windows
        after a pause had measured a -10 dB echo at -20 dB, and the next word interrupted the answer (traced)."""
        self._ref.append(_rms(ref))
        if delay != self._delay:  # the envelope changes meaning: measure the gain afresh
            self._floor = self.gain if self._played > self._horizon else 0.0
            self._delay = delay
            self._ratios.clear()
        if delay is None:
            envelope = max(self._ref)
        else:
            recent = list(self._ref)[::-1]  # recent[k]: the window k windows ago
            envelope = max(recent[:round((delay + self.opts.spread) * self._per_s) + 1])
        if envelope < self.opts.silence:
            return False
        self._played += 1
        level = _rms(mic)
        echo = level <= self._margin * self.gain * envelope
        if (echo or not speech) and explained and self._played > self._horizon:
            self._ratios.append(level / envelope)
        return echo


class Heard(NamedTuple):
    """One microphone window as turn-taking should hear it."""
    audio: np.ndarray  # what a turn keeps
    speech: float  # speech probability, the echo removed
    masked: bool  # the VAD heard speech there that was vetoed as possible echo: the user may be speaking under it


@dataclass(frozen=True)
class EchoOptions:
    """`cancel`: AEC3 on the microphone; `guard`: the level check (behind the canceller only until the delay
    estimator has decided, see `EchoPath`). Headphones: neither."""

    cancel: bool = True
    guard: EchoGuardOptions | None = field(default_factory=EchoGuardOptions)

    @classmethod
    def named(cls, mode: str) -> EchoOptions:
        """`cancel` (the canceller, the guard behind it), `guard` (the level check alone, without livekit) or `off`
        (headphones)."""
        return {"cancel": cls(), "guard": cls(cancel=False), "off": cls(cancel=False, guard=None)}[mode]


class EchoPath:
    """The microphone as turn-taking should hear it: `hear` gives the audio a turn keeps and its speech probability,
    with the assistant's echo removed, and whether speech was vetoed as possible echo (`Heard`).

    With the canceller, what is heard depends on what the delay estimator found (the finding holds across answers):
    - not known yet: the raw microphone with the guard behind it. The canceller is not trusted before it has
      settled: on a real sound server its suppressor zeroed the user's speech over the playback when there was no
      echo (barge-ins heard 1-2 s late or missed), and let echo through once its initial suppression ended (answers
      interrupted themselves). The guard hears a user louder than the echo from 0.9 s into the first answer
      (`EchoGuardOptions.horizon` and `calibration`).
    - an echo, and the canceller aligned to it and removing it (`Convergence`: 3.5-5 s into the first answer on the
      sound server): speech in either the canceller's output or the guarded raw microphone. The turn keeps the
      canceller's output. Before that, the guard alone, with the echo's delay once the estimator has it.
    - none (about 1.2 s into the first answer): the raw microphone alone; the canceller only costs then.
    The estimator can take a user who speaks as answers begin for an echo (their onsets correlate): the guarded
    raw view still hears them then.
    Without the canceller: the raw microphone, with the guard behind it (`--echo guard`) or not (`--echo off`)."""

    EXPLAINED = 0.7  # the microphone is mostly echo while its envelope follows the reference's this closely

    def __init__(self, opts: EchoOptions, window: int, vad: SileroVad):
        self.canceller = EchoCanceller() if opts.cancel else None
        self.reference = EchoReference()
        self.guard = EchoGuard(opts.guard, window) if opts.guard is not None else None
        self._vad = vad
        self._clean_vad = SileroVad(vad.session) if self.canceller is not None else None  # its own state

    @property
    def echo(self) -> bool | None:
        """Whether the microphone hears the speaker: None while unknown, or without the canceller."""
        return self.canceller.estimator.echo if self.canceller is not None else None

    def _raw(self, mic: np.ndarray, ref: np.ndarray, threshold: float, veto: bool) -> tuple[float, bool]:
        """(speech probability, masked: speech that the guard vetoed as echo)."""
        p = self._vad(mic)
        if self.guard is None:
            return p, False
        delay, explained = None, True
        if self.echo:
            est = self.canceller.estimator
            delay, coherence = est.delay, est.coherence()
            explained = coherence is None or coherence >= self.EXPLAINED
        if self.guard.is_echo(mic, ref, p > threshold, delay, explained) and veto:
            return 0.0, p > threshold
        return p, False

    def hear(self, mic: np.ndarray, played: np.ndarray, threshold: float, behind: int = 0) -> Heard:
        """`played`: the new 16 kHz playback since the last call; `behind`: microphone samples captured after this
        block (see `EchoReference`)."""
        ref = self.reference.next(played, len(mic), behind)
        if self.canceller is None:
            return Heard(mic, *self._raw(mic, ref, threshold, veto=True))
        clean = self.canceller.process(mic, ref)
        if self.echo is False:
            return Heard(mic, *self._raw(mic, ref, threshold, veto=False))
        raw, masked = self._raw(mic, ref, threshold, veto=True)
        if not self.canceller.settled:
            return Heard(mic, raw, masked)
        cleaned = self._clean_vad(clean)
        return Heard(clean, max(raw, cleaned), masked and cleaned <= threshold)
