"""Speaker embeddings without torch: 16 kHz audio -> log-mel features -> CAM++ graph -> raw 192-d vector.

The features reproduce what upstream's web demo feeds CAM++ when it clones a voice (`torchaudio.transforms.
MelSpectrogram(16000, n_fft=512, win_length=400, hop_length=160, n_mels=80, f_min=20, f_max=7600, norm='slaney',
mel_scale='slaney')`, then `log(clamp(., 1e-10))` and the mean over time subtracted): a periodic Hann window of 400
samples centred in the 512-point frame, frames centred on every 160th sample (the signal reflect-padded by 256 on
both sides), power spectrum, Slaney-scale triangular filters with Slaney area normalisation. Computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import OmniError
from .session import GraphSession

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class MelOptions:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 20.0
    f_max: float = 7600.0
    log_floor: float = 1e-10


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney scale: linear (3 bins per 200 Hz) below 1 kHz, logarithmic above (27 bins per factor 6.4)."""
    f = np.asarray(f, np.float64)
    log_part = 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, f * 3.0 / 200.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * 200.0 / 3.0)


@lru_cache(maxsize=4)
def mel_filterbank(opts: MelOptions = MelOptions()) -> np.ndarray:
    """float64 [n_fft/2 + 1, n_mels]: triangles between n_mels + 2 points equally spaced in mel, each scaled by
    2 / (its width in Hz) (Slaney's equal-area normalisation)."""
    bins = np.linspace(0.0, opts.sample_rate / 2, opts.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(opts.f_min), _hz_to_mel(opts.f_max), opts.n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))


def log_mel(pcm16k: np.ndarray, opts: MelOptions = MelOptions()) -> np.ndarray:
    """float32 [frames, n_mels] with frames = 1 + len // hop: CAM++'s input, mean over time removed."""
    x = np.asarray(pcm16k, np.float64).reshape(-1)
    pad = opts.n_fft // 2
    if x.size <= pad:
        raise OmniError(f"audio of {x.size} samples is too short for speaker features (need more than {pad})")
    x = np.pad(x, pad, mode="reflect")
    frames = 1 + (x.size - opts.n_fft) // opts.hop_length
    idx = np.arange(opts.n_fft)[None] + opts.hop_length * np.arange(frames)[:, None]
    window = np.zeros(opts.n_fft)
    left = (opts.n_fft - opts.win_length) // 2
    window[left:left + opts.win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(opts.win_length) / opts.win_length)
    power = np.abs(np.fft.rfft(x[idx] * window, axis=-1)) ** 2
    logmel = np.log(np.maximum(power @ mel_filterbank(opts), opts.log_floor))
    return (logmel - logmel.mean(axis=0, keepdims=True)).astype(np.float32)


class SpeakerEncoder:
    """CAM++ over the web demo's features: `embed(pcm16k)` -> float32 [192], the raw vector a voice stores."""

    def __init__(self, session: GraphSession, opts: MelOptions = MelOptions()):
        self.session, self.opts = session, opts

    def embed(self, pcm16k: np.ndarray) -> np.ndarray:
        """16 kHz mono float audio in [-1, 1] -> raw CAM++ embedding [192] (not normalised)."""
        features = log_mel(pcm16k, self.opts)
        return self.session.run({"features": features[None]})["embedding"][0]
