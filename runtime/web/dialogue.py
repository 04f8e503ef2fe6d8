"""One browser tab's conversation: a thread that owns a `Conversation` over the shared `OmniModel` and alternates
between listening (the live engine on the page's microphone) and the page's commands (typed questions, image and
voice uploads, voice changes, `/reset`). Commands end the listening stretch, are handled, and listening resumes.
"""

from __future__ import annotations

import itertools
import logging
import queue
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cloning import normalize_voice_name, read_recording, require_cloning
from ..errors import OmniError
from ..generate import GenerationOptions
from ..image import open_rgb
from ..model import AudioChunk, Conversation, OmniModel, TextDelta, Transcript, TurnEnd
from ..user_voices import save_user_voice, user_voice_names
from ..live.vad import SileroVad
from .adapters import Halted, PageGone, PageMicrophone, PageSpeaker, listen

log = logging.getLogger(__name__)
_clone_lock = threading.Lock()  # the cloning graphs load on first use; one clone at a time keeps that single


@dataclass(frozen=True)
class Command:
    kind: str  # text, stop, reset, voice, image, clone, gone
    text: str = ""
    data: bytes = b""


class PageConversation:
    """The conversation as the live engine sees it: the images attached on the page go with each answer until one
    is released to the page (`_on_answer` clears them), so a prepared answer that the user's speech
    withdraws does not use them up."""

    def __init__(self, conv: Conversation, images: Callable[[], list]):
        self.conv, self._images = conv, images

    def respond(self, user_text, opts, rng=None, **kw):
        return self.conv.respond(user_text, opts, rng, images=tuple(self._images()) + tuple(kw.pop("images", ())),
                                 **kw)

    def __getattr__(self, name):
        return getattr(self.conv, name)


def voice_names(model: OmniModel) -> list[str]:
    return model.bundle.voices + [v for v in user_voice_names() if v not in model.bundle.voices]


class Dialogue:
    """`send(message)` puts a JSON-able dict, or a float32 array (24 kHz audio), on the way to the page; it is
    called from this dialogue's thread. Uploads are written to a private temporary folder removed at `close`."""

    def __init__(self, model: OmniModel, gen: GenerationOptions, rng: np.random.Generator | None, context: int,
                 voice: str | None, send: Callable[[dict | np.ndarray], None]):
        self.model, self.gen, self.rng, self.context, self.send = model, gen, rng, context, send
        self.voice = voice
        self.conv = Conversation(model, voice, context)
        self.mic = PageMicrophone()
        self.speaker = PageSpeaker(model.sample_rate, send, lambda: send({"type": "stop"}))
        self.live = model.speech is not None and model.mimi is not None and model.bundle.has_graph("vad")
        self.vad = SileroVad.from_bundle(model.bundle) if self.live else None
        self._commands: queue.Queue[Command] = queue.Queue()
        self._images: list[Path] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="omni-web-")
        self._uploads = itertools.count()
        self._cancel = threading.Event()
        self.thread = threading.Thread(target=self._run, name="omni-web-dialogue", daemon=True)

    def hello(self) -> dict:
        return {"type": "ready", "voices": voice_names(self.model), "voice": self.voice, "live": self.live,
                "sample_rate": self.model.sample_rate, "images": self.model.bundle.has_graph("vision"),
                "cloning": self.model.bundle.has_graph("mimi_encoder") and self.model.bundle.has_graph("campplus")}

    # from the server's event loop
    def submit(self, cmd: Command) -> None:
        if cmd.kind in ("stop", "gone"):
            self._cancel.set()
        if cmd.kind == "stop":
            self.mic.halt()
        self._commands.put(cmd)
        self.mic.end_stretch()

    def close(self) -> None:
        self.mic.gone()
        self.submit(Command("gone"))

    def cleanup(self) -> None:
        """After the thread has ended: uploads removed. The KV caches go with this object."""
        self._tmp.cleanup()

    # the dialogue's thread
    def _run(self) -> None:
        try:
            while True:
                if self.live:
                    try:
                        listen(PageConversation(self.conv, self._attached), self.vad, self.mic,
                               self.speaker, self.gen, self.rng, self._on_event, self._on_answer)
                    except OmniError as e:  # a turn the model refuses (context full...): say so, keep listening
                        self.send({"type": "error", "message": str(e)})
                        continue
                    except PageGone:
                        raise
                    except Halted:  # the Stop button during a spoken answer: it was cut; listening resumes
                        self._answer_stopped()
                    cmds = self._drain()
                else:
                    cmds = [self._commands.get()] + self._drain()
                for cmd in cmds:
                    if cmd.kind == "gone":
                        return
                    self._handle(cmd)
        except PageGone:
            return
        except Exception:  # a bug must end this tab only, and be visible in the server's log
            log.exception("conversation failed")
            self.send({"type": "error", "message": "internal error; this conversation ended (see the server log)"})
            self.send({"type": "close"})

    def _drain(self) -> list[Command]:
        cmds = []
        while True:
            try:
                cmds.append(self._commands.get_nowait())
            except queue.Empty:
                return cmds

    def _on_event(self, kind: str, text: str) -> None:
        if kind != "heard":  # sent by _on_answer for spoken and typed turns alike
            self.send({"type": "event", "kind": kind, "text": text})

    def _on_answer(self, ev) -> None:
        """An answer's event as the page gets it; the first one means the attached images went with it."""
        self._images = []
        if isinstance(ev, Transcript):
            self.send({"type": "heard", "text": ev.text})
        elif isinstance(ev, TextDelta):
            self.send({"type": "delta", "text": ev.text})
        elif isinstance(ev, TurnEnd):
            self.send({"type": "end", "text": ev.text, "reason": ev.reason})

    def _attached(self) -> list[Path]:
        return list(self._images)

    def _handle(self, cmd: Command) -> None:
        try:
            if cmd.kind == "text":
                self._text_turn(cmd.text)
            elif cmd.kind == "reset":
                self._new_conversation(self.voice, "conversation reset")
            elif cmd.kind == "voice":
                self._new_conversation(cmd.text or None, f"voice: {cmd.text or 'default'} (new conversation)")
            elif cmd.kind == "image":
                self._attach_image(cmd.text, cmd.data)
            elif cmd.kind == "clone":
                self._clone(cmd.text, cmd.data)
            elif cmd.kind == "stop":
                self._cancel.clear()
                if self.speaker.busy:  # generated already, still playing
                    self.speaker.stop()
                    self._answer_stopped()
        except OmniError as e:
            self.send({"type": "error", "message": str(e)})

    def _new_conversation(self, voice: str | None, note: str) -> None:
        self.conv = Conversation(self.model, voice, self.context)  # checks the voice before anything changes
        self.voice, self._images = voice, []
        self.send({"type": "reset", "voice": voice, "message": note})

    def _text_turn(self, text: str) -> None:
        if text.strip() == "/reset":
            self._new_conversation(self.voice, "conversation reset")
            return
        self._cancel.clear()
        self.send({"type": "event", "kind": "turn", "text": ""})
        answer = PageConversation(self.conv, self._attached).respond(
            text, self.gen, self.rng, decode_audio=self.model.mimi is not None)
        try:
            for ev in answer:
                self._on_answer(ev)
                if isinstance(ev, AudioChunk):
                    self.speaker.write(ev.pcm)
                if self._cancel.is_set():
                    self.mic.halt(False)  # stopped here; the live engine must not stop again
                    self.speaker.stop()
                    break
        finally:
            answer.close()
        if self._cancel.is_set():
            self._answer_stopped()
        else:
            self._answer_end()

    def _answer_stopped(self) -> None:
        self.send({"type": "event", "kind": "interrupt", "text": ""})
        self._answer_end()

    def _answer_end(self) -> None:
        self.send({"type": "event", "kind": "answer_end", "text": self.conv.history[-1].content
                   if self.conv.history else ""})

    def _upload(self, name: str, data: bytes) -> Path:
        suffix = "".join(c for c in Path(name).suffix[:8] if c.isalnum() or c == ".")  # soundfile reads by content
        path = Path(self._tmp.name) / f"upload-{next(self._uploads)}{suffix}"
        path.write_bytes(data)
        return path

    def _attach_image(self, name: str, data: bytes) -> None:
        if not self.model.bundle.has_graph("vision"):
            raise OmniError("this server's bundle has no vision graph; re-export it with --siglip <folder>")
        path = self._upload(name, data)
        open_rgb(path).close()  # refuse what is not an image now, not at the next turn
        self._images.append(path)
        self.send({"type": "attached", "name": name, "count": len(self._images)})

    def _clone(self, name: str, data: bytes) -> None:
        require_cloning(self.model.bundle)  # omni-voices' checks, before the upload is decoded
        normalize_voice_name(name, tuple(self.model.bundle.voices))
        path = self._upload("clip", data)
        with _clone_lock:
            voice = self.model.clone_voice(*read_recording(path), name)
        path.unlink()
        save_user_voice(voice)
        self.send({"type": "voices", "voices": voice_names(self.model),
                   "message": f"voice {voice.name!r} added ({voice.ref_codes.shape[1]} reference frames)"})
