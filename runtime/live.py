"""Live spoken conversation: microphone blocks -> VAD -> turns -> `Conversation.respond` -> speaker, with barge-in.

One thread does everything; the audio callbacks only move blocks through queues. While an answer is generated, the
microphone is polled between generation steps, so the user's speech is noticed within a step (a 32 ms block plus one
Thinker/Talker step). An interruption cuts playback and closes the answer's generator at once; the answer stays in
the history as far as it was heard (the text shown when the last played frame was written: text runs a little ahead
of speech, so this errs on the side of what was said). The history and its KV cache carry across turns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .audio_io import Microphone, Speaker
from .audio_out import WavWriter
from .echo import EchoGuard, EchoGuardOptions, EchoReference
from .generate import GenerationOptions
from .model import AudioChunk, Conversation, TextDelta, Transcript
from .turns import INTERRUPT, SPEECH_END, TurnOptions, TurnTaker
from .vad import SileroVad


@dataclass(frozen=True)
class LiveOptions:
    turns: TurnOptions = field(default_factory=TurnOptions)
    echo: EchoGuardOptions | None = field(default_factory=EchoGuardOptions)  # None: no guard (headphones)
    half_duplex: bool = False  # ignore the microphone while the assistant speaks (no barge-in, no echo risk)


@dataclass(frozen=True)
class LiveEvent:
    time: float  # seconds on the session's clock
    kind: str  # speech_start, turn (end of the user's turn), heard, first_audio, interrupt, playback_stopped,
    # answer_end (text: the answer as it entered the history)
    text: str = ""


class LiveSession:
    """`record`: a 2-channel 16 kHz WAV writer (microphone, played audio), or None. `show` prints the dialogue."""

    def __init__(self, conv: Conversation, vad: SileroVad, mic: Microphone, speaker: Speaker,
                 clock: Callable[[], float], gen: GenerationOptions, rng: np.random.Generator | None,
                 opts: LiveOptions = LiveOptions(), record: WavWriter | None = None,
                 show: Callable[[str], None] = lambda s: None):
        if mic.block != opts.turns.window:
            raise ValueError(f"the microphone block ({mic.block}) must be the VAD window ({opts.turns.window})")
        self.conv, self.vad, self.mic, self.speaker, self.clock = conv, vad, mic, speaker, clock
        self.gen, self.rng, self.opts, self.record, self.show = gen, rng, opts, record, show
        self.turns = TurnTaker(opts.turns)
        self.guard = EchoGuard(opts.echo, mic.block) if opts.echo is not None else None
        self.reference = EchoReference(speaker.sample_rate)
        self.events: list[LiveEvent] = []

    def log(self, kind: str, text: str = "") -> None:
        self.events.append(LiveEvent(self.clock(), kind, text))

    def run(self) -> None:
        """Until the microphone ends; on an error or Ctrl-C the speaker is cut before it propagates."""
        try:
            while (block := self.mic.read()) is not None:
                if self._feed(block) == SPEECH_END:
                    self._answer(self.turns.take_turn())
        except BaseException:
            self.speaker.stop()
            raise

    def _feed(self, block: np.ndarray) -> str | None:
        ref = self.reference.next(self.speaker.take_played(), len(block))
        if self.record is not None:
            self.record.write(np.stack([block, ref], axis=1))
        if self.opts.half_duplex and self.turns.assistant_speaking:
            return None
        prob = self.vad(block)
        if self.guard is not None and self.guard.is_echo(block, ref, prob > self.opts.turns.threshold):
            prob = 0.0
        event = self.turns.push(block, prob)
        if event is not None:
            self.log(event)
        return event

    def _poll(self) -> bool:
        """Feed every block that is ready; whether one of them interrupted."""
        return INTERRUPT in [self._feed(b) for b in self.mic.poll()]

    def _answer(self, pcm: np.ndarray) -> None:
        self.log("turn")
        self.show("\nyou> ")
        written: list[tuple[int, str]] = []  # per frame: where it starts in the answer's audio, the text by then
        shown, audio, interrupted = "", 0, False
        start, before = self.speaker.played_samples, len(self.conv.history)
        self.turns.assistant_speaking = True
        answer = self.conv.respond(None, self.gen, self.rng, audio=pcm)
        try:
            for ev in answer:
                if isinstance(ev, Transcript):
                    self.log("heard", ev.text)
                    self.show(f"{ev.text}\nomni> ")
                elif isinstance(ev, TextDelta):
                    shown += ev.text
                    self.show(ev.text)
                elif isinstance(ev, AudioChunk):
                    if not written:
                        self.log("first_audio")
                    self.speaker.write(ev.pcm)
                    written.append((audio, shown))
                    audio += len(ev.pcm)
                if self._poll():
                    interrupted = True
                    break
            while not interrupted and self.speaker.busy:  # generated; it can still be interrupted while it plays
                block = self.mic.read()
                if block is None:
                    break
                interrupted = self._feed(block) == INTERRUPT
        finally:
            if interrupted:
                self.speaker.stop()
                self.log("playback_stopped")
            answer.close()  # generation stops here; the history keeps what was generated
            self.turns.assistant_speaking = False
        if interrupted and len(self.conv.history) > before:  # else it was cut before the answer began
            played = self.speaker.played_samples - start
            heard = [text for begin, text in written if begin < played]
            self.conv.amend_last_reply(heard[-1] if heard else "")
        self.log("answer_end", self.conv.history[-1].content if len(self.conv.history) > before else "")
        self.show(" [interrupted]\n" if interrupted else "\n")
