"""Simulated live audio (input from an array, output kept in memory) on a simulated clock: reading a block advances
the clock to the block's end, and each `poll` stands for `step_cost` seconds of computation, so tests of the turn
logic and the echo path are deterministic and need no sound hardware. They prove logic, not latency: the live
benchmark (`omni-bench --suite live`) measures that through a real sound server."""

from __future__ import annotations

import numpy as np

from .devices import BLOCK, MIC_RATE


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SimSpeaker:
    """Plays in simulated time from the first `write`; everything that came out (silence included, from time 0)
    stays in `output`, the simulated loudspeaker's signal."""

    underruns = 0

    def __init__(self, clock: SimClock, sample_rate: int = 24000):
        self.clock, self.sample_rate = clock, sample_rate
        self.played_samples = 0
        self._queue = np.zeros(0, np.float32)
        self._out: list[np.ndarray] = []
        self._rendered = self._taken = 0

    def render(self, t: float) -> None:
        n = round(t * self.sample_rate) - self._rendered
        if n <= 0:
            return
        play, self._queue = self._queue[:n], self._queue[n:]
        self._out.append(np.concatenate([play, np.zeros(n - len(play), np.float32)]))
        self.played_samples += len(play)
        self._rendered += n

    @property
    def output(self) -> np.ndarray:
        self.render(self.clock.now)
        if len(self._out) > 1:
            self._out = [np.concatenate(self._out)]
        return self._out[0] if self._out else np.zeros(0, np.float32)

    def write(self, pcm: np.ndarray) -> None:
        self.render(self.clock.now)
        self._queue = np.concatenate([self._queue, np.clip(pcm, -1.0, 1.0).astype(np.float32)])

    @property
    def busy(self) -> bool:
        self.render(self.clock.now)
        return len(self._queue) > 0

    def finish(self) -> None:
        pass

    def stop(self) -> None:
        self.render(self.clock.now)
        self._queue = np.zeros(0, np.float32)

    def take_played(self) -> np.ndarray:
        out = self.output
        new, self._taken = out[self._taken:], len(out)
        return new

    def close(self) -> None:
        """Play what is queued to the end (the simulated clock moves on)."""
        self.clock.now += len(self._queue) / self.sample_rate
        self.render(self.clock.now)


class SimMicrophone:
    """Blocks of `pcm` (16 kHz) in simulated time, plus the speaker's output as echo: `echo_gain_db` below the
    playback level, `echo_delay` seconds late (None: no echo, as with headphones)."""

    def __init__(self, clock: SimClock, pcm: np.ndarray, speaker: SimSpeaker, block: int = BLOCK,
                 step_cost: float = 0.02, echo_gain_db: float | None = None, echo_delay: float = 0.03):
        self.clock, self.pcm, self.speaker, self.block = clock, np.asarray(pcm, np.float32), speaker, block
        self.step_cost, self.echo_delay = step_cost, echo_delay
        self.echo_gain = None if echo_gain_db is None else 10 ** (echo_gain_db / 20)
        self._next = 0

    def _block(self) -> np.ndarray:
        i = self._next
        self._next += 1
        x = self.pcm[i * self.block:(i + 1) * self.block]
        x = np.pad(x, (0, self.block - len(x)))
        if self.echo_gain is None:
            return x
        t = (i * self.block + np.arange(self.block)) / MIC_RATE - self.echo_delay  # when the echo left the speaker
        out, rate = self.speaker.output, self.speaker.sample_rate
        return x + self.echo_gain * np.interp(t * rate, np.arange(len(out)), out, left=0.0, right=0.0)

    def _end(self, i: int) -> float:
        return (i + 1) * self.block / MIC_RATE

    @property
    def backlog(self) -> int:
        return max(0, min(round(self.clock.now * MIC_RATE), len(self.pcm)) - self._next * self.block)

    def read(self) -> np.ndarray | None:
        if self._next * self.block >= len(self.pcm):
            return None
        self.clock.now = max(self.clock.now, self._end(self._next))
        return self._block().astype(np.float32)

    def poll(self) -> list[np.ndarray]:
        self.clock.now += self.step_cost
        blocks = []
        while self._next * self.block < len(self.pcm) and self._end(self._next) <= self.clock.now:
            blocks.append(self._block().astype(np.float32))
        return blocks

    def close(self) -> None:
        pass
