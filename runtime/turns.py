"""Turn-taking from per-window speech probabilities, as upstream's `RealtimeSession.push_chunk`: a turn starts after
`min_speech` of speech (with `pre_roll` of audio before it), ends after `min_silence` of silence, and speech while
the assistant is talking interrupts it.

Differences from upstream, each for a stated reason:
- windows of 512 samples, not 1024: the bundled Silero model (v5+) takes 512 (upstream ships v4);
- pre-roll is given in samples (1024 = upstream's one 1024-sample window);
- an interruption needs only `barge_in_speech` (64 ms), not `min_speech` (128 ms): with 32 ms windows and the
  model's ~30 ms rise, 128 ms of speech cannot be confirmed within the 150 ms barge-in budget;
- every window is processed (upstream drops the rest of a 4096-sample client block after an event).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contracts import VAD_CHUNK


@dataclass(frozen=True)
class TurnOptions:
    """Upstream web-demo defaults (`RealtimeSession(threshold=0.8, min_speech_ms=128, min_silence_ms=800)`);
    lengths in 16 kHz samples."""

    threshold: float = 0.8
    min_speech: int = 2048  # 128 ms of speech starts a turn
    min_silence: int = 12800  # 800 ms of silence ends it
    window: int = VAD_CHUNK
    pre_roll: int = 1024  # audio kept from just before the speech was confirmed
    barge_in_speech: int = 1024  # speech that interrupts the assistant

    def __post_init__(self) -> None:
        if self.window != VAD_CHUNK:
            raise ValueError(f"the VAD decides per {VAD_CHUNK} samples; window must be {VAD_CHUNK}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"the speech threshold must be between 0 and 1, got {self.threshold}")
        if min(self.min_speech, self.min_silence, self.barge_in_speech) <= 0 or self.pre_roll < 0:
            raise ValueError("min_speech, min_silence and barge_in_speech must be positive, pre_roll not negative")


SPEECH_START, INTERRUPT, SPEECH_END = "speech_start", "interrupt", "speech_end"


class TurnTaker:
    """Feed one window and its speech probability at a time; `push` returns an event name or None.
    Set `assistant_speaking` while an answer is generated or played (upstream's `generating`)."""

    def __init__(self, opts: TurnOptions = TurnOptions()):
        self.opts = opts
        self.assistant_speaking = False
        self.reset()

    def reset(self) -> None:
        self.speaking = False
        self._buffer: list[np.ndarray] = []
        self._ring: list[np.ndarray] = []
        self._speech = self._silence = self._tail = 0

    def push(self, window: np.ndarray, prob: float) -> str | None:
        o = self.opts
        if prob > o.threshold:
            self._silence = self._tail = 0
            self._speech += len(window)
            self._buffer.append(window)
            needed = o.barge_in_speech if self.assistant_speaking else o.min_speech
            if not self.speaking and self._speech >= needed:
                self.speaking = True
                self._buffer = self._ring + self._buffer
                self._ring = []
                return INTERRUPT if self.assistant_speaking else SPEECH_START
            return None
        if self.speaking:
            self._silence += len(window)
            self._tail += 1
            self._buffer.append(window)
            if self._silence >= o.min_silence:
                if self._tail > 1:  # keep one window of the trailing silence
                    del self._buffer[-(self._tail - 1):]
                self.speaking = False
                self._speech = self._silence = self._tail = 0
                return SPEECH_END
            return None
        if self._speech > 0:  # a blip shorter than min_speech: forget it
            self._buffer.clear()
        self._speech = 0
        keep = -(-o.pre_roll // o.window)
        self._ring = (self._ring + [window])[-keep:] if keep else []
        return None

    def take_turn(self) -> np.ndarray:
        """The finished turn's audio (pre-roll, speech, one trailing window of silence); clears it."""
        audio = np.concatenate(self._buffer) if self._buffer else np.zeros(0, np.float32)
        self._buffer = []
        return audio
