"""Live audio behind a small interface, for `omni-run --mic`.

A microphone gives fixed blocks of 16 kHz float32 audio (`read` waits for the next one, `poll` returns those ready
now); a speaker takes 24 kHz frames into a jitter buffer that starts with the first frame (`write`), can be cut
(`stop`, for barge-in), reports whether audio is still queued (`busy`) and hands back what it played
(`take_played`, the echo reference). Two backends:
- devices through sounddevice (imported lazily): the microphone captures at the device's native rate and
  resamples to 16 kHz with soxr; the speaker is `audio_out.Player`. Callbacks only move blocks through queues.
- a simulated one (input from an array, output kept in memory) on a simulated clock: reading a block advances the
  clock to the block's end, and each `poll` stands for `step_cost` seconds of computation, so tests of timing and
  echo are deterministic and need no sound hardware.
"""

from __future__ import annotations

import queue
from typing import Protocol

import numpy as np

from .audio_out import Player, import_sounddevice
from .contracts import VAD_CHUNK
from .errors import OmniError
from .speech import SAMPLE_RATE

MIC_RATE = SAMPLE_RATE  # blocks feed the VAD and SenseVoice, both at the speech front end's rate
BLOCK = VAD_CHUNK  # 32 ms: one VAD decision per block


class Microphone(Protocol):
    block: int

    def read(self) -> np.ndarray | None:
        """The next block, waiting for it; None once the input has ended."""

    def poll(self) -> list[np.ndarray]:
        """The blocks ready now, without waiting."""

    def close(self) -> None: ...


class Speaker(Protocol):
    sample_rate: int
    played_samples: int  # samples of written audio played so far (underrun silence excluded)

    def write(self, pcm: np.ndarray) -> None: ...

    @property
    def busy(self) -> bool: ...

    def stop(self) -> None: ...

    def take_played(self) -> np.ndarray: ...

    def close(self) -> None: ...


def list_devices() -> str:
    devices = import_sounddevice("--list-devices").query_devices()
    return str(devices) if len(devices) else ("PortAudio finds no audio devices on this machine (no sound card, or "
                                              "no permission to use it)")


class DeviceMicrophone:
    """Captures at the device's native rate (what it runs at without conversion) and resamples to 16 kHz."""

    def __init__(self, device: int | str | None = None, block: int = BLOCK, timeout: float = 2.0):
        import soxr

        sd = import_sounddevice("--mic")
        name = device if device is not None else "(default)"
        try:
            rate = int(sd.query_devices(device, "input")["default_samplerate"])
        except Exception as e:  # ValueError (no such device) or PortAudioError (no devices at all)
            raise OmniError(f"no audio input device {name}: {e}; list the devices with `omni-run --list-devices` "
                            f"and choose one with --input-device") from None
        self.block, self.rate, self.timeout = block, rate, timeout
        self._q: queue.Queue[np.ndarray] = queue.Queue()
        self._resampler = soxr.ResampleStream(rate, MIC_RATE, 1, dtype="float32") if rate != MIC_RATE else None
        self._pending = np.zeros(0, np.float32)
        self._ready: list[np.ndarray] = []
        try:
            self._stream = sd.InputStream(samplerate=rate, channels=1, dtype="float32", device=device,
                                          blocksize=round(rate * block / MIC_RATE), callback=self._callback)
            self._stream.start()
        except Exception as e:  # PortAudioError: busy or vanished device
            raise OmniError(f"cannot open the audio input device {name} at {rate} Hz: {e}; close the program "
                            f"holding it or choose another with --input-device") from None

    def _callback(self, indata, frames, time, status) -> None:
        self._q.put(indata[:, 0].copy())

    def _cut(self, raw: np.ndarray) -> list[np.ndarray]:
        pcm = self._resampler.resample_chunk(raw) if self._resampler is not None else raw
        self._pending = np.concatenate([self._pending, pcm])
        n = len(self._pending) // self.block
        blocks = [self._pending[i * self.block:(i + 1) * self.block] for i in range(n)]
        self._pending = self._pending[n * self.block:]
        return blocks

    def read(self) -> np.ndarray | None:
        while not self._ready:
            try:
                raw = self._q.get(timeout=self.timeout)
            except queue.Empty:
                raise OmniError(f"the microphone sent nothing for {self.timeout:g} s; check --input-device") from None
            self._ready += self._cut(raw)
        return self._ready.pop(0)

    def poll(self) -> list[np.ndarray]:
        while True:
            try:
                self._ready += self._cut(self._q.get_nowait())
            except queue.Empty:
                blocks, self._ready = self._ready, []
                return blocks

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


def device_speaker(sample_rate: int, frame_samples: int, device: int | str | None = None) -> Player:
    return Player(sample_rate, frame_samples, device, keep_played=True)


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SimSpeaker:
    """Plays in simulated time from the first `write`; everything that came out (silence included, from time 0)
    stays in `output`, the simulated loudspeaker's signal."""

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
