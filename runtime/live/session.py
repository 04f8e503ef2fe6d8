"""Live spoken conversation: microphone blocks -> echo canceller -> VAD -> turns -> `Conversation.respond` -> speaker.

One thread does everything; the audio callbacks only move blocks through queues. The answer is prepared while the
user may still be speaking: at a short pause (PAUSE) the turn's audio is encoded, prefilled and the first frames are
generated and held back; if the user goes on (RESUME) that work is dropped (history untouched; the KV cache keeps the
common prefix), and once the silence confirms the end of the turn (SPEECH_END) the held frames play at once. While
an answer is generated the microphone is polled between generation steps; speech over the answer (INTERRUPT) aborts
playback, closes the answer's generator, and the answer stays in the history as far as it was heard. Front ends
(`omni-run --mic`, the web page) drive this class through the `Microphone` / `Speaker` interfaces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..audio_out import WavWriter
from ..generate import GenerationOptions
from ..model import AudioChunk, AudioEnd, Conversation, TextDelta, Transcript, TurnEnd, withdraw
from ..speech import audio_token_count
from .devices import MIC_RATE, Microphone, Speaker
from .echo import EchoOptions, EchoPath, Resampler
from .turns import INTERRUPT, PAUSE, RESUME, SPEECH_END, TurnOptions, TurnTaker
from .vad import SileroVad


@dataclass(frozen=True)
class LiveOptions:
    turns: TurnOptions = field(default_factory=TurnOptions)
    echo: EchoOptions = field(default_factory=EchoOptions)
    half_duplex: bool = False  # ignore the microphone while the assistant speaks (no barge-in, no echo risk)
    speculate: bool = True  # prepare the answer at a pause, before the end of the turn is confirmed
    held_frames: int = 6  # frames prepared ahead of the confirmation (480 ms of audio); then generation waits
    rejoin: float = 1.0  # speech this soon after an answer began continues the question: the answer is dropped


@dataclass(frozen=True)
class LiveEvent:
    time: float  # seconds on the session's clock
    kind: str  # speech_start, pause (answer prepared), resume (preparation dropped), speech_end (the turn is
    # confirmed), heard, first_audio, interrupt, playback_stopped, rejoin (the answer is dropped and the question
    # goes on), answer_end (text: the answer as it entered the history), forgot (old messages dropped for room),
    # prefilled (the history went into the cache while idle)
    text: str = ""


class SideBySide:
    """`--record`: the microphone (left) and what was played (right), both at 16 kHz, sample for sample as the two
    devices delivered them; nothing is dropped, so the played channel has every sample the speaker had."""

    def __init__(self, writer: WavWriter):
        self.writer = writer
        self._played = np.zeros(0, np.float32)
        self._mic = np.zeros(0, np.float32)

    def write(self, mic: np.ndarray, played: np.ndarray) -> None:
        self._mic = np.concatenate([self._mic, mic])
        self._played = np.concatenate([self._played, played])
        n = min(len(self._mic), len(self._played))
        if n:
            self.writer.write(np.stack([self._mic[:n], self._played[:n]], axis=1))
            self._mic, self._played = self._mic[n:], self._played[n:]

    def flush(self) -> None:
        """What one side has that the other has not delivered yet, against silence."""
        n = max(len(self._mic), len(self._played))
        if n:
            self.writer.write(np.stack([np.pad(self._mic, (0, n - len(self._mic))),
                                        np.pad(self._played, (0, n - len(self._played)))], axis=1))
            self._mic = self._played = np.zeros(0, np.float32)


class _Answer:
    """An answer in flight: its event stream, the events held back until the turn is confirmed, and the text shown
    by each written frame (what was heard, if it is cut)."""

    def __init__(self, events: Iterator, history_len: int, audio: np.ndarray):
        self.events, self.history_len, self.question = events, history_len, audio
        self.confirmed = self.generated = False
        self.held: list = []
        self.held_frames = 0
        self.frames: list[tuple[int, str]] = []  # per written frame: its start in the answer's audio, text by then
        self.audio, self.shown, self.start, self.confirmed_at = 0, "", 0, 0.0

    def wants_step(self, max_held: int) -> bool:
        return not self.generated and (self.confirmed or self.held_frames < max_held)


class LiveSession:
    """`record`: a 2-channel 16 kHz WAV writer (microphone, played audio), or None. `show` prints the dialogue;
    `on_answer` gets each answer event (Transcript, TextDelta, AudioChunk, AudioEnd, TurnEnd) once it is released,
    i.e. never those of an answer prepared and dropped."""

    def __init__(self, conv: Conversation, vad: SileroVad, mic: Microphone, speaker: Speaker,
                 clock: Callable[[], float], gen: GenerationOptions, rng: np.random.Generator | None,
                 opts: LiveOptions = LiveOptions(), record: WavWriter | None = None,
                 show: Callable[[str], None] = lambda s: None, on_answer: Callable[[object], None] = lambda ev: None):
        if mic.block != opts.turns.window:
            raise ValueError(f"the microphone block ({mic.block}) must be the VAD window ({opts.turns.window})")
        self.conv, self.mic, self.speaker, self.clock = conv, mic, speaker, clock
        self.gen, self.rng, self.opts, self.show, self.on_answer = gen, rng, opts, show, on_answer
        self.record = SideBySide(record) if record is not None else None
        self.turns = TurnTaker(opts.turns)
        self.echo = EchoPath(opts.echo, mic.block, vad)
        self._to_mic_rate = Resampler(speaker.sample_rate, MIC_RATE)
        self.answer: _Answer | None = None
        self.events: list[LiveEvent] = []

    def log(self, kind: str, text: str = "") -> None:
        self.events.append(LiveEvent(self.clock(), kind, text))

    def run(self) -> None:
        """Until the microphone ends; on an error or Ctrl-C the speaker is cut before it propagates."""
        try:
            while True:
                a = self.answer
                if a is not None and a.wants_step(self.opts.held_frames):
                    blocks = self.mic.poll()
                elif (block := self.mic.read()) is not None:
                    blocks = [block]
                else:
                    self._input_ended()
                    return
                backlog = self.mic.backlog
                for i, b in enumerate(blocks):
                    self._on(self._feed(b, backlog + (len(blocks) - 1 - i) * len(b)))
                self._advance()
        except BaseException:
            self.speaker.stop()
            raise
        finally:
            if self.record is not None:
                self.record.flush()

    def _feed(self, block: np.ndarray, behind: int) -> str | None:
        """`behind`: samples captured after this block (see `EchoReference`)."""
        played = self._to_mic_rate(self.speaker.take_played())
        if self.record is not None:
            self.record.write(block, played)
        heard = self.echo.hear(block, played, self.opts.turns.threshold, behind)
        if self.opts.half_duplex and self.turns.assistant_speaking:
            return None
        event = self.turns.push(heard.audio, heard.speech, heard.masked)
        if event is not None:
            self.log(event)
        return event

    def _on(self, event: str | None) -> None:
        if event == PAUSE and self.opts.speculate and self.answer is None:
            self._start(self.turns.turn_audio())
        elif event == RESUME and self.answer is not None and not self.answer.confirmed:
            self._drop()
        elif event == SPEECH_END:
            audio = self.turns.take_turn()
            if self.answer is None:
                self._start(audio)
            self._confirm()
        elif event == INTERRUPT and self.answer is not None:
            self._cut()

    def _start(self, audio: np.ndarray) -> None:
        forgot = self.conv.forget_oldest(audio_token_count(len(audio)) + self.gen.max_new_tokens)
        if forgot:
            self.log("forgot", f"{forgot} oldest messages, to keep room in the context")
        self.answer = _Answer(self.conv.respond(None, self.gen, self.rng, audio=audio, late_transcript=True),
                              len(self.conv.history), audio)

    def _drop(self) -> None:
        """The user went on speaking: the prepared answer was never shown or heard."""
        withdraw(self.answer.events)
        self.answer = None

    def _confirm(self) -> None:
        a = self.answer
        a.confirmed, a.start, a.confirmed_at = True, self.speaker.played_samples, self.clock()
        self.turns.assistant_speaking = True
        self.show("\nyou> ")
        for ev in a.held:
            self._emit(ev)
        a.held = []
        if a.generated:
            self.speaker.finish()

    def _advance(self) -> None:
        """One generation step of the answer in flight, or its end once it has been generated and played."""
        a = self.answer
        if a is None:
            return
        if a.wants_step(self.opts.held_frames):
            ev = next(a.events, None)
            a.generated = ev is None or isinstance(ev, TurnEnd)
            if ev is not None and a.confirmed:
                self._emit(ev)
            elif ev is not None:
                a.held.append(ev)
                a.held_frames += isinstance(ev, AudioChunk)
            if a.generated and a.confirmed:
                self.speaker.finish()
        elif a.confirmed and a.generated and not self.speaker.busy:
            self.turns.assistant_speaking = False
            self.log("answer_end", self.conv.history[-1].content)
            self.show("\n")
            self.answer = None
            self._prefill_history()

    def _prefill_history(self) -> None:
        """Between answers, with nothing to play: the next question's prompt up to its speech goes into the cache
        now, not after the user has stopped (not while an answer plays: it would hold up barge-in detection)."""
        computed = self.conv.prefill_history(self.gen.open_thinking)
        if computed:
            self.log("prefilled", f"{computed} positions of history")

    def _emit(self, ev) -> None:
        a = self.answer
        self.on_answer(ev)
        if isinstance(ev, Transcript):
            self.log("heard", ev.text)
            self.show(f"{ev.text}\nomni> ")
        elif isinstance(ev, TextDelta):
            a.shown += ev.text
            self.show(ev.text)
        elif isinstance(ev, AudioChunk):
            if not a.frames:
                self.log("first_audio")
            self.speaker.write(ev.pcm)
            a.frames.append((a.audio, a.shown))
            a.audio += len(ev.pcm)
        elif isinstance(ev, AudioEnd):
            self.speaker.finish()  # the text may go on; running dry is no underrun now

    def _cut(self) -> None:
        """Barge-in: silence first, then close the generator; the history keeps what was heard. Speech within
        `rejoin` of the answer's start means the pause was not the end of the question: the answer is dropped and
        the question goes on from where it was."""
        a = self.answer
        self.speaker.stop()
        self.log("playback_stopped")
        a.events.close()
        self.turns.assistant_speaking = False
        self.answer = None
        if self.clock() - a.confirmed_at < self.opts.rejoin:
            self.conv.truncate_history(a.history_len)
            self.turns.prepend(a.question)
            self.log("rejoin")
            self.show(" [you went on: answer dropped]\n")
            return
        if len(self.conv.history) > a.history_len:  # else it was cut before the answer began
            played = self.speaker.played_samples - a.start
            heard = [text for begin, text in a.frames if begin < played]
            self.conv.amend_last_reply(heard[-1] if heard else "")
            self.log("answer_end", self.conv.history[-1].content)
        self.show(" [interrupted]\n")
        self._prefill_history()

    def _input_ended(self) -> None:
        """No more microphone: a confirmed answer is generated to its end (the caller lets it play), a prepared one
        is dropped."""
        a = self.answer
        if a is None:
            return
        if not a.confirmed:
            self._drop()
            return
        while not a.generated:
            self._advance()
        self.log("answer_end", self.conv.history[-1].content)
        self.show("\n")
        self.answer = None
