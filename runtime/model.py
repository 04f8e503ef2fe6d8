"""`OmniModel` (immutable: graphs, tokenizer, voices) and `Conversation` (one dialogue's mutable state)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .dump import CodeDump
from .errors import OmniError
from .generate import ContextFull, GenerationOptions, ModelState, Speaker, Stepper, generate
from .prompt import VOICE_SYSTEM_PROMPT, Message, TextTokenizer
from .session import GraphSession, SessionOptions
from .voices import Voice


class OmniModel:
    """The loaded bundle. Shared, never mutated: any number of conversations can use one model."""

    def __init__(self, bundle: Bundle, opts: SessionOptions = SessionOptions()):
        self.bundle, self.config = bundle, bundle.config
        self.tokenizer = TextTokenizer(bundle.root / "tokenizer.json")
        self.thinker = GraphSession(bundle.graph_path("thinker"), bundle.specs["thinker"], opts)
        self.talker = GraphSession(bundle.graph_path("talker"), bundle.specs["talker"], opts)
        self.mimi = None
        if bundle.has_graph("mimi_decoder"):
            from .contracts import MimiDims
            from .mimi import MimiStreamDecoder
            session = GraphSession(bundle.graph_path("mimi_decoder"), bundle.specs["mimi_decoder"], opts)
            self.mimi = MimiStreamDecoder(session, MimiDims.from_dict(bundle.manifest["mimi"]))

    @classmethod
    def load(cls, root: Path, opts: SessionOptions = SessionOptions()) -> OmniModel:
        return cls(Bundle.open(root), opts)

    @property
    def sample_rate(self) -> int:
        return 24000

    def voice(self, name: str) -> Voice:
        if name not in self.bundle.voices:
            raise OmniError(f"unknown voice {name!r}; available: {', '.join(self.bundle.voices) or 'none'} "
                            f"(see --list-voices)")
        return Voice.load(self.bundle.voice_path(name))


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class AudioChunk:
    pcm: np.ndarray  # float32 [frame_samples] at 24 kHz


@dataclass(frozen=True)
class TurnEnd:
    text: str  # the whole reply, as it enters the history
    reason: str  # "eos" (text and audio finished), "length" (max_new_tokens) or "context" (context limit)


class Conversation:
    """One dialogue: KV caches, history and voice. Each `respond` is a turn; later turns reuse the cached prefix."""

    def __init__(self, model: OmniModel, voice: str | None = None, context: int = 2048):
        if context < 16:
            raise ValueError(f"context must be at least 16 positions, got {context}")
        self.model, self.context = model, context
        self.state = ModelState(model.config, context)
        self.speaker = Speaker(None, None)
        self.history: list[Message] = []
        if voice is not None:
            v = model.voice(voice)
            self.speaker = Speaker(v.ref_codes, v.talker_spk_emb())
            self.history.append(Message("system", VOICE_SYSTEM_PROMPT))  # as eval_omni.py's voice-clone mode
        self.stepper = Stepper(model.config, model.thinker, model.talker, self.state, self.speaker)

    def prompt_ids(self, user_text: str, open_thinking: bool = False) -> list[int]:
        return self.model.tokenizer.chat_ids(self.history + [Message("user", user_text)], open_thinking)

    def respond(self, user_text: str, opts: GenerationOptions, rng: np.random.Generator | None = None,
                decode_audio: bool = True, record: CodeDump | None = None) -> Iterator[TextDelta | AudioChunk | TurnEnd]:
        """Stream one answer: text deltas as tokens arrive, a 1920-sample chunk per frame. Work happens on iteration."""
        if not user_text.strip():
            raise OmniError("the prompt is empty; type a question")
        if not opts.greedy and rng is None:
            raise ValueError("sampling needs a numpy Generator (rng); pass one or set greedy")
        if decode_audio and self.model.mimi is None:
            raise OmniError("this bundle has no Mimi decoder, so it can emit codes but not audio; re-export it "
                            "with --mimi <folder of kyutai/mimi>, or run without audio output")
        ids = self.prompt_ids(user_text, opts.open_thinking)
        if len(ids) >= self.context:
            raise OmniError(f"the prompt is {len(ids)} tokens but the context holds {self.context}; "
                            f"start a new conversation or raise --context")
        if record is not None:
            record.prompt_ids[:] = ids
        mimi_state = self.model.mimi.initial_state() if decode_audio else None
        text_ids: list[int] = []
        shown, steps = "", 0
        tok = self.model.tokenizer
        try:
            for step in generate(self.stepper, ids, self.speaker, opts, rng, record):
                steps += 1
                if step.token is not None and step.token != self.model.config.eos_token_id:
                    text_ids.append(step.token)
                    text = tok.decode(text_ids)
                    if not text.endswith("\ufffd") and len(text) > len(shown):
                        yield TextDelta(text[len(shown):])
                        shown = text
                if step.frame is not None and mimi_state is not None:
                    pcm, mimi_state = self.model.mimi.decode_frame(step.frame, mimi_state)
                    yield AudioChunk(pcm)
            # the loop only stops before max_new_tokens when text and all codebooks have finished
            reason = "eos" if steps < opts.max_new_tokens else "length"
        except ContextFull:
            reason = "context"
        reply = tok.decode(text_ids)
        self.history += [Message("user", user_text), Message("assistant", reply)]
        yield TurnEnd(reply, reason)
