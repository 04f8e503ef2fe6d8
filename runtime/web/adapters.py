"""The one place the web server touches the live-conversation engine (`omni_onnx.live`), so a rewrite of that engine
is re-pointed here and nowhere else. `omni-run --mic` and a browser tab drive the same `LiveSession`: the page's
microphone and loudspeaker stand in for the sound devices behind the engine's microphone/speaker protocol.

Names used from the engine: `LiveSession(conv, vad, mic, speaker, clock, gen, rng, opts, record, show)`, its `run()`
and `log(kind, text)`, `LiveOptions(turns, echo)`, `EchoOptions.named`, `TurnOptions().min_silence`, and the
microphone (`block`, `read`, `poll`, `backlog`) and speaker (`sample_rate`, `write`, `finish`, `stop`, `busy`,
`take_played`, `played_samples`, `underruns`) protocols of `live.devices`.

The browser runs WebRTC's echo canceller, noise suppression and gain control on its microphone
(`getUserMedia({audio: {echoCancellation: true, ...}})`), so the engine runs without its own (`--echo off`): a
second canceller or the level guard after the browser's would only hold back barge-in.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from ..live import LiveOptions, LiveSession
from ..live.devices import BLOCK, MIC_RATE
from ..live.echo import EchoOptions
from ..live.turns import TurnOptions

LIVE_OPTIONS = LiveOptions(TurnOptions(), echo=EchoOptions.named("off"))
_END = None  # queue sentinel: the listening stretch ends (a command is waiting, or the page left)


class Halted(Exception):
    """The page's Stop button: the live session unwinds as on any error (playback cut, the answer's generator closed,
    the history keeping what was generated)."""


class PageGone(Halted):
    """The page disconnected."""


class PageMicrophone:
    """16 kHz blocks from the page. Until the page first turns its microphone on there is nothing to hear and
    `read` waits; after that, while it is off, the engine gets silence in real time as from a sound card (an answer
    can play out and end). Switching it off (push-to-talk released) ends the turn at once: the end-of-turn silence
    (plus 256 ms, as the VAD's probability takes a few windows to fall) is queued in one go instead of being
    waited for."""

    def __init__(self, block: int = BLOCK, silence: int = LIVE_OPTIONS.turns.min_silence + MIC_RATE // 4):
        self.block, self._silence_blocks = block, -(-silence // block)
        self.silence_on_release = self._silence_blocks * block
        self._q: queue.Queue[np.ndarray | None] = queue.Queue()
        self._pending = np.zeros(0, np.float32)
        self._on = self._heard = self._gone = self._ended = self._halt = False
        self._next_silence = time.monotonic()
        self._lock = threading.Lock()

    # page side (the server's event loop)
    def feed(self, pcm: np.ndarray) -> None:
        with self._lock:
            self._pending = np.concatenate([self._pending, pcm.astype(np.float32, copy=False)])
            n = len(self._pending) // self.block
            for i in range(n):
                self._q.put(self._pending[i * self.block:(i + 1) * self.block])
            self._pending = self._pending[n * self.block:]

    def switch(self, on: bool) -> None:
        with self._lock:
            if self._on and not on:
                self._pending = np.zeros(0, np.float32)
                for _ in range(self._silence_blocks):
                    self._q.put(np.zeros(self.block, np.float32))
            self._on = on
            self._heard = self._heard or on
            self._next_silence = time.monotonic()

    def end_stretch(self) -> None:
        """Make `read` return None once what is queued before now has been read."""
        self._q.put(_END)

    def gone(self) -> None:
        self._gone = True
        self._q.put(_END)

    def halt(self, on: bool = True) -> None:
        """Make the engine's next `read` or `poll` raise `Halted` (on=False: the stop was handled elsewhere)."""
        self._halt = on

    def _check(self) -> None:
        if self._gone:
            raise PageGone()
        if self._halt:
            self._halt = False
            raise Halted()

    # engine side (the conversation's thread)
    @property
    def backlog(self) -> int:
        return self._q.qsize() * self.block + len(self._pending)

    def begin_stretch(self) -> None:
        self._ended = False

    def read(self) -> np.ndarray | None:
        while not self._ended:
            self._check()
            try:
                item = self._q.get(timeout=self.block / MIC_RATE)
            except queue.Empty:
                if self._heard and not self._on and time.monotonic() >= self._next_silence:
                    self._next_silence = max(self._next_silence + self.block / MIC_RATE, time.monotonic() - 0.1)
                    return np.zeros(self.block, np.float32)
                continue
            if item is _END:
                self._ended = True
            else:
                return item
        return None

    def poll(self) -> list[np.ndarray]:
        self._check()
        blocks = []
        while not self._ended:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                self._ended = True
            else:
                blocks.append(item)
        return blocks


class PageSpeaker:
    """Frames go to the page as they are written; the page's playback worklet reports how far it has played
    (`played(epoch, samples)`), so `played_samples`, `busy` and `take_played` describe what the page really played.
    `stop` tells the page to drop its queue; both sides then count a new epoch from zero (messages are ordered)."""

    underruns = 0  # the page's playback worklet counts its own (the benchmark reads them there)

    def __init__(self, sample_rate: int, send_audio: Callable[[np.ndarray], None], send_stop: Callable[[], None]):
        self.sample_rate = sample_rate
        self._send_audio, self._send_stop = send_audio, send_stop
        self._lock = threading.Lock()
        self._epoch = 0
        self._before = 0  # samples played in earlier epochs
        self._last_epoch_played = self._last_epoch_written = 0  # the previous epoch (late reports still count)
        self._played = self._written = self._taken = 0
        self._audio = np.zeros(0, np.float32)  # written this epoch and not yet taken

    @property
    def played_samples(self) -> int:
        with self._lock:
            return self._before + self._played

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._written > self._played

    def write(self, pcm: np.ndarray) -> None:
        pcm = np.clip(pcm, -1.0, 1.0).astype(np.float32)
        with self._lock:
            self._written += len(pcm)
            self._audio = np.concatenate([self._audio, pcm])
        self._send_audio(pcm)

    def finish(self) -> None:
        """The answer is all written: the page's jitter buffer plays it out on its own."""

    def stop(self) -> None:
        with self._lock:
            self._epoch += 1
            self._before += self._played
            self._last_epoch_played, self._last_epoch_written = self._played, self._written
            self._played = self._written = self._taken = 0
            self._audio = np.zeros(0, np.float32)
        self._send_stop()

    def played(self, epoch: int, samples: int) -> None:
        """A report from the page: `samples` of this epoch's audio have been played."""
        with self._lock:
            if epoch == self._epoch:
                self._played = max(self._played, min(int(samples), self._written))
            elif epoch == self._epoch - 1:
                samples = min(int(samples), self._last_epoch_written)
                if samples > self._last_epoch_played:
                    self._before += samples - self._last_epoch_played
                    self._last_epoch_played = samples

    def take_played(self) -> np.ndarray:
        with self._lock:
            n = self._played - self._taken
            out, self._audio = self._audio[:n], self._audio[n:]
            self._taken = self._played
            return out


def listen(conv, vad, mic: PageMicrophone, speaker: PageSpeaker, gen, rng,
           on_event: Callable[[str, str], None], on_answer: Callable[[object], None]) -> None:
    """One listening stretch of the live engine, until the microphone ends it (`end_stretch`), the page stops the
    answer (`Halted`) or leaves (`PageGone`). `on_event(kind, text)` gets the engine's events (speech_start, pause,
    resume, speech_end, rejoin, heard, first_audio, interrupt, playback_stopped, answer_end) as they happen,
    `on_answer` each answer's events once released (not those of an answer prepared and dropped)."""

    class PageSession(LiveSession):
        def log(self, kind: str, text: str = "") -> None:
            super().log(kind, text)
            on_event(kind, text)

    mic.begin_stretch()
    vad.reset()
    PageSession(conv, vad, mic, speaker, time.monotonic, gen, rng, LIVE_OPTIONS, on_answer=on_answer).run()
