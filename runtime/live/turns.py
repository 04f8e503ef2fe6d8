"""Turn-taking from per-window speech probabilities, after upstream's `RealtimeSession.push_chunk` (a turn starts after
`min_speech` of speech with `pre_roll` of audio before it, ends after `min_silence` of silence; speech while the
assistant talks interrupts it), with one addition: a short `pause` inside a turn is announced (PAUSE) so the answer
can be prepared speculatively, and speech after it (RESUME) withdraws that announcement. The turn is confirmed
(SPEECH_END) only after `min_silence`; what the answer works on at PAUSE is exactly the audio SPEECH_END would give.

Differences from upstream, each for a stated reason:
- windows of 512 samples, not 1024: the bundled Silero model (v5+) takes 512 (upstream ships v4);
- 256 ms of silence ends a turn, not 800: on a real sound server (the live benchmark) the VAD's release (30-180 ms
  after the last sound) and the devices (~60 ms) come on top, so 320 ms gave medians of 454-510 ms from the end of speech
  to the first answer sound and 256 ms gives 385-434; a pause of 300 ms or more inside a question is then taken for its
  end, and speech within `LiveOptions.rejoin` of the answer's start drops the answer and continues the question;
- the answer is prepared from the first silent window on (`pause`), so that its compute (full-size int8: SenseVoice,
  prefill, 8 delay steps, first Mimi frame: 155-192 ms measured offline) fits before the turn is confirmed;
- pre-roll is given in samples (1024 = upstream's one 1024-sample window);
- an interruption needs only `barge_in_speech` (64 ms), not `min_speech` (128 ms): 128 ms of speech cannot be
  confirmed within a 200 ms barge-in budget once device latency is counted;
- every window is processed (upstream drops the rest of a 4096-sample client block after an event).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contracts import VAD_CHUNK


@dataclass(frozen=True)
class TurnOptions:
    """Lengths in 16 kHz samples. `pause` of silence starts the speculative answer, `min_silence` confirms it."""

    threshold: float = 0.8  # upstream's web demo
    min_speech: int = 2048  # 128 ms of speech starts a turn (upstream)
    pause: int = 512  # 32 ms (one silent window): prepare the answer
    min_silence: int = 4096  # 256 ms of silence ends the turn
    window: int = VAD_CHUNK
    pre_roll: int = 1024  # audio kept from just before the speech was confirmed
    barge_in_speech: int = 1024  # speech that interrupts the assistant

    def __post_init__(self) -> None:
        if self.window != VAD_CHUNK:
            raise ValueError(f"the VAD decides per {VAD_CHUNK} samples; window must be {VAD_CHUNK}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"the speech threshold must be between 0 and 1, got {self.threshold}")
        if min(self.min_speech, self.min_silence, self.barge_in_speech, self.pause) <= 0 or self.pre_roll < 0:
            raise ValueError("min_speech, pause, min_silence and barge_in_speech must be positive, pre_roll not "
                             "negative")
        if self.pause > self.min_silence:
            raise ValueError(f"the pause that starts preparing an answer ({self.pause} samples) must not be longer "
                             f"than the silence that ends the turn ({self.min_silence})")


SPEECH_START, PAUSE, RESUME, SPEECH_END, INTERRUPT = "speech_start", "pause", "resume", "speech_end", "interrupt"


class TurnTaker:
    """Feed one window and its speech probability at a time; `push` returns an event name or None.
    Set `assistant_speaking` while an answer is played (upstream's `generating`)."""

    def __init__(self, opts: TurnOptions = TurnOptions()):
        self.opts = opts
        self.assistant_speaking = False
        self.reset()

    def reset(self) -> None:
        self.speaking = self.paused = False
        self._buffer: list[np.ndarray] = []
        self._ring: list[np.ndarray] = []
        self._speech = self._silence = self._tail = 0

    def push(self, window: np.ndarray, prob: float, masked: bool = False) -> str | None:
        """`masked`: the window may hold the user's speech under the assistant's echo (`echo.Heard`). Inside a turn
        it counts neither as speech nor as silence: after a barge-in early in the first answer, the guard took the
        user's voice for the answer's echo for up to 1.2 s, the turn ended 256 ms after the barge-in, and the
        answer to that fragment played over the rest of the question (traced on a sound server)."""
        o = self.opts
        if masked and self.speaking and prob <= o.threshold:
            self._buffer.append(window)
            return None
        if prob > o.threshold:
            self._silence = self._tail = 0
            self._speech += len(window)
            self._buffer.append(window)
            if self.paused:
                self.paused = False
                return RESUME
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
                self._buffer = self._trimmed()
                self.speaking = self.paused = False
                self._speech = self._silence = self._tail = 0
                return SPEECH_END
            if not self.paused and self._silence >= o.pause:
                self.paused = True
                return PAUSE
            return None
        if self._speech > 0:  # a blip shorter than min_speech: forget it
            self._buffer.clear()
        self._speech = 0
        keep = -(-o.pre_roll // o.window)
        self._ring = (self._ring + [window])[-keep:] if keep else []
        return None

    def prepend(self, audio: np.ndarray) -> None:
        """Put earlier audio before the turn in progress (the user went on after a pause taken for the end)."""
        self._buffer.insert(0, audio)

    def _trimmed(self) -> list[np.ndarray]:
        """The turn's windows with one window of its trailing silence kept."""
        return self._buffer[:len(self._buffer) - self._tail + 1] if self._tail > 1 else list(self._buffer)

    def turn_audio(self) -> np.ndarray:
        """The turn so far (pre-roll, speech, one trailing window of silence), as SPEECH_END would give it now."""
        kept = self._trimmed()
        return np.concatenate(kept) if kept else np.zeros(0, np.float32)

    def take_turn(self) -> np.ndarray:
        """The finished turn's audio; clears it."""
        audio = self.turn_audio()
        self._buffer, self._tail = [], 0
        return audio
