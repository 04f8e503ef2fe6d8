"""omni-run's interactive chat (no --text): questions typed at `you>`, answers streamed; history and the KV cache of
its unchanged prefix carry over. Lines that start with '/' are commands, never questions. Ctrl-C stops the answer
being generated (it stays in the history as far as it got); Ctrl-C at the prompt, a second Ctrl-C or Ctrl-D quits."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OmniError
from .model import Conversation

HELP = """commands:
  /image PATH   attach an image to the next question (repeatable)
  /audio PATH   attach a spoken question to the next turn (Enter alone sends it)
  /reset        forget the conversation so far
  /help         this list
  /quit         leave (or Ctrl-D); Ctrl-C stops an answer, a second Ctrl-C leaves"""

BANNER = ("omni-run chat: type a question and press Enter. /image PATH and /audio PATH attach files, /reset starts "
          "over, /help lists the commands, /quit or Ctrl-D leaves; Ctrl-C stops an answer.")


class AnswerStop:
    """Ctrl-C while an answer streams asks that answer to stop (the chat checks `requested` between frames and
    tokens); a second Ctrl-C before it stops raises KeyboardInterrupt, which ends the chat."""

    def __init__(self) -> None:
        self.requested = False

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def armed(self) -> Iterator[AnswerStop]:
        """Ctrl-C handled as above while the block runs (one answer); the usual KeyboardInterrupt outside it."""
        self.requested = False
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


class Chat:
    """The chat loop. `start()` makes a fresh Conversation (again on /reset); `answer(conv, text, out=, images=, audio=,
    stop=)` runs one turn (omni-run's `run_turn`); `read` defaults to `input` (injectable, as `stop` is, for tests)."""

    def __init__(self, start: Callable[[], Conversation], answer: Callable, out: Path | None, images: list[Path],
                 audio: Path | None, read: Callable[[str], str] | None = None, stop: AnswerStop | None = None):
        self.start, self.answer, self.out, self.read = start, answer, out, read
        self.conv = start()
        self.stop = stop if stop is not None else AnswerStop()
        self.images, self.audio, self.turn = list(images), audio, 0

    def run(self) -> None:
        print(BANNER, flush=True)
        while True:
            try:
                text = (self.read or input)("you> ")  # looked up now: tests replace builtins.input
            except (EOFError, KeyboardInterrupt):
                print()
                return
            if text.startswith("/"):
                if not self.command(text):
                    return
            elif text.strip() or self.audio is not None:
                self.ask(text)

    def command(self, line: str) -> bool:
        """Run one /command; False means quit."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        try:
            if name in ("/quit", "/exit"):
                return False
            if name == "/help":
                print(HELP)
            elif name == "/reset":
                self.conv = self.start()
                self.images, self.audio = [], None
                print("[conversation cleared: the next question starts a new one]")
            elif name in ("/image", "/audio") and not arg:
                raise OmniError(f"{name} needs a file: {name} PATH")
            elif name == "/image":
                self.conv.model.check_image(Path(arg))
                self.images.append(Path(arg))
                print(f"[attached {arg} to the next question]")
            elif name == "/audio":
                self.conv.model.check_audio(Path(arg))
                self.audio = Path(arg)
                print(f"[attached {arg} to the next turn; press Enter to send it alone]")
            else:
                raise OmniError(f"unknown command {name}; /help lists them (to ask something that starts with '/', "
                                f"begin the line with a space)")
        except OmniError as e:
            print(f"omni-run: error: {e}", file=sys.stderr, flush=True)
        return True

    def ask(self, text: str) -> None:
        self.turn += 1
        out = self.out.with_name(f"{self.out.stem}-{self.turn}{self.out.suffix}") if self.out else None
        print("omni> ", end="", flush=True)
        try:
            with self.stop.armed():
                self.answer(self.conv, text, out=out, images=tuple(self.images), audio=self.audio, stop=self.stop)
        except OmniError as e:  # a bad question or attachment ends the turn, not the chat
            print(f"\nomni-run: error: {e}", file=sys.stderr, flush=True)
        self.images, self.audio = [], None
