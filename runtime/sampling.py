"""Numpy samplers reproducing upstream's text and audio sampling (spec section 7).

Every draw takes an explicit `numpy.random.Generator`; `greedy=True` replaces the draw by argmax of the
processed logits (penalties still applied), which is how parity with the torch reference is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TextSampling:
    temperature: float = 0.7
    top_p: float = 0.85
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclass(frozen=True)
class AudioSampling:
    temperature: float = 0.2
    top_k: int = 50
    repetition_penalty: float = 1.05
    penalty_window: int = 3  # the last N codes of a codebook are penalised, each occurrence again


def _draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    cdf = np.cumsum(probs, dtype=np.float64)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(), dtype=np.float64)
    return e / e.sum()


def _penalise(z: np.ndarray, ids, penalty: float) -> None:
    """Upstream's repetition penalty, in place: divide positive logits, multiply negative ones."""
    for t in ids:
        z[t] = z[t] / penalty if z[t] > 0 else z[t] * penalty


def sample_text(logits: np.ndarray, seen: np.ndarray, opts: TextSampling,
                rng: np.random.Generator | None, greedy: bool) -> int:
    """One text token from `logits` float32 [vocab].

    `seen` bool [vocab] marks every id already in the sequence (prompt included), for the repetition penalty.
    Top-p keeps the token whose cumulative probability first crosses `top_p`; there is no top-k.
    """
    z = logits.astype(np.float32) / np.float32(opts.temperature + 1e-9)
    if opts.repetition_penalty != 1.0:
        idx = np.flatnonzero(seen)
        s = z[idx]
        z[idx] = np.where(s > 0, s / opts.repetition_penalty, s * opts.repetition_penalty)
    if greedy:
        return int(np.argmax(z))
    if opts.top_p < 1.0:
        order = np.argsort(-z, kind="stable")
        probs = _softmax(z[order])
        mask = np.cumsum(probs) > opts.top_p
        mask[1:], mask[0] = mask[:-1].copy(), False
        z[order[mask]] = -np.inf
    return _draw(_softmax(z), rng)


def sample_code(logits: np.ndarray, recent: np.ndarray, opts: AudioSampling,
                rng: np.random.Generator | None, greedy: bool) -> int:
    """One audio code from one codebook's `logits` float32 [audio_vocab].

    `recent` int64 [<= penalty_window]: that codebook's last codes, oldest first, pads included; a code that occurs
    twice is penalised twice, as upstream does.
    """
    z = logits.astype(np.float32) / np.float32(opts.temperature)
    _penalise(z, recent.tolist(), opts.repetition_penalty)
    if greedy:
        return int(np.argmax(z))
    top = np.argpartition(-z, opts.top_k)[: opts.top_k]
    top = top[np.argsort(-z[top], kind="stable")]
    return int(top[_draw(_softmax(z[top]), rng)])
