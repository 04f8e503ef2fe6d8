"""Fixed-size ring of the Talker's audio codes: the delay pattern, penalties and frame assembly need only the last
`num_codebooks` steps, so memory stays constant however long the answer is.

Codebook i starts one step after codebook i-1, so at step s the frame assembled is `[codes[i][s - 7 + i]]_i`
(for 8 codebooks): codebook 0's code from 7 steps ago ... codebook 7's code from this step.
"""

from __future__ import annotations

import numpy as np


class AudioCodeRing:
    """Codes per codebook, one entry per generation step (pads included), keeping the last `capacity` steps."""

    def __init__(self, num_codebooks: int, pad_code: int, stop_from: int):
        self.n = num_codebooks
        self.capacity = num_codebooks  # frame assembly reaches back n-1 steps; penalties 3
        self.pad_code, self.stop_from = pad_code, stop_from
        self._ring = np.full((num_codebooks, self.capacity), pad_code, dtype=np.int64)
        self.steps = 0  # entries appended per codebook
        self.stop_step = np.full(num_codebooks, -1, dtype=np.int64)  # first step whose code >= stop_from, -1: none

    def recent(self, codebook: int, k: int) -> np.ndarray:
        """The last min(k, steps) codes of one codebook, oldest first."""
        k = min(k, self.steps)
        idx = np.arange(self.steps - k, self.steps) % self.capacity
        return self._ring[codebook, idx]

    def append(self, column: np.ndarray, sampled: np.ndarray) -> None:
        """Append this step's code for every codebook (int64 [n]); `sampled` bool [n] marks codebooks that drew a
        code (the others hold the pad). Only a drawn code >= stop_from is a stop, as upstream."""
        self._ring[:, self.steps % self.capacity] = column
        new_stop = (self.stop_step < 0) & sampled & (column >= self.stop_from)
        self.stop_step[new_stop] = self.steps
        self.steps += 1

    def latest(self) -> np.ndarray:
        """The column appended last, int64 [n] (what the Talker reads at the next position)."""
        return self._ring[:, (self.steps - 1) % self.capacity]

    def all_stopped(self) -> bool:
        return bool((self.stop_step >= 0).all())

    def frame(self, audio_step: int) -> np.ndarray | None:
        """The frame completed by the last append, or None before every codebook has started (`audio_step` < n-1)
        or when any of its codes lies at or past that codebook's stop code."""
        if audio_step < self.n - 1:
            return None
        pos = self.steps - self.n + np.arange(self.n)  # step index of codebook i's entry: step - (n-1) + i
        if ((self.stop_step >= 0) & (pos >= self.stop_step)).any():
            return None
        return self._ring[np.arange(self.n), pos % self.capacity].copy()
